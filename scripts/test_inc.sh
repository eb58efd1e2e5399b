#!/usr/bin/env bash
# One command for the neural-compressor tuner's tests: makes (or reuses) the INC venv and runs
# the tests marked inc, which must not skip there. Usage: bash scripts/test_inc.sh [pytest args]
# The venv is .venv-inc, or $EDGE_EMBED_INC_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EDGE_EMBED_INC_VENV:-.venv-inc}
bash scripts/setup_inc.sh "$VENV"
EDGE_EMBED_REQUIRE_INC=1 exec "$VENV/bin/python" -m pytest -q tests/build/test_inc.py "$@"
