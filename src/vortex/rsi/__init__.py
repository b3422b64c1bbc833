"""Self-modification (RSI): proposals, proposers, risk, sandbox, journaled apply, audit log.

Light to import: NumPy is only loaded by temperature fitting.
"""

from .apply import Applier
from .audit import AuditLog, AuditVerification
from .diffs import FilePatch, Hunk, check_paths, make_diff, parse_diff
from .engine import RSICycleResult, RSIEngine
from .proposal import ImprovementProposal, ProposalStatus, ProposalStore, RiskLevel, TunableMove
from .proposers import (
                        CommandProposer,
                        ConfidenceProposer,
                        ErrorHandlingProposer,
                        MemoryProposer,
                        OutcomeMemory,
                        PerformanceProposer,
                        ProposalDraft,
                        ProposerContext,
                        TunableProposer,
                        default_proposers,
                        fit_temperature,
)
from .risk import assess_risk
from .sandbox import Sandbox, TestResult, paired_interval, t_quantile
from .settings import VortexSettings, load_settings

__all__ = [
                        "Applier",
                        "AuditLog",
                        "AuditVerification",
                        "CommandProposer",
                        "ConfidenceProposer",
                        "ErrorHandlingProposer",
                        "FilePatch",
                        "Hunk",
                        "ImprovementProposal",
                        "MemoryProposer",
                        "OutcomeMemory",
                        "PerformanceProposer",
                        "ProposalDraft",
                        "ProposalStatus",
                        "ProposalStore",
                        "ProposerContext",
                        "RSICycleResult",
                        "RSIEngine",
                        "RiskLevel",
                        "Sandbox",
                        "TestResult",
                        "TunableMove",
                        "TunableProposer",
                        "VortexSettings",
                        "assess_risk",
                        "check_paths",
                        "default_proposers",
                        "fit_temperature",
                        "load_settings",
                        "make_diff",
                        "paired_interval",
                        "parse_diff",
                        "t_quantile",
]
