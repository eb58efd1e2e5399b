"""The corpus job: vectors as Embedder.embed gives them, in order with their ids; resuming after
SIGINT and SIGKILL gives the uninterrupted output; foreign or corrupt job manifests are one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder
from edge_embed.cli import main
from edge_embed.corpus import JOB_FILE, embed_corpus, shard_name

from .conftest import CORPUS_N, SAMPLE_STEP, msmarco_records

pa = pytest.importorskip("pyarrow", reason="needs the corpus extra (pip install 'edge-embed[corpus]')")
pq = pytest.importorskip("pyarrow.parquet")
pacsv = pytest.importorskip("pyarrow.csv")
psutil = pytest.importorskip("psutil", reason="needs the corpus extra (pip install 'edge-embed[corpus]')")

REPO = Path(__file__).resolve().parents[2]


def _vectors(table: pa.Table) -> np.ndarray:
    col = table.column("vector").combine_chunks()
    return np.asarray(col.flatten(), dtype=np.float32).reshape(len(col), -1)


def _records(n: int | None = None) -> list[dict[str, str]]:
    recs = msmarco_records()
    return recs[:n] if n else recs


def _slice(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"corpus-{n}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in _records(n):
            f.write(json.dumps({"_id": r["_id"], "text": r["text"]}) + "\n")
    return path


@pytest.mark.slow  # an fp32 pass over 2,000 passages and one over 400
def test_job_over_msmarco_matches_embed_in_order_with_ids(tmp_path: Path, fp32: Embedder,
                                                           msmarco_sample_fp32: np.ndarray, minilm_fp32: Path) -> None:
    # fp32: its vectors do not depend on which texts share a batch, so they must match embed()'s;
    # an INT8 bundle's per-batch activation scales move them by ~1e-3 between any two batchings.
    # Every id is checked, and the vectors of every 5th row (all shards, both workers): a vector
    # given to the wrong row or batched wrongly shows there
    out = tmp_path / "out"
    rc = main(["embed-corpus", str(_slice(tmp_path, CORPUS_N)), "-o", str(out), "-m", str(minilm_fp32),
               "--workers", "2", "--shard-size", str(CORPUS_N // 5), "--no-progress"])
    assert rc == 0
    table = pq.read_table(out)
    recs = _records(CORPUS_N)
    assert table.column("id").to_pylist() == [r["_id"] for r in recs]
    assert table.schema.field("vector").type == pa.list_(pa.float32(), fp32.dim)
    cos = np.sum(_vectors(table)[::SAMPLE_STEP] * msmarco_sample_fp32, axis=1)
    assert len(cos) == len(recs) // SAMPLE_STEP
    assert cos.min() >= 0.9999, f"min cosine {cos.min():.6f} against Embedder.embed"
    job = json.loads((out / JOB_FILE).read_text())
    assert job["complete"] and [d["shard"] for d in job["done"]] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == [JOB_FILE] + [shard_name(i) for i in range(5)]


def _job_cmd(src: Path, out: Path, bundle: Path) -> list[str]:
    return [sys.executable, "-m", "edge_embed.cli", "embed-corpus", str(src), "-o", str(out), "-m", str(bundle),
            "--workers", "2", "--shard-size", "40", "--no-progress"]


def _done(out: Path) -> int:
    try:
        return len(json.loads((out / JOB_FILE).read_text())["done"])
    except (OSError, ValueError):
        return 0


def _start_and_stop(cmd: list[str], out: Path, after: int, sig: int) -> tuple[subprocess.Popen[str], list[int]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while _done(out) < after:
        assert proc.poll() is None, f"the job ended before it was stopped: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc, workers


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_stopped_job_resumes_to_the_uninterrupted_output(tmp_path: Path, minilm_int8: Path) -> None:
    # INT8 on purpose: its vectors change with batch composition, so equal output means every
    # shard got the same rows and batches when the job was resumed
    src = _slice(tmp_path, 360)  # 9 shards of 40
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    whole = tmp_path / "whole"
    r = subprocess.run(_job_cmd(src, whole, minilm_int8), cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    out = tmp_path / "resumed"
    proc, _ = _start_and_stop(_job_cmd(src, out, minilm_int8), out, 2, signal.SIGINT)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 130, err
    assert "run the same command again to continue" in err and "Traceback" not in err

    proc, workers = _start_and_stop(_job_cmd(src, out, minilm_int8), out, _done(out) + 2, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30  # the workers notice the job is gone and exit
    while any(_alive(p) for p in workers):
        assert time.monotonic() < deadline, "worker processes outlived the killed job"
        time.sleep(0.2)
    done = _done(out)
    assert 4 <= done < 9
    for i in range(done):  # whatever the kill interrupted, the shards recorded are whole
        assert pq.ParquetFile(out / shard_name(i)).metadata.num_rows == 40
    before = {i: (out / shard_name(i)).stat().st_mtime_ns for i in range(done)}

    r = subprocess.run(_job_cmd(src, out, minilm_int8), cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {i: (out / shard_name(i)).stat().st_mtime_ns for i in range(done)} == before, "done shards were redone"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    a, b = pq.read_table(whole), pq.read_table(out)
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert np.array_equal(_vectors(a), _vectors(b))


def _one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("edge-embed: error: "), err
    return err


def test_foreign_or_corrupt_job_manifest_is_a_clear_error(tmp_path: Path, minilm_int8: Path, minilm_fp32: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": f"document number {i}"}) + "\n" for i in range(6)))
    out = tmp_path / "out"

    def job(bundle: Path = minilm_int8, shard_size: int = 4, outdir: Path = out) -> list[str]:
        return ["embed-corpus", str(src), "-o", str(outdir), "-m", str(bundle), "--shard-size", str(shard_size),
                "--workers", "1", "--no-progress"]

    assert main(job()) == 0
    job_text = (out / JOB_FILE).read_text()
    assert main(job()) == 0  # complete: nothing to do, still fine
    capsys.readouterr()

    err = _one_error_line(capsys, job(bundle=minilm_fp32))
    assert JOB_FILE in err and "another bundle" in err
    err = _one_error_line(capsys, job(shard_size=3))
    assert "shard_size=4" in err
    src.write_text(src.read_text().replace("number 5", "number 6"))
    err = _one_error_line(capsys, job())
    assert "another input" in err and "choose another -o" in err

    (out / JOB_FILE).write_text(job_text[: len(job_text) // 2])
    err = _one_error_line(capsys, job())
    assert "not a readable job manifest" in err
    (out / JOB_FILE).write_text(json.dumps({"format": "something-else/1"}))
    err = _one_error_line(capsys, job())
    assert "not an edge-embed corpus job manifest" in err

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    err = _one_error_line(capsys, job(outdir=other))
    assert "is not a corpus job" in err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_input_formats_give_the_same_rows(tmp_path: Path, minilm_int8: Path) -> None:
    texts = [f"text {i}: " + "word " * (i % 7) for i in range(12)] + ["", "a, \"quoted\" text"]
    ids = [f"d{i:03d}" for i in range(len(texts))]
    rows = [json.dumps({"doc": d, "body": t}) + "\n" for d, t in zip(ids, texts, strict=True)]
    (tmp_path / "c.jsonl").write_text("".join(rows))
    pacsv.write_csv(pa.table({"doc": ids, "body": texts}), tmp_path / "c.csv")
    pq.write_table(pa.table({"doc": ids, "body": texts, "other": list(range(len(texts)))}), tmp_path / "c.parquet")
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
    tables = {}
    for name in ("c.jsonl", "c.csv", "c.parquet", "c.txt"):
        fields = {} if name.endswith(".txt") else {"text_field": "body", "id_field": "doc"}
        res = embed_corpus(tmp_path / name, tmp_path / f"out-{name}", bundle=minilm_int8, workers=1, shard_size=5,
                           progress=False, **fields)  # type: ignore[arg-type]
        assert res.rows == len(texts) and res.shards == 3
        tables[name] = pq.read_table(tmp_path / f"out-{name}")
    for name in ("c.jsonl", "c.csv", "c.parquet"):
        assert tables[name].column("id").to_pylist() == ids
    assert tables["c.txt"].column("id").to_pylist() == list(range(len(texts)))
    ref = _vectors(tables["c.jsonl"])
    for t in tables.values():
        assert np.array_equal(_vectors(t), ref)


def test_bad_input_is_a_clear_error(tmp_path: Path, minilm_int8: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "fine"}) + "\n" + json.dumps({"id": "b", "body": "no text"}) + "\n")
    base = ["embed-corpus", str(src), "-o", str(tmp_path / "out"), "-m", str(minilm_int8), "--workers", "1"]
    err = _one_error_line(capsys, base)
    assert f"{src}:2:" in err and "'text'" in err and "--text-field" in err
    err = _one_error_line(capsys, [*base, "--text-field", "body"])
    assert "no 'body' field" in err
    (tmp_path / "docs.xml").write_text("<a/>")
    err = _one_error_line(capsys, [*base[:1], str(tmp_path / "docs.xml"), *base[2:]])
    assert "--input-format" in err


def test_missing_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    err = _one_error_line(capsys, ["embed-corpus", str(tmp_path / "x.jsonl"), "-o", str(tmp_path / "o"),
                                   "-m", str(tmp_path)])
    assert "edge-embed[corpus]" in err


def test_max_batch_tokens_bounds_every_run(fp32: Embedder) -> None:
    texts = [("word " * n).strip() for n in (1, 3, 40, 2, 120, 7, 5, 60, 9, 0, 33, 4)] * 3
    shapes: list[tuple[int, int]] = []

    class Spy:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def run(self, names: list[str], feed: dict[str, np.ndarray]) -> object:
            shapes.append(feed["input_ids"].shape)
            return self.inner.run(names, feed)  # type: ignore[attr-defined]

    spied = fp32.with_session(Spy(fp32.session))
    got = spied.embed_detailed(texts, batch_size=16, max_batch_tokens=200).vectors
    assert sum(r for r, _ in shapes) == len(texts)
    assert all(r * w <= 200 or r == 1 for r, w in shapes) and max(r for r, _ in shapes) <= 16
    assert len(shapes) > -(-len(texts) // 16)  # the budget, not batch_size, cut the long batches
    assert np.min(np.sum(got * fp32.embed(texts), axis=1)) >= 0.99999


def test_precision_columns_hold_encode_codes(tmp_path: Path, fp32: Embedder, minilm_fp32: Path) -> None:
    texts = [f"passage {i} about " + "topic " * (i % 5) for i in range(10)]
    src = tmp_path / "c.txt"
    src.write_text("\n".join(texts) + "\n")
    embed_corpus(src, tmp_path / "out", bundle=minilm_fp32, workers=1, shard_size=4, progress=False,
                 precisions=("int8", "ubinary"))
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("vector_int8").type == pa.list_(pa.int8(), fp32.dim)
    assert table.schema.field("vector_ubinary").type == pa.list_(pa.uint8(), fp32.dim // 8)
    for precision in ("int8", "ubinary"):
        col = table.column(f"vector_{precision}").combine_chunks()
        got = np.asarray(col.flatten()).reshape(len(col), -1).astype(np.int16)
        want = fp32.encode(texts, precision=precision).astype(np.int16)
        # fp32 vectors agree to ~1e-7 across batchings: a code may sit one step off at a boundary
        assert np.abs(got - want).max() <= (1 if precision == "int8" else 255)
        assert np.mean(got == want) > 0.99
