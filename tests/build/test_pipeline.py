"""The build pipeline on real all-MiniLM-L6-v2 and on a tiny random BERT."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from edge_embed import Embedder, Manifest
from tests.conftest import run_cli, write_manifest


def test_fp32_onnx_matches_pytorch_reference(minilm_fp32: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from quantize.recipe import resolve_source
    from quantize.validate import load_probes

    _, src = resolve_source("all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModel.from_pretrained(src).eval()
    texts = load_probes()[::4]
    with torch.no_grad():
        b = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=256)
        h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1).numpy()
    got = Embedder.load(minilm_fp32).embed(texts)
    cos = (ref * got).sum(axis=1)
    assert cos.min() > 0.9999, cos.min()


def test_tokenizer_ids_match_autotokenizer(minilm_fp32: Path) -> None:
    from transformers import AutoTokenizer

    from quantize.recipe import resolve_source
    from quantize.validate import load_probes

    _, src = resolve_source("all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(src)
    emb = Embedder.load(minilm_fp32)
    texts = load_probes()
    want = tok(texts, truncation=True, max_length=256)["input_ids"]
    got = [e.ids for e in emb.tokenize(texts)]
    assert got == want


def test_int8_bundle_meets_recipe_thresholds(minilm_int8: Path, minilm_fp32: Path) -> None:
    m = Manifest.read(minilm_int8)
    report = json.loads((minilm_int8 / "validation.json").read_text())
    assert report["passed"] is True
    from quantize.validate import UPPER_BOUNDS

    # labelled thresholds (sts_spearman_retained) apply only to builds given --eval-sts
    for key, limit in report["thresholds"].items():
        if key in UPPER_BOUNDS:
            assert report[key] <= limit, (key, report[key], limit)
        elif key in report:
            assert report[key] >= limit, (key, report[key], limit)
    assert report["probes"]["count"] >= 100 and report["probes"]["tokens_max"] >= 256
    assert m.validation["cosine_mean"] == report["cosine_mean"]
    # the verdict is the gate part's; the search part's figures are reported beside it
    from quantize.validate import compare, default_probes, embed_with_progress

    split = default_probes()
    assert report["probes"]["count"] == len(split.gate)
    assert report["search"]["probes"]["count"] == len(split.search)
    assert report["search"]["probes"]["sha256"] != report["probes"]["sha256"]
    assert report["search"]["passed"] and "batch_independence" in report["search"]
    # the figures are real: recomputing them through the runtime gives the same numbers
    probes = split.gate

    def vectors(bundle: Path) -> Any:  # in the build's own chunks: a per-batch scheme depends on them
        return embed_with_progress(Embedder.load(bundle), probes, "", progress=False)

    again = compare(vectors(minilm_fp32), vectors(minilm_int8))
    assert abs(again["cosine_mean"] - report["cosine_mean"]) < 1e-4
    size_int8 = (minilm_int8 / "model.onnx").stat().st_size
    size_fp32 = (minilm_fp32 / "model.onnx").stat().st_size
    assert size_int8 < 0.4 * size_fp32


def test_impossible_threshold_fails_and_leaves_no_bundle(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    r = run_cli("build", str(tiny_bert_dir), "--pooling", "cls", "-o", str(out), "--threshold", "cosine_mean=1.01")
    assert r.returncode == 1
    assert "missed the thresholds: cosine_mean" in r.stderr
    assert "No bundle written" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_tiny_dynamic_build_cls(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-int8"
    r = run_cli("build", str(tiny_bert_dir), "--pooling", "cls", "--method", "dynamic", "-o", str(out),
                "--threshold", "cosine_mean=0.9", "--threshold", "cosine_p1=0.8", "--threshold", "cosine_min=0.5",
                "--threshold", "top10_overlap=0.3", "--threshold", "model_size_ratio=1")
    assert r.returncode == 0, r.stderr[-3000:]
    m = Manifest.read(out)
    assert m.pooling == "cls" and m.dim == 32 and m.quantization["method"] == "dynamic"
    assert m.name == "tiny-int8"  # the folder it was placed at, not the build's work folder
    assert "[2/5] exporting" in r.stderr and "[4/5] validating" in r.stderr
    v = Embedder.load(out).embed(["hello world"])
    assert v.shape == (1, 32)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["no-such-recipe"], 1, "not a recipe in"),
        (["{tiny}", "--method", "magic"], 2, "--method: 'magic' is not one of"),
        (["{tiny}", "--threshold", "cosine_mean"], 2, "--threshold: expected KEY=NUMBER"),
        (["{tiny}", "--method", "fp32", "--fp32-out", "{tmp}/f"], 2, "--fp32-out: with --method fp32 the output"),
    ],
)
def test_build_usage_errors(tiny_bert_dir: Path, tmp_path: Path, args: list[str], code: int,
                            message: str) -> None:
    args = [a.replace("{tiny}", str(tiny_bert_dir)).replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli("build", *args, "-o", str(tmp_path / "x"))
    assert r.returncode == code and message in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_hub_id_offline_is_a_clear_error(tmp_path: Path) -> None:
    r = run_cli("build", "BAAI/bge-base-en-v1.5", "-o", str(tmp_path / "bge"),
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}, timeout=120)
    assert r.returncode == 1
    assert "not reachable" in r.stderr and "pass the local directory" in r.stderr


def test_recipe_resolves_local_package() -> None:
    from quantize.recipe import resolve_source

    recipe, src = resolve_source("all-minilm-l6-v2")
    assert recipe.pooling == "mean" and recipe.max_length == 256
    assert Path(src, "config.json").is_file()
    bge, where = resolve_source("bge-base-en-v1.5")
    assert (bge.pooling, bge.max_length, where) == ("cls", 512, "BAAI/bge-base-en-v1.5")
    assert bge.prompts["query"].startswith("Represent this sentence")


def test_probe_split_is_fixed_disjoint_and_covers_every_kind_of_text() -> None:
    from quantize.validate import default_probes, load_probes

    a, b = default_probes(), default_probes()
    assert a == b  # split once, the same on every build
    everything = load_probes()
    assert sorted(a.search + a.gate) == sorted(everything) and not set(a.search) & set(a.gate)
    assert 200 <= len(everything) <= 400 and abs(len(a.search) - len(a.gate)) <= 8
    for part in (a.search, a.gate):
        words = [len(t.split()) for t in part]
        # short queries, sentences and passages long enough to reach a 256-512 token max_length
        assert min(words) <= 4 and sum(w <= 12 for w in words) >= 30 and sum(w >= 200 for w in words) >= 8


def test_batch_independence_catches_per_batch_activation_scales(minilm_fp32: Path, tmp_path: Path) -> None:
    """fp32 vectors do not depend on their batch; dynamic INT8's per-batch activation scales do."""
    import shutil

    from quantize.int8 import quantize_dynamic_int8
    from quantize.validate import batch_independence, default_probes

    texts = default_probes().gate[::2]
    assert batch_independence(Embedder.load(minilm_fp32), texts) > 0.99999
    dyn = tmp_path / "dyn"
    shutil.copytree(minilm_fp32, dyn)
    quantize_dynamic_int8(minilm_fp32 / "model.onnx", dyn / "model.onnx")
    m = json.loads((dyn / "manifest.json").read_text())
    data = (dyn / "model.onnx").read_bytes()
    m["files"]["model.onnx"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_manifest(dyn, m)
    assert batch_independence(Embedder.load(dyn), texts) < 0.9999
