"""The dashboard over real HTTP (uvicorn on a loopback port) against a home left by a real
``vortex demo --quick`` run: what it serves matches the Python API, actions need the token and
refuse cross-site requests, bad input gets a one-line message, never a traceback."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from dashboard_support import TOKEN, http, queue_proposal

from vortex.dashboard import dashboard_app
from vortex.rsi.audit import AuditLog
from vortex.rsi.proposal import ProposalStore
from vortex.training.registry import ModelRegistry

pytestmark = pytest.mark.slow  # a real quick demo run makes the home (about 1 to 2 minutes, once)
AUTH = {"X-Vortex-Token": TOKEN}


def _audit(home):
    return AuditLog(home / "rsi" / "audit.jsonl", home / "rsi" / "audit.head")


def _other_version(home) -> int:
    """The oldest stored version that does not serve."""
    reg = ModelRegistry(home / "models")
    return next(v for v in reg.versions() if v != reg.active_version)


def test_the_demo_dashboard_showed_the_running_service_live(demo_run):
    assert demo_run.url and demo_run.url.startswith("http://127.0.0.1:") and "#token=" in demo_run.url
    live = [s for s in demo_run.states if s["live_attached"]]
    assert live, "no state was fetched while the demo ran"
    last = live[-1]
    assert last["header"]["source"] == "this process's service"
    assert last["metrics"]["inference"]["total_inferences"] > 0
    assert last["metrics"]["inference"]["modes"]["fast"]["count"] > 0
    assert last["header"]["p99_latency_ms"] > 0
    # it followed the swaps: the versions it saw serving are those the serving log names
    served = {e["to_version"] for e in ModelRegistry(demo_run.home / "models").serving_log()}
    assert {s["header"]["serving_version"] for s in live} <= served
    assert len({s["header"]["serving_version"] for s in live}) >= 2


def test_state_is_what_the_python_api_reads(home, serve):
    base = serve(dashboard_app(home, token=TOKEN))
    status, s = http("GET", base + "api/state")
    assert status == 200 and s["problems"] == []
    reg = ModelRegistry(home / "models")
    assert [(v["version"], v["status"], v["val_accuracy"]) for v in s["models"]["versions"]] == \
        [(v["version"], v["status"], v["val_accuracy"]) for v in reg.list_versions()]
    assert s["header"]["serving_version"] == reg.active_version
    assert s["models"]["serving_log"] == reg.serving_log()
    proposals = ProposalStore(home).list()
    assert proposals and [(p["id"], p["status"], p["risk"], p["diff"]) for p in s["proposals"]] == \
        [(p.id, p.status.value, p.risk.value, p.diff) for p in proposals]
    assert sorted((w["type"], w["proposals"][0]) for w in s["weaknesses"]) == \
        sorted((p.weakness_type, p.id) for p in proposals)
    assert s["audit"]["verification"] == _audit(home).verify().to_dict()
    runs = json.loads((home / "runs.json").read_text())
    m = s["metrics"]
    assert m["training"]["training_runs"] == len(runs)
    assert m["training"]["swaps"] == len(reg.serving_log())
    assert m["training"]["best_val_accuracy"] == max(v["val_accuracy"] for v in reg.list_versions()
                                                     if v["val_accuracy"] is not None)
    assert m["rsi"]["proposals_generated"] == len(proposals)
    kinds = {k["kind"] for k in s["markers"]}
    assert {"weakness", "swap"} <= kinds
    assert ("applied" in kinds) == any(h[1] == "applied" for p in proposals for h in p.history)
    assert s["series"]["buffer"], "the persisted samples give the chart its past"


@pytest.mark.parametrize("headers, raw, status, words", [
    ({}, None, 403, "token"),
    ({"X-Vortex-Token": "wrong-token-000000"}, None, 403, "token"),
    ({**AUTH, "Origin": "http://evil.example"}, None, 403, "cross-site"),
    ({**AUTH, "Sec-Fetch-Site": "cross-site"}, None, 403, "cross-site"),
    ({**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, b"by=mallory", 415, "JSON"),
])
def test_actions_are_refused_without_the_token_or_from_another_site(home, serve, headers, raw,
                                                                    status, words):
    base = serve(dashboard_app(home, token=TOKEN))
    reg = ModelRegistry(home / "models")
    pid = queue_proposal(home)
    before_active, before_audit = reg.active_version, _audit(home).verify().entries
    for path in ("api/models/1/swap", f"api/proposals/{pid}/reject", "api/models/rollback"):
        body = None if raw is not None else {"by": "mallory", "expect_active": before_active}
        got, answer = http("POST", base + path, body, headers, raw)
        assert got == status and words in answer["error"], (path, answer)
    assert ModelRegistry(home / "models").active_version == before_active
    assert ProposalStore(home).get(pid).status.value == "proposed"
    assert _audit(home).verify().entries == before_audit  # nothing was done, nothing audited


def test_bad_input_gets_one_line_naming_it(home, serve):
    base = serve(dashboard_app(home, token=TOKEN))
    active = ModelRegistry(home / "models").active_version
    decided = next(p.id for p in ProposalStore(home).list() if p.status.value not in ("proposed", "errored"))
    other = _other_version(home)
    cases = [
        ("api/proposals/no-such-id/approve", {"by": "ann"}, 404, "no-such-id"),
        (f"api/proposals/{decided}/explode", {"by": "ann"}, 400, "explode"),
        (f"api/proposals/{decided}/approve", {"by": "ann"}, 409, "only a proposed"),  # stale
        (f"api/proposals/{decided}/approve", {"by": ""}, 400, "name"),
        (f"api/proposals/{decided}/approve", {}, 400, "name"),
        ("api/models/abc/swap", {"by": "ann", "expect_active": active}, 400, "'abc'"),
        ("api/models/0/swap", {"by": "ann", "expect_active": active}, 400, "start at 1"),
        ("api/models/99/swap", {"by": "ann", "expect_active": active}, 404, "99"),
        (f"api/models/{other}/swap", {"by": "ann"}, 400, "expect_active"),
        ("api/models/rollback", {"by": "ann"}, 400, "expect_active"),
        (f"api/models/{other}/swap", {"by": "ann", "expect_active": active + 1}, 409, "meanwhile"),
        (f"api/models/{other}/swap", {"by": "ann", "expect_active": "x"}, 400, "'x'"),
    ]
    for path, body, status, words in cases:
        got, answer = http("POST", base + path, body, AUTH)
        assert got == status and words in answer["error"], (path, body, answer)
        assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    got, answer = http("POST", base + "api/models/1/swap", raw=b"{not json",
                       headers={**AUTH, "Content-Type": "application/json"})
    assert got == 400 and "not valid JSON" in answer["error"]
    got, answer = http("GET", base + "no/such/page")
    assert got == 404 and "no/such/page" in answer["error"]
    got, answer = http("GET", base + "api/models/1/swap")
    assert got == 405
    assert ModelRegistry(home / "models").active_version == active  # nothing changed
    assert _audit(home).verify().ok


def test_swap_and_rollback_go_through_the_registry_and_are_audited_with_the_name(home, serve):
    base = serve(dashboard_app(home, token=TOKEN))
    reg = ModelRegistry(home / "models")
    active, other = reg.active_version, _other_version(home)
    got, answer = http("POST", base + f"api/models/{other}/swap", {"by": "Ada Lovelace", "expect_active": active}, AUTH)
    assert got == 200 and answer["to_version"] == other
    assert ModelRegistry(home / "models").active_version == other
    last = _audit(home).entries()[-1]
    assert last["event"] == "model_swapped" and last["data"]["by"] == "Ada Lovelace"
    assert last["data"]["from_version"] == active and last["data"]["to_version"] == other
    got, answer = http("POST", base + "api/models/rollback", {"by": "Ada Lovelace", "expect_active": other}, AUTH)
    assert got == 200 and ModelRegistry(home / "models").active_version == active
    assert ModelRegistry(home / "models").serving_log()[-1]["reason"] == "dashboard: swap by Ada Lovelace"
    assert _audit(home).verify().ok
    _, s = http("GET", base + "api/state")  # the page's next poll shows it
    assert s["header"]["serving_version"] == active and s["models"]["rollback_to"] == other


def test_mounted_under_vortex_ui_in_another_asgi_app(home, serve):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def hello(request):
        return PlainTextResponse("service")

    outer = Starlette(routes=[Route("/predict", hello),
                              Mount("/vortex/ui", app=dashboard_app(home, token=TOKEN))])
    base = serve(outer)
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    with pytest.raises(urllib.error.HTTPError) as redirect:
        urllib.request.build_opener(NoRedirect).open(base + "vortex/ui")
    assert redirect.value.code == 307 and redirect.value.headers["location"].endswith("/vortex/ui/")
    status, page = http("GET", base + "vortex/ui/")
    assert status == 200 and 'src="static/dashboard.js"' in page  # relative: works under any prefix
    assert http("GET", base + "vortex/ui/static/chart.min.js")[0] == 200
    status, s = http("GET", base + "vortex/ui/api/state")
    assert status == 200 and s["models"]["active_version"] == ModelRegistry(home / "models").active_version
    got, _ = http("POST", base + "vortex/ui/api/models/1/swap", {"by": "ann"}, {})
    assert got == 403
    assert http("GET", base + "predict") == (200, "service")


def test_a_damaged_file_is_named_and_the_rest_still_shows(home, serve):
    victim = min((home / "rsi" / "proposals").glob("*.json"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x20
    victim.write_bytes(bytes(data))
    base = serve(dashboard_app(home, token=TOKEN))
    status, s = http("GET", base + "api/state")
    assert status == 200
    assert any(victim.name in p for p in s["problems"]), s["problems"]
    assert s["models"]["versions"] and s["audit"]["verification"]["ok"]
    got, answer = http("POST", base + f"api/proposals/{victim.stem}/approve", {"by": "ann"}, AUTH)
    assert got == 500 and victim.name in answer["error"] and "Traceback" not in answer["error"]


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} print them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, p = local.rsplit(":", 1)
                if int(p, 16) == port and state == "0A":
                    found.append(addr)
    return found


def test_vortex_dashboard_command_listens_on_loopback_only_and_prints_the_token(home):
    # -X faulthandler: a crash at exit (seen once: SIGSEGV on SIGINT) prints every thread's stack
    with subprocess.Popen([sys.executable, "-X", "faulthandler", "-P", "-m", "vortex.cli", "dashboard",
                           "--home", str(home), "--port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            lines = [proc.stdout.readline() for _ in range(3)]
            url = lines[1].split("open ", 1)[1].strip()
            token = lines[2].split("token: ", 1)[1].strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith(f"#token={token}") and len(token) >= 16
            port = int(url.split(":")[2].split("/")[0])
            assert _listening(port) == ["0100007F"]  # 127.0.0.1, nothing on 0.0.0.0 or ::
            base = url.split("#")[0]
            assert http("GET", base + "api/state")[0] == 200
            assert http("POST", base + "api/models/1/swap", {"by": "x"})[0] == 403
            # DNS rebinding: another site's name resolving to 127.0.0.1 reads nothing
            assert http("GET", base + "api/state", headers={"Host": f"evil.example:{port}"})[0] == 400
            other = _other_version(home)
            got, _ = http("POST", base + f"api/models/{other}/swap",
                          {"by": "x", "expect_active": ModelRegistry(home / "models").active_version},
                          {"X-Vortex-Token": token})
            assert got == 200 and ModelRegistry(home / "models").active_version == other
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0, proc.stderr.read()


def _dashboard_process(home, *argv):
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-P", "-m", "vortex.cli", "dashboard",
                             "--home", str(home), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline() for _ in range(3)]
    return proc, int(lines[1].split("open ", 1)[1].split(":")[2].split("/")[0])


def test_vortex_dashboard_serves_in_its_main_thread_and_ends_gracefully_on_sigterm(home):
    proc, port = _dashboard_process(home, "--port", "0")
    with proc:
        assert http("GET", f"http://127.0.0.1:{port}/api/state")[0] == 200
        # the server runs in the main thread: no thread of it is left running while the
        # interpreter exits (the other threads are the thread pool's, which uvicorn's shutdown ends)
        names = [(pathlib.Path(f"/proc/{proc.pid}/task") / t / "comm").read_text().strip()
                 for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert "vortex-dashboa" not in names, names  # (comm holds 15 characters)
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises SIGTERM after its graceful shutdown: the process ends by that signal
        assert proc.wait(timeout=30) == -signal.SIGTERM, proc.stderr.read()
    assert _listening(port) == []


def test_vortex_dashboard_on_a_port_in_use_says_so_in_one_line(home):
    proc, port = _dashboard_process(home, "--port", "0")
    with proc:
        second = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "dashboard", "--home", str(home),
                                 "--port", str(port)], check=False, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stderr
        assert f"could not listen on 127.0.0.1:{port}" in second.stderr and "Traceback" not in second.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_vortex_dashboard_refuses_a_missing_home_and_a_short_token(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "dashboard", *argv],
                              check=False, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "VORTEX_DASHBOARD_TOKEN": ""})
    missing = run("--home", str(tmp_path / "nope"), "--port", "0")
    assert missing.returncode == 1 and "no Vortex home" in missing.stderr
    short = run("--home", str(tmp_path), "--token", "abc")
    assert short.returncode == 2 and "--token" in short.stderr
    bad_port = run("--home", str(tmp_path), "--port", "70000")
    assert bad_port.returncode == 2 and "70000" in bad_port.stderr
