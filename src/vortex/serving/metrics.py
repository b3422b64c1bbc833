"""``GET /vortex/metrics``: the Prometheus exposition of every worker of a home, which
:func:`vortex.monitor.prometheus.exposition` builds (histograms merged and counters summed over
every worker, alive or gone)."""

from __future__ import annotations

from ..monitor.prometheus import CONTENT_TYPE
from ..monitor.prometheus import exposition as fleet_exposition

__all__ = ["CONTENT_TYPE", "fleet_exposition"]
