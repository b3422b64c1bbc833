"""A small classifier service tuned by Vortex's self-modification engine (see service.py)."""

from .service import Service, TUNABLES_PATH, make_data

__all__ = ["Service", "TUNABLES_PATH", "make_data"]
