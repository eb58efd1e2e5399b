"""Self-check on load: stored probes re-embedded on this device, judged against the manifest.

Uses the real MiniLM bundles from the session fixtures (built in a subprocess, so this
process never imports torch). A tampered reference stands in for a CPU whose kernels
compute wrong vectors: the check cannot tell the two apart, which is the point.
"""

from __future__ import annotations

import json
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_embed import BundleError, EdgeEmbedError, Embedder, InputError, Manifest, SelfCheckError
from edge_embed.cli import main
from edge_embed.selfcheck import (
    MANIFEST_KEY,
    SELFCHECK_FILE,
    SelfCheckWarning,
    describe_cpu,
    run_self_check,
    self_check,
)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def _rewrite_probes(bundle: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Edit selfcheck.json and re-list it in the manifest, so only the check can notice."""
    path = bundle / SELFCHECK_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    m = Manifest.read(bundle)
    m.files = Manifest.describe_files(bundle, list(m.files))
    m.write(bundle)


def _tamper(bundle: Path, probe: int = 2) -> None:
    """Replace one probe's reference with a vector unrelated to it (what a broken kernel yields)."""
    def change(data: dict) -> None:  # type: ignore[type-arg]
        v = np.asarray(data["probes"][probe]["vector"], dtype=np.float64)
        data["probes"][probe]["vector"] = np.roll(v, 7).tolist()
    _rewrite_probes(bundle, change)


@pytest.fixture()
def tampered(minilm_int8: Path, tmp_path: Path) -> Path:
    b = _copy(minilm_int8, tmp_path)
    _tamper(b)
    return b


def test_built_bundles_carry_probes(minilm_int8: Path, minilm_fp32: Path) -> None:
    for bundle in (minilm_int8, minilm_fp32):
        m = Manifest.read(bundle)
        spec = m.extra[MANIFEST_KEY]
        assert spec["file"] == SELFCHECK_FILE and SELFCHECK_FILE in m.files
        assert 0.9 < spec["min_cosine"] <= 1.0
        m.verify(bundle)
    # the INT8 bundle is held to its own fidelity floor, the fp32 one to (almost) identity
    assert Manifest.read(minilm_int8).extra[MANIFEST_KEY]["min_cosine"] == \
        Manifest.read(minilm_int8).validation["thresholds"]["cosine_min"]
    assert Manifest.read(minilm_fp32).extra[MANIFEST_KEY]["min_cosine"] >= 0.999


def test_self_check_passes_here(minilm_int8: Path, minilm_fp32: Path) -> None:
    for bundle in (minilm_int8, minilm_fp32):
        emb = Embedder.load(bundle, self_check=True)
        assert emb.self_check_result is not None and emb.self_check_result.passed
        res = run_self_check(emb)
        assert res.passed and res.min_cosine >= res.threshold
        assert len(res.cosines) == Manifest.read(bundle).extra[MANIFEST_KEY]["probes"]
        assert platform.machine() in res.summary() and ort.__version__ in res.summary()
    assert run_self_check(Embedder.load(minilm_fp32)).min_cosine > 0.9999


def test_tampered_reference_fails_naming_cpu_and_ort(tampered: Path) -> None:
    with pytest.raises(SelfCheckError) as exc:
        Embedder.load(tampered, self_check=True)
    msg = str(exc.value)
    assert isinstance(exc.value, EdgeEmbedError)
    assert str(tampered) in msg and "probe 2" in msg
    assert f"{MANIFEST_KEY}.min_cosine=" in msg
    assert platform.machine() in msg and describe_cpu() in msg
    assert f"onnxruntime {ort.__version__}" in msg


def test_warn_instead_of_fail(tampered: Path) -> None:
    with pytest.warns(SelfCheckWarning, match="self-check failed on this device") as rec:
        emb = Embedder.load(tampered, self_check="warn")
    assert ort.__version__ in str(rec[0].message)
    assert emb.embed(["still usable"]).shape == (1, 384)
    with pytest.warns(SelfCheckWarning):
        res = self_check(emb, on_fail="warn")
    assert not res.passed and res.worst == 2 and res.min_cosine < res.threshold


def test_off_by_default_and_bad_option(tampered: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Embedder.load(tampered)  # no check unless asked for
    with pytest.raises(InputError, match="self_check"):
        Embedder.load(tampered, self_check="sometimes")


def test_bundle_without_probes(minilm_int8: Path, tmp_path: Path) -> None:
    b = _copy(minilm_int8, tmp_path)
    m = Manifest.read(b)
    del m.extra[MANIFEST_KEY]
    m.write(b)
    with pytest.raises(BundleError, match=f"no '{MANIFEST_KEY}' key"):
        Embedder.load(b, self_check=True)


def test_malformed_probe_file(minilm_int8: Path, tmp_path: Path) -> None:
    b = _copy(minilm_int8, tmp_path)
    _rewrite_probes(b, lambda d: d["probes"][0].update(vector=[0.0] * 10))
    with pytest.raises(BundleError, match=r"probes\[0\]\.vector.*384"):
        Embedder.load(b, self_check=True)
    m = Manifest.read(b)
    m.extra[MANIFEST_KEY]["min_cosine"] = "high"
    m.write(b)
    with pytest.raises(BundleError, match="min_cosine"):
        Embedder.load(b, self_check=True)


def test_cli_info_self_check(minilm_int8: Path, tampered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(minilm_int8), "--self-check"]) == 0
    assert "self-check passed" in capsys.readouterr().out
    assert main(["info", str(tampered), "--self-check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "self-check failed" in err and ort.__version__ in err
    assert main(["info", str(tampered), "--self-check", "warn"]) == 0
    out, err = capsys.readouterr()
    assert "self-check FAILED" in out and "warning:" in err


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
     "CPU part\t: 0xd08\n\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n",
     ["Cortex-A72 (CPU part 0xd08)", "on Raspberry Pi 4 Model B Rev 1.4", "[no dot-product/VNNI extensions]"]),
    ("processor\t: 0\nFeatures\t: fp asimd asimddp cpuid\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n",
     ["Cortex-A76 (CPU part 0xd0b)", "[asimddp]"]),
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Gold 6230\n"
     "flags\t\t: fpu sse avx2 avx512_vnni\n", ["Intel(R) Xeon(R) Gold 6230", "[avx2 avx512_vnni]"]),
])
def test_describe_cpu(tmp_path: Path, cpuinfo: str, expected: list[str]) -> None:
    p = tmp_path / "cpuinfo"
    p.write_text(cpuinfo, encoding="utf-8")
    got = describe_cpu(str(p))
    assert got.startswith(platform.machine())
    for part in expected:
        assert part in got
    assert " 85" not in got  # an x86 'model' number is not a board name
    assert describe_cpu(str(tmp_path / "absent")).startswith(platform.machine())


def test_packed_bundle_self_check(minilm_int8: Path, tampered: Path, tmp_path: Path) -> None:
    from edge_embed.archive import pack

    good = pack(minilm_int8, tmp_path / "good.edgeembed")
    emb = Embedder.load(good, self_check=True)
    assert emb.self_check_result is not None and emb.self_check_result.passed
    bad = pack(tampered, tmp_path / "bad.edgeembed")
    with pytest.raises(SelfCheckError, match="self-check failed on this device"):
        Embedder.load(bad, self_check=True)
    assert main(["info", str(bad), "--self-check"]) == 1
