"""The runtime on emulated Raspberry Pi CPUs (Cortex-A72 = Pi 4, Cortex-A76 = Pi 5).

Runs scripts/arm_check.py: the checkout's own edge_embed under qemu-aarch64 loads the
real MiniLM INT8 bundle and its fp32 reference, and the host compares with x86. Skips,
saying why, where qemu-user-static or the aarch64 sysroot cannot be had; the first run
builds the sysroot under .ci/cache/arm-sysroot (about 30 s, needs apt and PyPI), later
runs reuse it. Correctness only: emulation says nothing about speed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import _build_once, run_cli

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.arm, pytest.mark.slow]
# CI sets this (scripts/ci_arm.sh): there a missing qemu or sysroot is a failure, not a skip
REQUIRED = os.environ.get("EDGE_EMBED_REQUIRE_ARM") == "1"


def _skip(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"EDGE_EMBED_REQUIRE_ARM=1 but the ARM check cannot run: {reason}")
    pytest.skip(reason)


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("arm_check", REPO / "scripts" / "arm_check.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["arm_check"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def arm_check() -> ModuleType:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        _skip(f"the emulated ARM check runs on x86_64 Linux hosts, this is {platform.system()} "
                    f"{platform.machine()}")
    if not shutil.which("qemu-aarch64-static"):
        _skip("qemu-aarch64-static not installed: apt-get install qemu-user-static "
                    "(scripts/ci_arm.sh installs it and prepares the sysroot)")
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        _skip("building the aarch64 sysroot needs apt-get and dpkg-deb (a Debian/Ubuntu host)")
    return _load_check()


def _sysroot() -> Path:
    return Path(os.environ.get("EDGE_EMBED_ARM_SYSROOT", REPO / ".ci" / "cache" / "arm-sysroot"))


def _has_arm64_target() -> bool:
    r = run_cli("build", "--help", timeout=120)
    return r.returncode == 0 and "--target" in r.stdout and "arm64" in r.stdout


@pytest.fixture(scope="module")
def arm64_bundle(bundle_root: Path, minilm_bundles: tuple[Path, Path]) -> Path | None:
    """MiniLM built with the build's ARM64 target preset, where the build has one.

    Built from the session's fp32 export (--from-onnx: no second torch export) with the INT8
    scheme the default build's search chose (--scheme: the search's rejected trials are the
    default build's business), judged on a quarter of the shipped probes.
    """
    if not _has_arm64_target():
        return None
    from quantize.validate import load_probes

    int8, fp32 = minilm_bundles
    probes = bundle_root / "arm64-probes.txt"
    probes.write_text("\n".join(load_probes()[::4]) + "\n", encoding="utf-8")
    scheme = json.loads((int8 / "manifest.json").read_text())["quantization"]["scheme"]
    return _build_once(bundle_root, "minilm-int8-arm64", "all-minilm-l6-v2", "--from-onnx", str(fp32 / "model.onnx"),
                       "--tokenizer", str(fp32 / "tokenizer.json"), "--target", "arm64", "--scheme", scheme,
                       "--probes", str(probes))


def _model_sha256(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["files"]["model.onnx"]["sha256"])


def test_emulated_pi4_and_pi5(arm_check: ModuleType, minilm_bundles: tuple[Path, Path], arm64_bundle: Path | None,
                              tmp_path: Path) -> None:
    int8, fp32 = minilm_bundles
    int8s = {"int8": int8}
    # an arm64 bundle whose model is byte for byte the default's is checked by the default's run
    if arm64_bundle and _model_sha256(arm64_bundle) != _model_sha256(int8):
        int8s["int8-arm64"] = arm64_bundle
    sysroot = _sysroot()
    try:
        # one guest run per CPU covers every INT8 bundle: imports and the fp32 pass are shared
        report = arm_check.run_check(int8s, fp32, sysroot=sysroot, work=tmp_path / "arm-work")
    except arm_check.Unavailable as e:
        _skip(str(e))
    print(report.text())
    assert report.passed, report.text()
    assert {c.cpu for c in report.cpus} == {"cortex-a72", "cortex-a76"}
    for c in report.cpus:
        assert c.info["machine"] == "aarch64"
        assert c.info["edge_embed"].startswith(str(REPO)), "the guest must run this checkout's edge_embed"
        assert c.fp32_max_abs <= 1e-4
        assert set(c.int8) == set(int8s)
        for r in c.int8.values():
            assert r.self_check is not None and r.self_check["passed"], r.self_check
    # the two CPUs take different INT8 kernels (A76 has the dot-product instructions)
    assert "asimddp" in report.cpus[1].info["cpu"] and "asimddp" not in report.cpus[0].info["cpu"]


def test_arm64_target_preset_is_exercised(arm_check: ModuleType, arm64_bundle: Path | None) -> None:
    """The build's --target arm64 preset goes through the emulated check above once it exists."""
    if arm64_bundle is None:
        pytest.skip("this build has no '--target arm64' preset yet; the check above covers the default INT8 bundle")
    assert (arm64_bundle / "manifest.json").is_file()


def test_self_check_catches_wrong_int8_kernels(arm_check: ModuleType, minilm_int8: Path) -> None:
    """Negative control: qemu 7.2's SVE CPU models make onnxruntime's INT8 output garbage.

    On such a CPU the self-check must refuse, naming the CPU and onnxruntime version; this is
    the failure a Pi owner would otherwise only notice as bad search results.
    """
    try:
        sysroot = arm_check.ensure_sysroot(_sysroot())
    except arm_check.Unavailable as e:
        _skip(str(e))
    r = arm_check.guest_info_self_check(minilm_int8, "max", sysroot)
    if r.returncode == 0:
        pytest.skip("this qemu computes INT8 correctly under -cpu max: no known-wrong CPU to test against")
    assert r.returncode == 1, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert "self-check failed on this device" in err
    assert "aarch64 Cortex-A76" in err and "onnxruntime " in err
