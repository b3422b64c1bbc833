"""ModelSlot: the atomic reference to the model being served.

Readers call :meth:`ModelSlot.get` and keep the returned ``(version, model)`` pair for the
whole request; a swap replaces the reference with one attribute assignment (atomic in
CPython), so a reader never takes a lock, never sees a half-swapped state, and a request that
started on the old model finishes on it.  The new model is put in eval mode and warmed up
*before* it becomes visible, so the first request on it does not pay for lazy
initialisation.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, NamedTuple

from .._torch_threads import use_process_thread_count
from ..errors import ModelSwapError

__all__ = ["ModelSlot", "SlotEntry", "prepare_model"]

log = logging.getLogger(__name__)


class SlotEntry(NamedTuple):
    """What :meth:`ModelSlot.get` returns: the served model and its registry version."""

    version: int | None
    model: Any


def prepare_model(model: Any, example: Any = None, warmup_runs: int = 2) -> Any:
    """Put ``model`` in eval mode and run it ``warmup_runs`` times on ``example`` (no grad).

    Raises :class:`ModelSwapError` if the forward pass fails, so a broken model never gets
    served.
    """
    import torch

    if not (callable(model) and callable(getattr(model, "eval", None))):
        raise ValueError(f"model={model!r}: must be a torch.nn.Module (callable, with eval())")
    model.eval()
    if example is not None:
        use_process_thread_count()  # a swap thread's forward pass on the app's thread count
        try:
            with torch.inference_mode():
                for _ in range(warmup_runs):
                    model(example)
        except Exception as exc:
            raise ModelSwapError(f"warm-up forward pass of the new model failed: {exc}") from exc
    return model


class ModelSlot:
    """Holds the current ``(version, model)``; lock-free reads, serialised swaps.

    Parameters
    ----------
    model
        The initial model (put in eval mode and warmed up on ``example``).
    version
        Its registry version, if known.
    example
        An input batch used to warm up every model before it is swapped in (e.g.
        ``torch.zeros(1, feature_dim)``); None skips the warm-up.
    """

    def __init__(self, model: Any, version: int | None = None, example: Any = None) -> None:
        version = _checked_version(version)
        self._example = example
        self._swap_lock = threading.Lock()
        self.swaps = 0
        self.swapped_at = time.time()
        self._entry = SlotEntry(version, prepare_model(model, example))

    def get(self) -> SlotEntry:
        """The current ``(version, model)``; no lock, safe from any thread."""
        return self._entry

    @property
    def version(self) -> int | None:
        """Version of the model currently served."""
        return self._entry.version

    @property
    def model(self) -> Any:
        """The model currently served."""
        return self._entry.model

    def swap(self, model: Any, version: int | None, *, prepared: bool = False) -> SlotEntry:
        """Prepare ``model`` (eval + warm-up) and make it the served one; return the old entry.

        Requests already running keep the model they took; the next :meth:`get` returns the
        new one.  If preparation fails, :class:`ModelSwapError` is raised and the old model
        keeps serving.
        """
        version = _checked_version(version)
        if not prepared:
            prepare_model(model, self._example)
        with self._swap_lock:
            old = self._entry
            self._entry = SlotEntry(version, model)
            self.swaps += 1
            self.swapped_at = time.time()
        log.info("model slot: version %s -> %s", old.version, version)
        return old


def _checked_version(version: Any) -> int | None:
    """A version number (an integer >= 0) or None; ValueError naming anything else."""
    if version is None:
        return None
    from .._scalars import as_index

    return as_index(version, "version", 0)
