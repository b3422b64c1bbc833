# Type stub of the Cython module vortex/_fast_metrics.pyx (private).
from typing import Any

import numpy as np
from numpy.typing import NDArray

class Stats:
    total_recorded: int
    size: int
    capacity: int
    recent_count: int
    baseline_count: int
    recent_latency_mean: float
    recent_latency_max: float
    recent_over_threshold: int
    recent_over_latency_mean: float
    recent_confidence_mean: float
    recent_error_count: int
    recent_error_mean: float
    baseline_latency_mean: float
    baseline_confidence_mean: float
    baseline_error_count: int
    baseline_error_mean: float
    oldest_ns: int
    newest_ns: int
    all_latency_sum: float
    all_confidence_sum: float

class MetricRecorder:
    @property
    def _window(self) -> Any: ...
    def _attach(self, window: Any) -> None: ...
    def record_sample(self, latency_ms: float, confidence: float,
                      prediction_error: float = ...) -> None: ...
    def record_request(self, latency_ms: float, confidence: float) -> int: ...
    def record_requests(self, latencies_ms: NDArray[np.floating[Any]],
                        confidences: NDArray[np.floating[Any]]) -> int: ...
    def record_error(self, sample_id: int, prediction_error: float) -> bool: ...
    def _stats(self, latency_threshold_ms: float) -> Stats: ...

def statm_resident_pages(fd: int) -> int: ...
