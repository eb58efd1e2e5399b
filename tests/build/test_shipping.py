"""Shipping bundles: ORT format, builds from an existing ONNX (no torch), reproducibility, hub failures."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_embed import BundleError, Embedder, Manifest
from tests.build.torch_free import run_torch_free, torch_free_site
from tests.conftest import run_cli

# a random tiny BERT drifts more than a trained model under INT8: loose thresholds, same code path
# (a tiny model is mostly graph overhead, so the INT8 size ceiling does not apply either)
TINY_THRESHOLDS = ["--threshold", "cosine_mean=0.9", "--threshold", "cosine_p1=0.8",
                   "--threshold", "cosine_min=0.5", "--threshold", "top10_overlap=0.3",
                   "--threshold", "model_size_ratio=1"]


# ---------------------------------------------------------------------- ORT format
@pytest.fixture(scope="module")
def converted(minilm_int8: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("ort") / "minilm-int8"
    shutil.copytree(minilm_int8, bundle)
    r = run_cli("convert", str(bundle))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote model.ort and required_operators_and_types.config" in r.stdout
    return bundle


def test_convert_writes_ort_model_and_operator_config(converted: Path) -> None:
    m = Manifest.read(converted)
    m.verify(converted)
    assert m.model_file == "model.onnx" and m.ort_model_file == "model.ort"
    assert {"model.onnx", "model.ort", "required_operators_and_types.config"} <= set(m.files)
    assert m.extra["ort_format"]["optimization_style"] == "Fixed"
    config = (converted / "required_operators_and_types.config").read_text()
    # the fused INT8 graph's contrib ops, in the format ORT's minimal-build script reads
    op = {"dynamic": "DynamicQuantizeMatMul", "per-token-all": "MatMulIntegerToFloat",
          "per-token-asym": "MatMulIntegerToFloat", "per-token-asym-smooth": "MatMulIntegerToFloat"}.get(
        m.quantization.get("scheme", "dynamic"), "MatMulNBits")
    assert "com.microsoft;1;" in config and op in config
    assert "ai.onnx;" in config and "# - model.ort\n" in config and "/tmp" not in config  # no absolute paths
    assert (converted / "model.ort").read_bytes()[4:8] == b"ORTM"  # flatbuffers file identifier


def test_ort_model_embeds_like_the_onnx_model(converted: Path) -> None:
    from quantize.validate import load_probes

    probes = load_probes()
    onnx_vecs = Embedder.load(converted).embed_detailed(probes).vectors
    ort_emb = Embedder.load(converted, model_format="ort", verify=True)
    assert ort_emb.session._model_path.endswith("model.ort")
    diff = float(np.abs(ort_emb.embed_detailed(probes).vectors - onnx_vecs).max())
    assert diff <= 1e-6, diff


def test_ort_model_from_a_packed_bundle(converted: Path, tmp_path: Path) -> None:
    r = run_cli("pack", str(converted), "-o", str(tmp_path / "m.edgeembed"))
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "m.edgeembed").read_bytes()
    texts = ["ship it", "inside an app"]
    want = Embedder.load(converted, model_format="ort").embed(texts)
    np.testing.assert_array_equal(Embedder.load(data, model_format="ort").embed(texts), want)
    r = run_cli("embed", "-m", str(tmp_path / "m.edgeembed"), "--model-format", "ort", *texts)
    assert r.returncode == 0, r.stderr
    got = np.array([json.loads(line)["embedding"] for line in r.stdout.splitlines()], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_ort_format_requested_but_absent(minilm_int8: Path) -> None:
    with pytest.raises(BundleError, match="names no 'ort_model_file'.*edge-embed convert"):
        Embedder.load(minilm_int8, model_format="ort")
    r = run_cli("embed", "-m", str(minilm_int8), "--model-format", "ort", "x")
    assert r.returncode == 1 and "edge-embed convert" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------- --from-onnx without torch
def test_from_onnx_build_needs_no_torch(tiny_cls: Path, tmp_path: Path) -> None:
    site = torch_free_site(tmp_path)
    probe = run_torch_free(site, "--version")
    assert probe.returncode == 0, probe.stderr
    check = subprocess.run([sys.executable, "-S", "-c", "import importlib.util as u; "
                            "print([m for m in ('torch', 'transformers', 'optimum', 'onnx') if u.find_spec(m)])"],
                           env={"PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert check.stdout.strip() == "['onnx']", check.stdout + check.stderr

    out = tmp_path / "from-onnx"
    r = run_torch_free(site, "build", "--from-onnx", str(tiny_cls / "model.onnx"),
                        "--tokenizer", str(tiny_cls / "tokenizer.json"), "--pooling", "cls", "--max-length", "48",
                        "--prompt", "query=search: ", "--ort-format", "--method", "dynamic", "-o", str(out),
                        *TINY_THRESHOLDS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[4/5] validating" in r.stderr
    m = Manifest.read(out)
    m.verify(out)
    assert (m.pooling, m.max_length, m.dim, m.prompts) == ("cls", 48, 32, {"query": "search: "})
    assert m.quantization["method"] == "dynamic" and m.validation["passed"] is True
    # fused without torch too (onnxruntime's optimizer imports torch in its own basic pass)
    assert m.quantization["graph_fusion"]["Attention"] == 2, m.quantization["graph_fusion"]
    assert m.source["model_id"] == "model.onnx" and len(m.source["onnx_sha256"]) == 64
    assert m.ort_model_file == "model.ort"
    ref = Embedder.load(tiny_cls)
    emb = Embedder.load(out)
    texts = ["hello world", "what is onnx?", "the cat and the dog in the house"]
    cos = (ref.embed(texts) * emb.embed(texts)).sum(axis=1)
    assert cos.min() > 0.9, cos  # an INT8 copy of the very model it was given
    np.testing.assert_allclose(Embedder.load(out, model_format="ort").embed(texts), emb.embed(texts), atol=1e-6)
    assert emb.tokenize(["x"], prompt="query")[0].tokens[:3] == ["[CLS]", "search", ":"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-onnx", "{onnx}", "--pooling", "cls"], "--from-onnx needs --tokenizer"),
        (["--from-onnx", "{onnx}", "--tokenizer", "{tok}"], "pass --pooling cls or --pooling mean"),
        # a recipe for another model: its hidden size is not the graph's
        (["bge-small-en-v1.5", "--from-onnx", "{onnx}", "--tokenizer", "{tok}"],
         "last_hidden_state is 32-d but recipe 'bge-small-en-v1.5' is for a 384-d model"),
        (["no-such-recipe", "--from-onnx", "{onnx}", "--tokenizer", "{tok}"], "no-such-recipe: not a recipe"),
        (["--from-onnx", "{dir}", "--pooling", "cls"], "no onnx/model.onnx or model.onnx in this folder"),
        (["--from-onnx", "{tok}", "--tokenizer", "{tok}", "--pooling", "cls"], "not a readable ONNX model"),
        (["--from-onnx", "{onnx}", "--tokenizer", "{onnx}", "--pooling", "cls"], "not a tokenizers JSON file"),
        # a malformed flag is a usage error (exit 2), the rest are the inputs' faults (exit 1)
        (["x", "--prompt", "noequals"], "--prompt: expected NAME=PREFIX"),
    ],
)
def test_from_onnx_usage_errors(tiny_cls: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.format(onnx=tiny_cls / "model.onnx", tok=tiny_cls / "tokenizer.json", dir=tmp_path) for a in args]
    r = run_cli("build", *args, "-o", str(tmp_path / "x"))
    assert r.returncode == (2 if "--prompt" in args else 1), r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------- reproducibility
def _build(src: str, out: Path, *extra: str) -> Manifest:
    r = run_cli("build", src, "-o", str(out), *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return Manifest.read(out)


def test_tiny_dynamic_build_is_byte_reproducible(tiny_bert_dir: Path, tmp_path: Path) -> None:
    args = ("--pooling", "cls", *TINY_THRESHOLDS)
    a = _build(str(tiny_bert_dir), tmp_path / "a" / "tiny", *args)
    b = _build(str(tiny_bert_dir), tmp_path / "b" / "tiny", *args)
    assert (tmp_path / "a/tiny/model.onnx").read_bytes() == (tmp_path / "b/tiny/model.onnx").read_bytes()
    assert a.files == b.files
    # the whole manifest, validation figures included, is the same
    assert (tmp_path / "a/tiny/manifest.json").read_bytes() == (tmp_path / "b/tiny/manifest.json").read_bytes()


@pytest.mark.slow
def test_minilm_default_build_is_byte_reproducible(minilm_int8: Path, tmp_path: Path) -> None:
    """Export, fusion, the chosen scheme's quantization and the gate's figures come out the same again.

    The rebuild is told the scheme the default build's search chose: the schemes the search tried
    and rejected first are recorded under 'tuning' in validation.json, the one thing it leaves out.
    """
    first = Manifest.read(minilm_int8)
    again = _build("all-minilm-l6-v2", tmp_path / "minilm-int8", "--scheme", first.quantization["scheme"])
    assert again.files["model.onnx"] == first.files["model.onnx"]
    assert (tmp_path / "minilm-int8/model.onnx").read_bytes() == (minilm_int8 / "model.onnx").read_bytes()
    assert again.validation == first.validation
    assert {k: v for k, v in again.files.items() if k != "validation.json"} == \
        {k: v for k, v in first.files.items() if k != "validation.json"}
    report = json.loads((tmp_path / "minilm-int8" / "validation.json").read_text())
    full = json.loads((minilm_int8 / "validation.json").read_text())
    assert "tuning" in full and report == {k: v for k, v in full.items() if k != "tuning"}


# ---------------------------------------------------------------------- hub: fail fast, never hang
@pytest.fixture
def silent_hub() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers: a hub behind a dropping firewall."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(timeout=2)
    for c in held:
        c.close()
    srv.close()


def test_hub_that_never_answers_fails_within_the_timeout(silent_hub: str, tmp_path: Path) -> None:
    # huggingface_hub's own repo_info has no timeout: without the bounded resolve this waits forever
    r = run_cli("build", "BAAI/bge-base-en-v1.5", "-o", str(tmp_path / "bge"), timeout=90,
                env={"HF_ENDPOINT": silent_hub, "HF_HUB_ETAG_TIMEOUT": "2", "HF_HOME": str(tmp_path / "hf"),
                     "HF_HUB_OFFLINE": "0"})
    assert r.returncode == 1, r.stderr[-2000:]
    assert "not reachable" in r.stderr and "pass the local directory" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "bge").exists()


def test_hub_offline_is_a_clear_error(tmp_path: Path) -> None:
    r = run_cli("build", "BAAI/bge-base-en-v1.5", "--revision", "main", "-o", str(tmp_path / "bge"), timeout=90,
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 1
    assert "HF_HUB_OFFLINE is set" in r.stderr and "edge-embed build DIR -o OUT" in r.stderr
    assert len(r.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in r.stderr
