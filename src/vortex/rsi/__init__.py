"""Self-modification (RSI): proposals, proposers, risk, sandbox, journaled apply, audit log.

Light to import: NumPy is only loaded by temperature fitting.
"""

from .apply import Applier
from .audit import AuditLog, AuditVerification
from .diffs import FilePatch, Hunk, check_paths, make_diff, parse_diff
from .engine import RSICycleResult, RSIEngine
from .proposal import ImprovementProposal, ProposalStatus, ProposalStore, RiskLevel, TunableMove
from .proposers import (CommandProposer, ConfidenceProposer, ErrorHandlingProposer, MemoryProposer,
                        OutcomeMemory, PerformanceProposer, ProposalDraft, ProposerContext,
                        TunableProposer, default_proposers, fit_temperature)
from .risk import assess_risk
from .sandbox import Sandbox, TestResult, paired_interval, t_quantile
from .settings import VortexSettings, load_settings

__all__ = [
    "Applier", "AuditLog", "AuditVerification", "FilePatch", "Hunk", "check_paths", "make_diff",
    "parse_diff", "RSICycleResult", "RSIEngine", "ImprovementProposal",
    "ProposalStatus", "ProposalStore", "RiskLevel", "TunableMove", "CommandProposer",
    "ConfidenceProposer", "ErrorHandlingProposer", "MemoryProposer", "OutcomeMemory",
    "PerformanceProposer", "ProposalDraft", "ProposerContext", "TunableProposer",
    "default_proposers", "fit_temperature", "assess_risk", "Sandbox", "TestResult",
    "paired_interval", "t_quantile", "VortexSettings", "load_settings",
]
