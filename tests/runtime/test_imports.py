"""Import hygiene: the runtime never pulls the build stack, and its public API is pinned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import edge_embed

REPO = Path(__file__).resolve().parents[2]
BUILD = ("torch", "transformers", "optimum", "onnx", "quantize", "neural_compressor")


def test_runtime_imports_no_build_stack() -> None:
    code = (
        "import sys, edge_embed, edge_embed.cli, edge_embed.embedder, edge_embed.manifest, edge_embed.selfcheck\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({BUILD!r}))\n"
        "print(','.join(bad))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"runtime imported {r.stdout.strip()}"


def test_public_api_is_pinned() -> None:
    assert sorted(edge_embed.__all__) == sorted([
        "FORMAT", "BundleError", "EdgeEmbedError", "EmbedResult", "Embedder", "InputError", "Manifest",
        "SelfCheckError", "__version__",
    ])
    for name in edge_embed.__all__:
        assert hasattr(edge_embed, name)


def test_error_hierarchy() -> None:
    assert issubclass(edge_embed.BundleError, edge_embed.EdgeEmbedError)
    assert issubclass(edge_embed.InputError, edge_embed.EdgeEmbedError)
    assert issubclass(edge_embed.InputError, ValueError)
    assert issubclass(edge_embed.SelfCheckError, edge_embed.EdgeEmbedError)
