"""edge-embed: small, fast, verified sentence embeddings on CPU and ARM.

The runtime depends on numpy, onnxruntime and tokenizers only. The build pipeline lives
in the separate ``quantize`` package (``pip install 'edge-embed[build]'``).
"""

from __future__ import annotations

from .embedder import Embedder, EmbedResult
from .errors import BundleError, EdgeEmbedError, InputError, SelfCheckError
from .manifest import FORMAT, Manifest

__version__ = "0.1.0"

__all__ = [
    "FORMAT",
    "BundleError",
    "EdgeEmbedError",
    "EmbedResult",
    "Embedder",
    "InputError",
    "Manifest",
    "SelfCheckError",
    "__version__",
]
