"""Errors edge-embed raises on purpose.

Every message has the shape *where: what; what to do*. Nothing here imports numpy or
onnxruntime, so the errors can be caught by code that never loads a model.
"""

from __future__ import annotations

__all__ = ["BundleError", "EdgeEmbedError", "InputError", "SelfCheckError", "UsageError"]


class EdgeEmbedError(Exception):
    """Base of every error edge-embed raises on purpose."""


class BundleError(EdgeEmbedError):
    """A bundle is missing, incomplete, altered or of an unknown format."""


class InputError(EdgeEmbedError, ValueError):
    """The caller passed something embed() can't use."""


class UsageError(InputError):
    """A command line or build plan that asks for nothing sensible (a missing, unknown or contradictory
    option): the CLI exits 2 on it, like argparse."""


class SelfCheckError(EdgeEmbedError):
    """A bundle's stored probes embed wrongly on this device (a CPU/kernel problem, not a file problem)."""
