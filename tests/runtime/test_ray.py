"""Ray Data: EdgeEmbed through map_batches on a local 2-CPU cluster, and embed-corpus --engine ray."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed import Embedder, InputError
from edge_embed.archive import pack
from edge_embed.cli import main
from edge_embed.corpus import JOB_FILE

from .conftest import CORPUS_N, SAMPLE_STEP, msmarco_records

ray = pytest.importorskip("ray", reason="needs the ray extra (pip install 'edge-embed[ray]')")
pytest.importorskip("ray.data", reason="needs the ray extra (pip install 'edge-embed[ray]')")
pq = pytest.importorskip("pyarrow.parquet")

from edge_embed.ray import EdgeEmbed  # noqa: E402 - after the skip

N = CORPUS_N // SAMPLE_STEP  # the shared reference sample, as test_corpus.py's job over the same passages


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    yield ray
    ray.shutdown()


class PidEdgeEmbed(EdgeEmbed):
    """EdgeEmbed that also says which actor embedded each row."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(batch)
        out["pid"] = np.full(len(batch["text"]), os.getpid())
        return out


def test_map_batches_with_two_actors_matches_embed(local_ray: Any, minilm_fp32: Path, msmarco_sample_fp32: np.ndarray,
                                                   tmp_path: Path) -> None:
    recs = msmarco_records()[:CORPUS_N:SAMPLE_STEP]
    want = msmarco_sample_fp32
    assert len(recs) == len(want) == N
    packed = pack(minilm_fp32, tmp_path / "minilm-fp32.edgeembed")
    ref = local_ray.put(packed.read_bytes())  # the bundle travels once, through the object store
    ds = local_ray.data.from_items([{"id": r["_id"], "text": r["text"]} for r in recs])
    ds = ds.map_batches(PidEdgeEmbed, fn_constructor_kwargs={"bundle": ref}, concurrency=2, batch_size=100)
    rows = ds.take_all()
    assert [r["id"] for r in rows] == [r["_id"] for r in recs]
    vectors = np.stack([r["vector"] for r in rows])
    assert vectors.dtype == np.float32 and vectors.shape == (N, 384)
    cos = np.sum(vectors * want, axis=1)
    assert cos.min() >= 0.9999, f"min cosine {cos.min():.6f} against Embedder.embed"
    assert len({r["pid"] for r in rows}) == 2, "both actors embedded"


def test_edge_embed_is_picklable_and_lazy(minilm_int8: Path) -> None:
    fn = EdgeEmbed(minilm_int8, threads=1)
    assert fn._embedder is None  # nothing loaded until the first batch
    batch = {"id": np.array(["a", "b"]), "text": np.array(["first text", "second one"], dtype=object)}
    out = fn(batch)
    assert out["vector"].shape == (2, 384) and list(out["id"]) == ["a", "b"]
    copy = pickle.loads(pickle.dumps(fn))
    assert copy._embedder is None
    np.testing.assert_allclose(copy(batch)["vector"], out["vector"], atol=1e-6)
    emb = Embedder.load(minilm_int8, threads=1)
    np.testing.assert_allclose(out["vector"], emb.embed(["first text", "second one"]), atol=1e-6)
    with pytest.raises(InputError, match="no 'body' column"):
        EdgeEmbed(minilm_int8, text_column="body")(batch)
    with pytest.raises(InputError, match="expected a path"):
        EdgeEmbed(42)


def test_corpus_job_on_ray_matches_the_local_engine(local_ray: Any, minilm_fp32: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "docs.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for r in msmarco_records()[:200]:
            f.write(json.dumps({"_id": r["_id"], "text": r["text"]}) + "\n")
    args = ["-m", str(minilm_fp32), "--shard-size", "50", "--no-progress"]
    assert main(["embed-corpus", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2",
                 "--threads", "1", *args]) == 0
    assert main(["embed-corpus", str(src), "-o", str(tmp_path / "local"), "--workers", "1", *args]) == 0
    a, b = pq.read_table(tmp_path / "ray"), pq.read_table(tmp_path / "local")
    assert a.schema == b.schema and a.column("id").to_pylist() == b.column("id").to_pylist()
    va = np.asarray(a.column("vector").combine_chunks().flatten()).reshape(200, -1)
    vb = np.asarray(b.column("vector").combine_chunks().flatten()).reshape(200, -1)
    assert np.sum(va * vb, axis=1).min() >= 0.9999
    job = json.loads((tmp_path / "ray" / JOB_FILE).read_text())
    assert job["complete"] and job["settings"]["engine"] == "ray" and len(job["done"]) == 4
    capsys.readouterr()
    # a job started on one engine is resumed only on it: their batches differ
    assert main(["embed-corpus", str(src), "-o", str(tmp_path / "ray"), "--workers", "1", *args]) == 1
    assert "engine='ray'" in capsys.readouterr().err
