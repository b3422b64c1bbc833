"""Helpers of the dashboard tests (tests/dashboard): real HTTP requests, a queued proposal."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN = "test-token-0123456789"
DEMO_LINE = "dashboard (open during the demo): "


@dataclass
class DemoRun:
    """A ``vortex demo --quick --dashboard 0`` run: its home, output, and the dashboard states
    fetched while it ran."""

    home: Path
    returncode: int
    stdout: str
    stderr: str
    url: str | None
    states: list[dict[str, Any]] = field(default_factory=list)


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    """One real HTTP request; returns (status, parsed JSON body or text)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=300) as res:
            status, text = res.status, res.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def queue_proposal(home: Path, weakness: str = "confidence_low") -> str:
    """A new proposal of the demo's RSI engine for ``weakness``, left queued (not tested, not
    applied: auto-apply off), on the service tree of this ``home``."""
    from vortex.config import RSIConfig
    from vortex.monitor.weaknesses import Weakness, WeaknessType
    from vortex.rsi.engine import RSIEngine

    engine = RSIEngine(home / "service", home, RSIConfig(enabled=True, auto_apply_low_risk=False))
    w = Weakness(type=WeaknessType(weakness), severity=0.4, description=f"{weakness} (test)",
                 detected_at=time.time(), metric_value=0.45, baseline_value=0.6, samples_analyzed=200)
    p = engine.propose(w)
    assert p is not None and p.status.value == "proposed"
    return p.id
