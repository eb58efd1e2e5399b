"""edge-embed's build pipeline: Hugging Face model -> ONNX -> INT8 -> validated bundle.

Needs the ``build`` extra (torch, transformers, optimum, onnx). Starting from an existing
ONNX file (``--from-onnx``) or converting a bundle to ORT format needs only the ``onnx``
extra (onnx, and sympy for onnxruntime's BERT fusion): torch, transformers and optimum
are imported by the export step alone. The runtime package ``edge_embed`` never imports
this one; this one uses the runtime to validate what ships.
"""

from __future__ import annotations

import importlib.util

_NEEDED = ("onnx", "onnxruntime")
EXTRA_HINT = "pip install torch==2.13.0 && pip install 'edge-embed[build]'"
_missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
if _missing:
    raise ImportError(
        f"the edge-embed build pipeline needs {', '.join(_missing)}; install the build extra: "
        + EXTRA_HINT + " (or, to build from an existing ONNX export without torch: pip install 'edge-embed[onnx]')"
    )

from edge_embed.errors import EdgeEmbedError, UsageError  # noqa: E402


class BuildError(EdgeEmbedError):
    """A build step failed: bad source, recipe, export or quantization."""


class FlagError(BuildError, UsageError):
    """A build request whose options contradict each other or name nothing known (the CLI exits 2)."""


class DriftError(BuildError):
    """The quantized model drifted past the recipe's fidelity thresholds."""


__all__ = ["BuildError", "DriftError", "FlagError"]
