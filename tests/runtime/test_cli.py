"""The CLI through main([...]) in-process, as a user would call it."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder
from edge_embed.cli import main


def test_embed_prints_unit_vectors_as_json_lines(minilm_int8: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "-m", str(minilm_int8), "hello", "world"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    rows = [json.loads(ln) for ln in lines]
    assert [r["index"] for r in rows] == [0, 1]
    v = np.array(rows[0]["embedding"])
    assert v.shape == (384,) and abs(np.linalg.norm(v) - 1) < 1e-5
    np.testing.assert_allclose(v, Embedder.load(minilm_int8).embed(["hello", "world"])[0], atol=1e-6)


def test_embed_file_to_npy_keeps_line_order(minilm_int8: Path, minilm_fp32: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["first line", "", "a third, longer line of text to embed here", "fourth"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    assert main(["embed", "-m", str(minilm_int8), "-i", str(src), "-f", "npy", "-o", str(out),
                 "--chunk-size", "2", "--progress"]) == 0
    arr = np.load(out)
    assert arr.shape == (4, 384) and arr.dtype == np.float32
    # row i is text i: each row is nearest to its own text's fp32 vector
    ref = Embedder.load(minilm_fp32).embed(texts)
    sims = arr @ ref.T
    assert (sims.argmax(axis=1) == np.arange(4)).all() and sims.diagonal().min() > 0.97
    assert "embedding: 4/4 texts" in capsys.readouterr().err


def test_embed_stdin(minilm_int8: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n"))
    assert main(["embed", "-m", str(minilm_int8), "-i", "-"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_embed_reports_truncation(minilm_int8: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "-m", str(minilm_int8), "word " * 400]) == 0
    assert "1 text(s) longer than 256 tokens were truncated" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "-m", "/nonexistent/bundle", "hi"], "no such bundle"),
        (["embed", "-m", "{b}", "-i", "/nonexistent.txt"], "cannot open input"),
        (["embed", "-m", "{b}", "--prompt", "query", "hi"], "not in this bundle's prompts"),
    ],
)
def test_user_errors_are_one_line_exit_1(minilm_int8: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                         message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_EMBED_MODEL", raising=False)
    argv = [a.replace("{b}", str(minilm_int8)) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("edge-embed: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["embed", "--format", "xml"])
    assert exc.value.code == 2


def test_info_and_verify(minilm_int8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(minilm_int8), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "pooling       mean" in out and "verified: 3 files" in out or "verified:" in out
    q = json.loads((minilm_int8 / "manifest.json").read_text())["quantization"]
    assert f"{len(q.get('per_token_nodes', []))} MatMuls with per-token scales" in out or not q.get("per_token_nodes")
    assert f"{len(q['fp32_nodes'])} nodes in fp32" in out
    assert main(["info", str(minilm_int8), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == 384

    bad = tmp_path / "bad"
    shutil.copytree(minilm_int8, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[1000] ^= 0x01
    (bad / "model.onnx").write_bytes(bytes(data))
    assert main(["info", str(bad)]) == 0  # sizes match: only --verify reads every byte
    capsys.readouterr()
    assert main(["info", str(bad), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "model.onnx: sha256" in err and "files.model.onnx.sha256" in err


@pytest.mark.parametrize("bad", [["--batch-size", "0"], ["--stride", "8"], ["--prompt", "nope"],
                                 ["--long-text", "window", "--stride", "999"]])
def test_bad_options_fail_even_when_the_input_is_empty(minilm_int8: Path, tmp_path: Path, bad: list[str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert main(["embed", "-m", str(minilm_int8), "-i", str(empty), *bad]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-embed: error: "), err


def test_embed_corpus_with_zero_workers_is_an_error_not_a_crash(minilm_int8: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pyarrow", reason="embed-corpus needs the corpus extra")
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n', encoding="utf-8")
    assert main(["embed-corpus", str(src), "-o", str(tmp_path / "out"), "-m", str(minilm_int8),
                 "--workers", "0"]) == 1
    assert "--workers/--threads: expected positive integers" in capsys.readouterr().err
