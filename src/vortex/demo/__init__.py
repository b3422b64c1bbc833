"""The end-to-end demo (``vortex demo``) and the digits service it tunes."""
