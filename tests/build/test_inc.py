"""The optional neural-compressor tuner (``--tuner inc``, the ``inc`` extra).

Tests marked ``inc`` need neural-compressor 3.7.1, which lives in a venv of its own
(``bash scripts/test_inc.sh`` makes it and runs them); elsewhere they skip, or fail when
EDGE_EMBED_REQUIRE_INC=1. The missing-extra error and the scoring run everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import HAS_BUILD, run_cli

pytestmark = [pytest.mark.build, pytest.mark.skipif(not HAS_BUILD, reason="needs the build extra")]

HAS_INC = False
if HAS_BUILD:
    from quantize.inc import available

    HAS_INC = available() is not None
REQUIRE_INC = os.environ.get("EDGE_EMBED_REQUIRE_INC") == "1"
needs_inc = pytest.mark.skipif(not HAS_INC and not REQUIRE_INC,
                               reason="needs the inc extra (bash scripts/test_inc.sh runs these)")
LOOSE_TINY = ["--threshold", "top10_overlap=0", "--threshold", "model_size_ratio=1"]


def test_tuner_inc_without_the_extra_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import quantize.inc
    from edge_embed.cli import main

    monkeypatch.setattr(quantize.inc, "available", lambda: None)
    code = main(["build", "all-minilm-l6-v2", "--tuner", "inc", "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "inc extra" in err[0] and "scripts/setup_inc.sh" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(HAS_INC, reason="neural-compressor is installed here")
def test_tuner_inc_without_the_extra_from_the_command_line(tmp_path: Path) -> None:
    r = run_cli("build", "all-minilm-l6-v2", "--tuner", "inc", "-o", str(tmp_path / "x"), timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "scripts/setup_inc.sh" in lines[0] and "Traceback" not in r.stderr


def test_tuner_inc_tunes_auto_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_embed.cli import main

    code = main(["build", "all-minilm-l6-v2", "--method", "dynamic", "--tuner", "inc", "-o", str(tmp_path / "x")])
    assert code == 2 and "--tuner inc: tunes --method auto only" in capsys.readouterr().err


def test_score_is_one_exactly_when_the_thresholds_hold() -> None:
    from quantize.inc import score

    th = {"cosine_mean": 0.99, "cosine_p1": 0.98, "model_size_ratio": 0.4}
    ok = {"thresholds": th, "cosine_mean": 0.995, "cosine_p1": 0.985, "model_size_ratio": 0.3}
    assert score(ok, quantized=True) == 1.0
    short = {**ok, "cosine_mean": 0.98, "model_size_ratio": 0.5}
    assert score(short, quantized=True) == pytest.approx(1.0 - 0.01 - 0.1)
    # the fp32 baseline INC scores first is the reference: its size is not judged
    assert score({**ok, "cosine_mean": 1.0, "cosine_p1": 1.0, "model_size_ratio": 1.0}, quantized=False) == 1.0


def test_fp32_nodes_of_finds_the_nodes_left_unquantized(tmp_path: Path, tiny_cls: Path) -> None:
    import onnx

    from quantize.inc import fp32_nodes_of, is_quantized
    from quantize.int8 import quantizable_nodes, quantize_dynamic_int8

    fp32 = tiny_cls / "model.onnx"
    cands = quantizable_nodes(fp32)
    keep = [c["node"] for c in cands if c["op"] == "MatMul"][:2]
    q = tmp_path / "q.onnx"
    quantize_dynamic_int8(fp32, q, "avx2", True, keep, None)
    got = fp32_nodes_of(cands, onnx.load(str(q)))
    assert sorted(c["node"] for c in got) == sorted(keep)
    assert is_quantized(onnx.load(str(q))) and not is_quantized(onnx.load(str(fp32)))


@pytest.mark.inc
@needs_inc
def test_inc_tiny_build_records_the_tuner_and_passes_validation(tmp_path: Path, tiny_bert_dir: Path) -> None:
    # a random tiny BERT's cosines all sit within 1e-4 of 1.0, too close to steer INC's fallback
    # with; the real MiniLM figures in the README show the fallback at work
    out = tmp_path / "tiny-inc"
    r = run_cli("build", str(tiny_bert_dir), "--pooling", "cls", "--tuner", "inc", "--tuner-trials", "5",
                *LOOSE_TINY, "-o", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "inc trial 1/5" in r.stderr  # progress, one line a trial
    m = json.loads((out / "manifest.json").read_text())
    q = m["quantization"]
    assert q["method"] == "auto" and q["tuner"]["tuner"] == "neural-compressor"
    assert q["tuner"]["version"].startswith("3.7") and 1 <= q["tuner"]["trials"] <= 5
    assert sorted(n["node"] for n in q["fp32_nodes"]) == q["excluded_nodes"]
    assert m["validation"]["passed"] and m["built_with"].get("neural-compressor", "").startswith("3.7")
    tuning = json.loads((out / "validation.json").read_text())["tuning"]
    assert tuning["tuner"] == "neural-compressor" and tuning["trials"][-1]["passed"]


@pytest.mark.inc
@needs_inc
@pytest.mark.parametrize(("limit", "said"), [(("--tuner-trials", "2"), "ran 2 trial(s)"),
                                             (("--tuner-timeout", "0"), "stopped at the 0 s limit")])
def test_inc_below_thresholds_is_a_drift_error_and_no_bundle(tmp_path: Path, tiny_bert_dir: Path,
                                                             limit: tuple[str, str], said: str) -> None:
    out = tmp_path / "drifted"
    r = run_cli("build", str(tiny_bert_dir), "--pooling", "cls", "--tuner", "inc", *limit,
                *LOOSE_TINY, "--threshold", "cosine_mean=1.01", "-o", str(out))
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("edge-embed: error:") and "No bundle written" in last and "--tuner" in last
    assert said in last and "Best reached: cosine_mean" in last
    assert "Traceback" not in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".drifted.partial-", "drifted"))]
