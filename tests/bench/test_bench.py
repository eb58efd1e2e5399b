"""`edge-embed bench` and the comparison harness, briefly: well-formed output, nothing about speed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_embed.bench import cpu_info, make_texts
from tests.conftest import REPO, run_cli


def test_make_texts_hits_the_token_target(tiny_cls: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_cls / "tokenizer.json"))
    tok.no_truncation()
    texts = make_texts(tiny_cls / "tokenizer.json", 40, 5)
    assert len(set(texts)) == 5
    for t in texts:
        assert abs(len(tok.encode(t).ids) - 40) <= 2  # cutting inside a word can re-split by a token or two


def test_cpu_info_names_the_cpu_and_isa() -> None:
    info = cpu_info()
    assert info["name"] and info["logical_cpus"] >= 1
    assert isinstance(info["isa"], list) and info["onnxruntime"]
    if Path("/proc/cpuinfo").is_file():
        flags = Path("/proc/cpuinfo").read_text()
        assert ("avx2" in info["isa"]) == (" avx2" in flags)


def test_bench_json_is_well_formed(tiny_cls: Path) -> None:
    r = run_cli("bench", "-m", str(tiny_cls), "--vs", str(tiny_cls), "--seconds", "0.05", "--cold-runs", "1",
                "--threads", "1", "--json", "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["cpu"]["onnxruntime"] and rep["threads"] == 1
    assert len(rep["bundles"]) == 2
    b = rep["bundles"][0]
    cells = {(t["length"], t["batch"]) for t in b["throughput"]}
    assert cells == {(n, bs) for n in (16, 128, 512) for bs in (1, 32)}
    assert all(t["texts_per_s"] > 0 and t["calls"] >= 1 for t in b["throughput"])
    # the tiny model stops at 64 tokens: longer cells are clipped and say so
    assert {t["tokens"] for t in b["throughput"]} == {16, 64}
    assert any("clipped at max_length=64" in n for n in b["notes"])
    assert all(0 < lat["p50"] <= lat["p95"] for lat in b["latency_ms"])
    assert b["cold_start_s"] > 0 and b["cold_start_cpu_s"] > 0 and 10 < b["peak_rss_mb"] < 4096
    assert b["model_mb"] <= b["bundle_mb"]


def test_bench_table_and_errors(tiny_cls: Path) -> None:
    r = run_cli("bench", "-m", str(tiny_cls), "--seconds", "0.02", "--cold-runs", "1", "-q")
    assert r.returncode == 0, r.stderr
    assert "texts/s 16 tok, batch 32" in r.stdout and "cold start" in r.stdout and "onnxruntime" in r.stdout
    r = run_cli("bench", "-m", "/nonexistent/bundle")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such bundle" in r.stderr


HAS_BENCH = all(importlib.util.find_spec(m) for m in ("sentence_transformers", "matplotlib"))


@pytest.mark.skipif(not HAS_BENCH, reason="needs the bench extra: pip install 'edge-embed[bench]'")
def test_compare_harness_end_to_end(tiny_bert_dir: Path, bundle_root: Path, tmp_path: Path) -> None:
    sts = tmp_path / "sts.tsv"
    sts.write_text("score\ts1\ts2\n4.5\tthe cat\tthe cat is here\n0.5\tfast car\twater river music\n"
                   "3.0\thello world\thello data\n", encoding="utf-8")
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d0", "text": "the cat and the dog"}\n'
                                       '{"_id": "d1", "text": "a fast car"}\n', encoding="utf-8")
    (beir / "queries.jsonl").write_text('{"_id": "q", "text": "cat"}\n', encoding="utf-8")
    (beir / "qrels" / "test.tsv").write_text("q\td0\t1\n", encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "compare.py"), "--model", f"tiny={tiny_bert_dir}",
           "--sts", str(sts), "--beir", str(beir), "--work", str(bundle_root / "compare-work"), "--out", str(out),
           "--rounds", "1", "--n-short", "34", "--n-long", "4", "--threads", "1",
           "--threshold", "top10_overlap=0", "--threshold", "cosine_min=0", "--threshold", "cosine_p1=0",
           "--threshold", "cosine_mean=0", "--threshold", "model_size_ratio=1"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "compare.json").read_text())
    engines = [row["engine"] for row in rep["rows"]]
    assert engines == ["edge-embed INT8", "ORT fp32", "PyTorch (sentence-transformers)"]
    torch_row = rep["rows"][2]
    assert torch_row["speedup_vs_pytorch"] == {"short b32": 1.0, "128 b32": 1.0, "short b1": 1.0}
    fp32_row = rep["rows"][1]
    assert fp32_row["retained_pct"] == {"sts_spearman": 100.0, "ndcg@10": 100.0}
    assert set(rep["rows"][0]["quality"]) == {"sts_spearman", "ndcg@10"}
    md = (out / "compare.md").read_text()
    assert md.count("| tiny |") == 3 and "Command: `python benchmarks/compare.py" in md
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
