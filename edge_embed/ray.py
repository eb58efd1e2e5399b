"""Ray Data integration: a callable class for ``Dataset.map_batches``, and the corpus job on Ray.

    import ray
    from edge_embed.ray import EdgeEmbed

    ds = ray.data.read_parquet("docs.parquet")
    ds = ds.map_batches(EdgeEmbed, fn_constructor_kwargs={"bundle": "models/minilm-int8"},
                        concurrency=4, batch_size=1024)   # adds a "vector" column

Each actor loads the bundle once, on its first batch: from a path every node can read, or from
a packed ``.edgeembed`` file's bytes (pass ``ray.put(data)`` so the bytes travel once through the
object store). Deliberately does not schedule anything: Ray Data places the actors, streams the
blocks and retries failed tasks; ``embed_corpus_on_ray`` only reads the input and writes the
shards the way the local corpus job does. Needs the ``ray`` extra; imports ray only when used.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .corpus import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_SHARD_SIZE,
    JOB_FILE,
    JobSummary,
    Progress,
    _dump,
    _Shard,
    _write_atomic,
    _write_shard,
    default_parallelism,
    prepare_job,
    require_pyarrow,
    shard_name,
)
from .embedder import Embedder
from .errors import InputError

__all__ = ["EdgeEmbed", "embed_corpus_on_ray", "require_ray"]


def require_ray() -> Any:
    """ray with Ray Data, or an ImportError that names the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data ships as an extra of ray
    except ImportError:
        raise ImportError("Ray Data is not installed; install it with: pip install 'edge-embed[ray]'") from None
    return ray


def _is_object_ref(value: Any) -> bool:
    return type(value).__name__ == "ObjectRef" and type(value).__module__.startswith("ray")


class EdgeEmbed:
    """Embeds a batch's text column into a vector column; Ray Data builds one per actor.

    bundle: a bundle directory or packed ``.edgeembed`` path readable on every node, the packed
    file's bytes, or an ObjectRef to those bytes. The batch may be a dict of numpy arrays (Ray's
    default format: the vectors come back as a 2-D float32 array), a pyarrow.Table (a fixed-size
    list of float32) or a pandas.DataFrame (one float32 array per row). threads: ONNX Runtime
    threads, by default the CPUs Ray gave the actor (``num_cpus``, 1 unless set).
    """

    def __init__(self, bundle: str | os.PathLike[str] | bytes | Any, *, text_column: str = "text",
                 vector_column: str = "vector", prompt: str | None = None, threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 columns: list[str] | None = None) -> None:
        if not (isinstance(bundle, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_object_ref(bundle)):
            raise InputError(f"bundle: expected a path, the bytes of a packed bundle or an ObjectRef to them, "
                             f"got {type(bundle).__name__}")
        self.bundle = bundle if not isinstance(bundle, os.PathLike) else os.fspath(bundle)
        self.text_column, self.vector_column = text_column, vector_column
        self.prompt, self.threads = prompt, threads
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.columns = columns  # keep only these input columns (default: all)
        self._embedder: Embedder | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_embedder"] = None  # a session is not picklable; every copy loads its own
        return state

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            source = self.bundle
            if _is_object_ref(source):
                source = require_ray().get(source)
            if isinstance(source, (bytearray, memoryview)):
                source = bytes(source)
            self._embedder = Embedder.load(source, threads=self._threads())
        return self._embedder

    def _threads(self) -> int | None:
        if self.threads is not None:
            return self.threads
        try:
            import ray

            if ray.is_initialized():
                context: Any = ray.get_runtime_context()  # untyped in ray: Any with or without it installed
                cpus = context.get_assigned_resources().get("CPU")
                return max(1, int(cpus)) if cpus else 1
        except ImportError:
            pass
        return None

    def _vectors(self, texts: Any, n: int) -> np.ndarray:
        items = texts.tolist() if hasattr(texts, "tolist") else list(texts)
        if len(items) != n:
            raise InputError(f"{self.text_column}: expected one text per row, got {len(items)} for {n} rows")
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise InputError(f"{self.text_column}[{i}]: expected a string, got {type(t).__name__}")
        return self.embedder.embed_detailed(items, prompt=self.prompt, batch_size=self.batch_size,
                                            max_batch_tokens=self.max_batch_tokens).vectors

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, dict):
            if self.text_column not in batch:
                raise InputError(f"batch: no {self.text_column!r} column (columns: {', '.join(batch)}); "
                                 "pass text_column= in fn_constructor_kwargs")
            texts = batch[self.text_column]
            out = {k: v for k, v in batch.items() if self.columns is None or k in self.columns}
            out[self.vector_column] = self._vectors(texts, len(texts))
            return out
        names = list(batch.column_names) if hasattr(batch, "column_names") else list(batch.columns)
        if self.text_column not in names:
            raise InputError(f"batch: no {self.text_column!r} column (columns: {', '.join(map(str, names))}); "
                             "pass text_column= in fn_constructor_kwargs")
        keep = [c for c in names if self.columns is None or c in self.columns]
        if hasattr(batch, "column_names"):  # pyarrow.Table
            pa = require_pyarrow()
            vectors = self._vectors(batch.column(self.text_column).to_pylist(), batch.num_rows)
            flat = pa.array(vectors.reshape(-1))
            table = batch.select(keep)
            return table.append_column(self.vector_column, pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))
        vectors = self._vectors(batch[self.text_column], len(batch))
        frame = batch[keep].copy()
        frame[self.vector_column] = list(vectors)
        return frame


def _read(ray: Any, src: Any) -> Any:
    path = str(src.path.resolve())
    # the job already chose the format (Ray would skip .ndjson, .pq); reading takes no CPU of its own,
    # or actors holding every CPU would leave none for the read tasks and the job would never start
    any_name: dict[str, Any] = {"file_extensions": None, "num_cpus": 0}
    if src.format == "parquet":
        return ray.data.read_parquet(path, **any_name)
    if src.format == "csv":
        pa = require_pyarrow()
        names = [src.text_field] + ([src.id_field] if src.id_field else [])
        return ray.data.read_csv(path, convert_options=pa.csv.ConvertOptions(
            column_types={k: pa.string() for k in names}), **any_name)
    if src.format == "jsonl":
        # parsed with json like the local reader: Ray's JSON reader turns digit-string ids into integers
        lines = ray.data.read_text(path, drop_empty_lines=True, num_cpus=0)
        return lines.map_batches(_JsonFields(src.text_field, src.id_field), num_cpus=0)
    return ray.data.read_text(path, drop_empty_lines=False, num_cpus=0)


class _JsonFields:
    """JSON lines -> the text and id columns, values as json gives them (picklable for Ray)."""

    def __init__(self, text_field: str, id_field: str | None) -> None:
        self.text_field, self.id_field = text_field, id_field

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        recs = [json.loads(line) for line in batch["text"] if line.strip()]
        out = {self.text_field: np.array([r.get(self.text_field) for r in recs], dtype=object)}
        if self.id_field:
            out[self.id_field] = np.array([r.get(self.id_field) for r in recs], dtype=object)
        return out


def embed_corpus_on_ray(input: str | os.PathLike[str], outdir: str | os.PathLike[str], *,
                        bundle: str | os.PathLike[str], address: str | None = None, text_field: str = "text",
                        id_field: str | None = None, input_format: str | None = None, prompt: str | None = None,
                        workers: int | None = None, threads: int | None = None,
                        shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
                        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, precisions: Sequence[str] = (),
                        progress: bool | None = None, log: IO[str] | None = None) -> JobSummary:
    """The corpus job with Ray Data as the engine: read, map_batches(EdgeEmbed), shards written here.

    The input is read by Ray (every node must reach INPUT and the bundle by the same path); the
    driver writes the shards in input order as ``embed_corpus`` does, with the same job manifest, so
    a rerun continues after the shards done. Ray chooses where its batches start, so vectors can
    differ from the local engine's in the last bits (batching), not in order or ids; the job
    manifest records the engine and a job is resumed only with the one it started with.
    """
    log = log if log is not None else sys.stderr
    ray = require_ray()
    src, out, job, ranges = prepare_job(input, outdir, bundle=bundle, text_field=text_field, id_field=id_field,
                                        input_format=input_format, prompt=prompt, shard_size=shard_size,
                                        batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                        precisions=precisions, engine="ray", log=log)
    job_path = out / JOB_FILE
    done = [d["shard"] for d in job["done"]]
    if done != list(range(len(done))):
        raise InputError(f"{job_path}: the shards done are not a prefix ({done}); resume with --engine local")
    skip = sum(d["rows"] for d in job["done"])
    t0 = time.perf_counter()
    _write_atomic(job_path, _dump(job))
    if skip < src.rows:
        started = not ray.is_initialized()
        if started:
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # shards are written in input order
        if progress is False or not sys.stderr.isatty():
            ctx.enable_progress_bars = False
        n_workers, n_threads = default_parallelism(workers, threads) if address is None else (workers or 2,
                                                                                               threads or 1)
        ds = _read(ray, src)
        if src.format == "text" and text_field != "text":  # Ray reads lines into "text"
            ds = ds.rename_columns({"text": text_field})
        if skip:
            # Ray Data has no offset: the input (not the embedding) is materialised once to cut it
            ds = ds.split_at_indices([skip])[1]
        cols = [text_field] + ([src.id_field] if src.id_field else [])
        ds = ds.select_columns(cols).map_batches(
            EdgeEmbed, fn_constructor_kwargs={"bundle": str(Path(bundle).resolve()), "text_column": text_field,
                                              "prompt": prompt, "threads": n_threads, "batch_size": batch_size,
                                              "max_batch_tokens": max_batch_tokens},
            concurrency=n_workers, num_cpus=n_threads, batch_size=shard_size, batch_format="pyarrow")
        bar = Progress(src.rows, skip, log, live=progress, enabled=progress is not False)
        index, row = len(done), skip
        try:
            for batch in ds.iter_batches(batch_size=shard_size, batch_format="pyarrow"):
                n = batch.num_rows
                # without an id field the ids are row numbers, counted here since the order is kept
                ids = batch.column(src.id_field).to_pylist() if src.id_field else list(range(row, row + n))
                vectors = np.asarray(batch.column("vector").combine_chunks().flatten(), dtype=np.float32)
                shard = _Shard(index, ids, [])
                _write_shard(out, shard, vectors.reshape(n, -1), job, ranges)
                job["done"].append({"shard": index, "rows": n})
                _write_atomic(job_path, _dump(job))
                bar.update(n)
                index, row = index + 1, row + n
        except KeyboardInterrupt:
            bar.close()
            log.write(f"embed-corpus: stopped with {len(job['done'])} of {job['shards']} shards in {out}; "
                      "run the same command again to continue\n")
            raise
        finally:
            if started:
                ray.shutdown()
        bar.close()
    job["complete"] = True
    _write_atomic(job_path, _dump(job))
    seconds = time.perf_counter() - t0
    if progress is not False:
        log.write(f"embed-corpus: {src.rows} texts in {job['shards']} shards in {out} "
                  f"({src.rows - skip} embedded now on Ray in {seconds:.1f} s)\n")
    return JobSummary(out, src.rows, job["shards"], src.rows - skip, seconds, 0,
                      [out / shard_name(i) for i in range(job["shards"])])
