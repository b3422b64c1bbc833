"""The torch intra-op thread count of the threads Vortex starts.

``torch.set_num_threads`` sets OpenMP's and MKL's thread counts for the calling thread only
(``omp_set_num_threads`` and ``mkl_set_num_threads_local`` are per thread); torch hands its
count on to another thread only when that thread first runs one of torch's own parallel loops.
A matrix product goes to MKL directly, so a thread started later (Vortex's follow, training
and swap threads) runs it on one OpenMP thread per core, and that team then spins waiting for
more work. Measured here, with the app at one thread: warming a 64-128-10 MLP up in such a
thread cost 8.5 ms of the process's CPU instead of 0.8 ms, taken from the cores that serve;
every swap of a serving worker paid it, and the p99 of a loaded server rose 1.16-1.25x under
4 swaps per 5 s.
"""

from __future__ import annotations

import threading

__all__ = ["use_process_thread_count"]

_adopted = threading.local()


def use_process_thread_count() -> None:
    """Give the calling thread the process's torch intra-op thread count (what the app set
    with ``torch.set_num_threads``, else torch's default). Call it before a thread's first
    torch computation; later calls in the same thread cost an attribute lookup.
    """
    if getattr(_adopted, "done", False):
        return
    import torch

    # get_num_threads() reads the process's count (set in this thread's OpenMP on the way);
    # set_num_threads() applies it to this thread's MKL too
    torch.set_num_threads(torch.get_num_threads())
    _adopted.done = True
