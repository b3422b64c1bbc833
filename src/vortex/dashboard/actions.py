"""The dashboard's actions, through the same API as the ``vortex`` command line.

Proposals are approved, rejected and rolled back by an :class:`vortex.rsi.RSIEngine` on the
proposal's target tree (as ``vortex proposals approve|reject|rollback``), which records the
person in the audit log. Model swaps and rollbacks go through
:meth:`vortex.training.ModelRegistry.set_active` (as ``vortex models swap``), as a
compare-and-swap against the version the person saw serving, and are audited as
``model_swapped`` with their name: a running service notices the registry's new active version
and serves it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import ProposalStateError, VersionNotFoundError
from ..home import HomeLayout

__all__ = ["PROPOSAL_ACTIONS", "StaleViewError", "act_on_proposal", "swap_model"]

PROPOSAL_ACTIONS = ("approve", "reject", "rollback")


class StaleViewError(ProposalStateError):
    """What the person saw is no longer the state on disk (another process acted first)."""


def act_on_proposal(home: str, proposal_id: str, action: str, by: str, reason: str = "") -> dict[str, Any]:
    """Approve, reject or roll back proposal ``proposal_id`` of ``home`` on behalf of ``by``.

    Returns the proposal's new ``{"id", "status"}``.

    Raises
    ------
    ValueError
        ``action`` is not one of :data:`PROPOSAL_ACTIONS`.
    vortex.errors.ProposalNotFoundError
        No such proposal.
    vortex.errors.ProposalStateError
        Its status does not allow the action (stale: someone acted first), or its test failed.
    """
    if action not in PROPOSAL_ACTIONS:
        raise ValueError(f"action={action!r}: must be one of {', '.join(PROPOSAL_ACTIONS)}")
    from ..config import RSIConfig
    from ..errors import ProposalNotFoundError
    from ..rsi.engine import RSIEngine
    from ..rsi.proposal import ProposalStore

    if not os.path.isdir(HomeLayout(home).proposals):
        raise ProposalNotFoundError(f"no proposal with id {proposal_id!r} (no proposals in this home)")
    p = ProposalStore(home).get(proposal_id)
    engine = RSIEngine(p.target, home, RSIConfig())
    if action == "approve":
        p = engine.approve_proposal(proposal_id, approver=by)
    elif action == "reject":
        p = engine.reject_proposal(proposal_id, reason or "rejected on the dashboard", by=by)
    else:
        p = engine.rollback_proposal(proposal_id, reason or "rolled back on the dashboard", by=by)
    return {"id": p.id, "status": p.status.value}


def swap_model(home: str, version: int, by: str, expect_active: int | None, registry: str | None = None,
               storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Make ``version`` the served model of ``home`` if ``expect_active`` still serves.

    ``registry`` and ``storage_options``: the registry when it is not the home's own (the
    fleet's shared registry, :func:`vortex.dashboard.state.open_registry`). The swap is audited
    in ``home``'s audit log either way. Returns ``{"from_version", "to_version"}``.

    Raises
    ------
    vortex.errors.VersionNotFoundError
        No registry, or no such version.
    StaleViewError
        Another version than ``expect_active`` serves now; nothing was changed.
    vortex.errors.ChecksumMismatchError
        Its weights are damaged; it is not served.
    """
    from ..rsi.audit import AuditLog
    from ..status import open_registry

    layout = HomeLayout(home)
    reg = open_registry(home, registry, storage_options)
    if reg is None:
        raise VersionNotFoundError(f"model version {version} does not exist: this home has no model registry")
    reason = f"dashboard: swap by {by}"
    if not reg.set_active(version, reason, expect_active=expect_active):
        raise StaleViewError(f"version {reg.active_version} serves now, not {expect_active}: someone "
                             "swapped meanwhile; nothing was changed (the page now shows the new state)")
    os.makedirs(layout.rsi, exist_ok=True)
    AuditLog(layout.audit, layout.audit_head).append("model_swapped", by=by, from_version=expect_active,
                                                     to_version=version, reason=reason)
    return {"from_version": expect_active, "to_version": version}
