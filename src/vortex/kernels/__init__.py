"""Numba kernels of the training hot paths (FluxDynamics weights: :mod:`.flux`)."""
