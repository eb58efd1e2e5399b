#!/usr/bin/env bash
# CI step for the emulated Raspberry Pi check (tests/arm, pytest marker `arm`).
#
#   bash scripts/ci_arm.sh --prepare   install qemu-user-static if missing (as root) and build or
#                                      reuse the aarch64 sysroot in .ci/cache/arm-sysroot; then a
#                                      plain `pytest` run includes the check (about 2 minutes)
#   bash scripts/ci_arm.sh             prepare, then run only the ARM check: pytest -m arm
#
# EDGE_EMBED_REQUIRE_ARM=1 (set here) turns the test's skip into a failure, so CI cannot pass
# an ARM claim it did not exercise. PYTHON defaults to .venv/bin/python (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHON="${PYTHON:-.venv/bin/python}"
t0=$(date +%s)
bash scripts/arm_sysroot.sh >/dev/null
echo "ci_arm: qemu $(qemu-aarch64-static --version | head -1 | awk '{print $3}'), sysroot ready in $(( $(date +%s) - t0 )) s"
if [[ "${1:-}" == "--prepare" ]]; then
    exit 0
fi
EDGE_EMBED_REQUIRE_ARM=1 "$PYTHON" -m pytest -q -m arm -rA tests/arm
