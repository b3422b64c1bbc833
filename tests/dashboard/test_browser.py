"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright with its
own executable path: nothing is downloaded), against a home left by ``vortex demo --quick``."""

from __future__ import annotations

import shutil

import pytest
from dashboard_support import TOKEN, queue_proposal

from vortex.dashboard import dashboard_app
from vortex.rsi.audit import AuditLog
from vortex.rsi.proposal import ProposalStore
from vortex.training.registry import ModelRegistry

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium installed (scripts/_venv.sh installs Debian's chromium where it can: "
                "apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright (the test extra) drives Chromium")

pytestmark = pytest.mark.slow  # the demo's home, and the approval's sandbox test
APPROVE_TIMEOUT_MS = 240_000  # the approval runs the proposal's sandbox test first


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: Chromium's own sandbox cannot start as root in a container
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _rows(page, selector: str, attr: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in page.eval_on_selector_all(
        selector, f"els => els.map(e => [e.getAttribute('{attr}'), e.dataset.status || ''])")]


def test_the_page_shows_the_home_updates_live_and_acts_only_with_the_token(home, serve, browser, tmp_path):
    queued = queue_proposal(home)
    base = serve(dashboard_app(home, token=TOKEN))
    page = browser.new_page(viewport={"width": 1400, "height": 1900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base)  # without the token in the URL: actions must be refused until it is given
    page.wait_for_selector("body[data-loaded=true]")

    # what the home holds, read through the Python API, is what the page shows
    reg = ModelRegistry(home / "models")
    assert _rows(page, "#models tr[data-version]", "data-version") == \
        [(str(v["version"]), v["status"]) for v in reversed(reg.list_versions())]
    proposals = ProposalStore(home).list()
    assert sorted(_rows(page, "[data-proposal]", "data-proposal")) == \
        sorted((p.id, p.status.value) for p in proposals)
    assert sorted(page.eval_on_selector_all("#weaknesses tr[data-weakness]",
                                            "els => els.map(e => e.dataset.weakness)")) == \
        sorted(p.weakness_type for p in proposals)  # each proposal's own weakness
    assert page.text_content("[data-figure=serving_version] b") == f"v{reg.active_version}"
    assert page.text_content("[data-metric=swaps]") == str(len(reg.serving_log()))
    assert page.text_content("[data-metric=proposals_generated]") == str(len(proposals))
    assert "chain verifies" in page.text_content("#audit-ok")
    for figure in ("total_inferences", "sacred_success_rate", "samples_collected", "weaknesses_detected",
                   "rsi_triggers", "applied", "rejected", "errored", "measured_improvement",
                   "training_runs", "samples_trained", "current_version", "best_val_accuracy"):
        assert page.locator(f"[data-metric={figure}]").count() == 1, figure

    # live: a swap made outside the page (the CLI, a service) shows without a reload
    active = reg.active_version
    other = next(v for v in reg.versions() if v != active)
    assert reg.set_active(other, "test: swapped from outside", expect_active=active)
    page.wait_for_selector(f"body[data-active-version='{other}']", timeout=20_000)
    assert page.get_attribute(f"#models tr[data-version='{other}']", "data-status") == "active"
    assert "test: swapped from outside" in page.text_content("#serving-log")

    # approving without the token is refused, and nothing changes
    page.fill("#by", "Ada Lovelace")
    card = page.locator(f"[data-proposal='{queued}']")
    card.locator("[data-action=approve]").click()
    page.wait_for_selector("#message.error")
    assert "refused (403)" in page.text_content("#message") and "token" in page.text_content("#message")
    assert ProposalStore(home).get(queued).status.value == "proposed"

    # with the token it is approved: tested in the sandbox, applied, audited with the name
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    card.locator("[data-action=approve]").click()
    page.wait_for_selector(f"[data-proposal='{queued}'][data-status=applied]", timeout=APPROVE_TIMEOUT_MS)
    assert ProposalStore(home).get(queued).status.value == "applied"
    approved = [e for e in AuditLog(home / "rsi" / "audit.jsonl", home / "rsi" / "audit.head").entries()
                if e["event"] == "proposal_approved" and e["data"]["id"] == queued]
    assert [e["data"]["approver"] for e in approved] == ["Ada Lovelace"]
    assert "done" in page.text_content("#message")
    page.wait_for_selector(f"[data-proposal='{queued}'] [data-action=rollback]")

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"dashboard screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert errors == []
