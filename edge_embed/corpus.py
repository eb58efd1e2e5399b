"""The corpus job: a document collection in, numbered Parquet shards of vectors out, resumably.

``edge-embed embed-corpus INPUT -o OUTDIR`` reads JSONL, CSV, Parquet or plain text, cuts the
rows, in input order, into shards of ``shard_size`` rows and embeds each shard on a worker
process (each with its own ONNX Runtime session and thread count). A shard is written as
``part-NNNNN.parquet`` (columns ``id`` and ``vector``, a fixed-size list of float32) under a
hidden temporary name and renamed when complete; the job manifest ``_job.json`` (written the
same way) records what the output is made from (input fingerprint, bundle digest, the settings
that change vectors) and the shards done. The same command run again skips the done shards.
A shard's rows and its batches depend only on the recorded settings, so an interrupted and
resumed job writes the same vectors as an uninterrupted one. Readers of the directory
(pyarrow.dataset, pandas, Ray, Spark) skip the ``_`` and ``.`` names and see only the shards.

Deliberately does not: split long documents (texts past the bundle's max_length are truncated,
as by ``embed``, and counted), deduplicate texts, or schedule work across machines: that is
Ray's job (``--engine ray``, see :mod:`edge_embed.ray`). pyarrow (the ``corpus`` extra) is
imported only when a job runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from . import __version__
from .archive import is_archive, read_archive
from .embedder import Embedder
from .errors import BundleError, EdgeEmbedError, InputError
from .manifest import RANGES_KEY, Manifest, sha256_file
from .precision import PRECISIONS, quantize, ranges_array

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_MAX_BATCH_TOKENS", "DEFAULT_SHARD_SIZE", "INPUT_FORMATS", "JOB_FILE",
    "JobSummary", "default_parallelism", "embed_corpus", "require_pyarrow",
]

JOB_FILE = "_job.json"
JOB_FORMAT = "edge-embed.corpus-job/1"
INPUT_FORMATS = ("jsonl", "csv", "parquet", "text")
EXTRA_PRECISIONS = tuple(p for p in PRECISIONS if p != "float32")  # each adds a vector_<precision> column
DEFAULT_SHARD_SIZE = 2000
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_TOKENS = 8192
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
             ".txt": "text", ".text": "text"}
_AUTO_IDS = ("id", "_id")


def require_pyarrow() -> Any:
    """pyarrow, or an ImportError that names the extra to install."""
    try:
        import pyarrow
        import pyarrow.csv
        import pyarrow.parquet  # noqa: F401 - the submodules are used through the package
    except ImportError:
        raise ImportError("the corpus job reads and writes Parquet with pyarrow; "
                          "install it with: pip install 'edge-embed[corpus]'") from None
    return pyarrow


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


# ---------------------------------------------------------------------- input
@dataclass
class Source:
    """An input file, its format, the fields read from it and how many rows it has."""

    path: Path
    format: str
    text_field: str
    id_field: str | None  # None: ids are row numbers (0-based)
    id_type: str  # "int64" or "string"
    rows: int

    def iter_rows(self) -> Iterator[tuple[Any, str]]:
        if self.format == "jsonl":
            return self._jsonl()
        if self.format == "text":
            return self._text()
        return self._arrow()

    def _jsonl(self) -> Iterator[tuple[Any, str]]:
        want: type = int if self.id_type == "int64" else str
        with open(self.path, "rb") as f:
            row = 0
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                rec = _json_record(raw, f"{self.path}:{lineno}")
                text = rec.get(self.text_field)
                if not isinstance(text, str):
                    what = "no" if text is None else f"a {type(text).__name__} in the"
                    raise InputError(f"{self.path}:{lineno}: {what} {self.text_field!r} field, expected a string; "
                                     f"fields: {', '.join(rec) or 'none'} (choose one with --text-field)")
                if self.id_field is None:
                    ident: Any = row
                else:
                    ident = rec.get(self.id_field)
                    if type(ident) is not want:
                        raise InputError(f"{self.path}:{lineno}: {self.id_field!r} is {ident!r}; every id must be a "
                                         f"{want.__name__} like the first record's (choose the id with --id-field)")
                row += 1
                yield ident, text

    def _text(self) -> Iterator[tuple[Any, str]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                for row, line in enumerate(f):
                    yield row, line.rstrip("\n")
        except UnicodeDecodeError as e:
            raise InputError(f"{self.path}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    def _arrow(self) -> Iterator[tuple[Any, str]]:
        columns = [self.text_field] + ([self.id_field] if self.id_field else [])
        row = 0
        for batch in _arrow_batches(self, columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if self.id_field else range(row, row + len(texts))
            for ident, text in zip(ids, texts, strict=True):
                if text is None or ident is None:
                    name = self.text_field if text is None else self.id_field
                    raise InputError(f"{self.path}: row {row}: {name!r} is empty (null); "
                                     "every row needs a text and an id")
                row += 1
                yield ident, text


def _json_record(raw: bytes, where: str) -> dict[str, Any]:
    try:
        rec = json.loads(raw)
    except ValueError as e:
        raise InputError(f"{where}: not a JSON line ({e}); the input needs one JSON object per line") from None
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    return rec


def _arrow_batches(src: Source, columns: list[str]) -> Iterator[Any]:
    pa = require_pyarrow()
    if src.format == "parquet":
        yield from pa.parquet.ParquetFile(src.path).iter_batches(batch_size=8192, columns=columns)
        return
    types = {src.text_field: pa.string()} | ({src.id_field: pa.string()} if src.id_field else {})
    opts = pa.csv.ConvertOptions(include_columns=columns, column_types=types)
    try:
        yield from pa.csv.open_csv(src.path, convert_options=opts)
    except pa.ArrowInvalid as e:
        raise InputError(f"{src.path}: not readable as CSV ({e})") from None


def _arrow_columns(path: Path, fmt: str) -> tuple[list[str], dict[str, str]]:
    """Column names and (for Parquet) their types, read from the header or the footer."""
    pa = require_pyarrow()
    try:
        if fmt == "parquet":
            schema = pa.parquet.read_schema(path)
        else:
            with pa.csv.open_csv(path) as reader:
                schema = reader.schema
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not readable as {fmt} ({e})") from None
    return list(schema.names), {f.name: str(f.type) for f in schema}


def _count_rows(path: Path, fmt: str) -> int:
    """Rows the reader will yield, counted the way it reads them (for progress and the shard count)."""
    if fmt == "parquet":
        return int(require_pyarrow().parquet.ParquetFile(path).metadata.num_rows)
    if fmt == "csv":
        pa = require_pyarrow()
        try:
            with pa.csv.open_csv(path) as reader:
                return sum(b.num_rows for b in reader)
        except pa.ArrowInvalid as e:
            raise InputError(f"{path}: not readable as CSV ({e})") from None
    if fmt == "text":
        with open(path, encoding="utf-8", errors="replace") as t:
            return sum(1 for _ in t)
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def open_source(path: str | os.PathLike[str], fmt: str | None, text_field: str, id_field: str | None) -> Source:
    """Check the input and resolve its format and fields: every error here comes before any embedding."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such input file")
    if fmt is None:
        fmt = _SUFFIXES.get(p.suffix.lower())
        if fmt is None:
            raise InputError(f"{p}: cannot tell the input format from the name; give --input-format "
                             f"({', '.join(INPUT_FORMATS)})")
    if fmt not in INPUT_FORMATS:
        raise InputError(f"--input-format: expected one of {INPUT_FORMATS}, got {fmt!r}")
    id_type = "string"
    if fmt == "text":
        if id_field is not None:
            raise InputError("--id-field: a plain text input has no fields; its ids are line numbers (0-based)")
        id_type = "int64"
    elif fmt == "jsonl":
        first = _first_json(p)
        fields = list(first) if first is not None else [text_field]
        if text_field not in fields:
            raise InputError(f"{p}: the first record has no {text_field!r} field (fields: {', '.join(fields)}); "
                             "choose the text with --text-field")
        id_field = _pick_id(p, fields, id_field)
        if id_field is None or first is None:
            id_type = "int64"
        elif isinstance(first[id_field], bool) or not isinstance(first[id_field], (int, str)):
            raise InputError(f"{p}: the first record's {id_field!r} is {first[id_field]!r}; ids must be strings "
                             "or integers")
        else:
            id_type = "int64" if isinstance(first[id_field], int) else "string"
    else:
        names, types = _arrow_columns(p, fmt)
        if text_field not in names:
            raise InputError(f"{p}: no {text_field!r} column (columns: {', '.join(names)}); "
                             "choose the text with --text-field")
        if fmt == "parquet" and types[text_field] not in ("string", "large_string"):
            raise InputError(f"{p}: column {text_field!r} holds {types[text_field]}, expected strings")
        id_field = _pick_id(p, names, id_field)
        if id_field is None:
            id_type = "int64"
        elif fmt == "parquet":
            id_type = types[id_field]
            if id_type not in ("string", "large_string", "int64", "int32"):
                raise InputError(f"{p}: id column {id_field!r} holds {id_type}; ids must be strings or integers")
    return Source(p, fmt, text_field, id_field, id_type, _count_rows(p, fmt))


def _first_json(p: Path) -> dict[str, Any] | None:
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                return _json_record(raw, f"{p}:{lineno}")
    return None


def _pick_id(p: Path, fields: list[str], id_field: str | None) -> str | None:
    if id_field is not None:
        if id_field not in fields:
            raise InputError(f"{p}: no {id_field!r} field (fields: {', '.join(fields)}); choose the id with --id-field")
        return id_field
    return next((f for f in _AUTO_IDS if f in fields), None)


# ---------------------------------------------------------------------- fingerprints and the job manifest
def input_fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def bundle_manifest(bundle: str | os.PathLike[str]) -> Manifest:
    if is_archive(bundle):
        return read_archive(bundle, keep=lambda _: ()).manifest
    return Manifest.read(bundle)


def bundle_digest(m: Manifest) -> str:
    """sha256 of the manifest's canonical JSON: it names every file's sha256, so it pins the bundle."""
    return hashlib.sha256(json.dumps(m.to_dict(), sort_keys=True).encode()).hexdigest()


def _same_input(recorded: dict[str, Any], path: Path) -> bool:
    st = path.stat()
    if recorded.get("bytes") != st.st_size:
        return False
    if recorded.get("path") == str(path.resolve()) and recorded.get("mtime_ns") == st.st_mtime_ns:
        return True  # unchanged since the recorded hash: no need to read it again
    return bool(recorded.get("sha256") == sha256_file(path))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _load_job(path: Path) -> dict[str, Any]:
    try:
        job = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable job manifest ({e}); delete the output directory to start over, "
                         "or choose another -o") from None
    ok = (isinstance(job, dict) and job.get("format") == JOB_FORMAT
          and all(isinstance(job.get(k), dict) for k in ("input", "bundle", "settings"))
          and isinstance(job.get("done"), list)
          and all(isinstance(d, dict) and isinstance(d.get("shard"), int) and isinstance(d.get("rows"), int)
                  for d in job["done"]))
    if not ok:
        got = job.get("format") if isinstance(job, dict) else None
        raise InputError(f"{path}: not an edge-embed corpus job manifest (format {got!r}, expected {JOB_FORMAT!r}, "
                         "with input, bundle, settings and done); delete the output directory to start over, "
                         "or choose another -o")
    out: dict[str, Any] = job
    return out


def _foreign(job: dict[str, Any], planned: dict[str, Any], src: Path) -> str | None:
    """What differs between a recorded job and this run's, or None when it is the same job."""
    if job["bundle"].get("digest") != planned["bundle"]["digest"]:
        return f"made with another bundle ({job['bundle'].get('path')})"
    for key, value in planned["settings"].items():
        if job["settings"].get(key) != value:
            return f"made with {key}={job['settings'].get(key)!r}, this run has {value!r}"
    if not _same_input(job["input"], src):
        return f"made from another input ({job['input'].get('path')}, {job['input'].get('bytes')} bytes)"
    return None


# ---------------------------------------------------------------------- workers
_worker: Embedder | None = None


def _watch_parent(parent: int) -> None:
    # a worker outlives a SIGKILLed job otherwise, blocked on the task queue for good
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(bundle: str, threads: int | None, parent: int) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job process handles Ctrl-C and stops the workers
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    _worker = Embedder.load(bundle, threads=threads)


def _embed_shard(texts: list[str], prompt: str | None, batch_size: int,
                 max_batch_tokens: int) -> tuple[npt.NDArray[np.float32], int]:
    if _worker is None:
        raise RuntimeError("worker not initialised")
    res = _worker.embed_detailed(texts, prompt=prompt, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    return res.vectors, res.truncated


def default_parallelism(workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, threads per worker): by default one single-threaded worker per physical core."""
    if (workers is not None and workers < 1) or (threads is not None and threads < 1):  # before dividing by them
        raise InputError(f"--workers/--threads: expected positive integers, got {workers} and {threads}")
    cores = _physical_cores()
    if workers is None and threads is None:
        threads = 1
    if workers is None:
        workers = max(1, cores // (threads or 1))
    if threads is None:
        threads = max(1, cores // workers)
    return workers, threads


def _physical_cores() -> int:
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
        total = psutil.cpu_count(logical=True) or logical
        # scale to the CPUs this process may use (containers and taskset narrow the set)
        return max(1, min(physical, logical * physical // total))
    except ImportError:
        return max(1, logical)


# ---------------------------------------------------------------------- progress
class Progress:
    """Rate and ETA on stderr: rewritten in place on a terminal, otherwise one line per tenth."""

    def __init__(self, total: int, already: int, stream: IO[str] | None = None, live: bool | None = None,
                 enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.enabled = enabled
        self.total, self.already, self.done = total, already, 0
        self.t0 = time.perf_counter()
        self.tenth = (10 * already // total) if total else 10

    def update(self, rows: int) -> None:
        self.done += rows
        if not self.enabled:
            return
        at = self.already + self.done
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - at) / rate if rate > 0 else 0.0
        pct = 100 * at / self.total if self.total else 100.0
        line = (f"embed-corpus: {at}/{self.total} texts ({pct:.0f}%), {rate:.0f} texts/s, "
                f"ETA {_clock(eta)}")
        if self.live:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            return
        tenth = 10 * at // self.total if self.total else 10
        if tenth > self.tenth:
            self.tenth = tenth
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.live and self.done:
            self.stream.write("\n")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# ---------------------------------------------------------------------- the job
@dataclass
class JobSummary:
    outdir: Path
    rows: int
    shards: int
    embedded: int  # rows embedded by this run (the rest were done before)
    seconds: float
    truncated: int
    files: list[Path] = field(default_factory=list)


@dataclass
class _Shard:
    index: int
    ids: list[Any]
    texts: list[str]


def _shards(src: Source, size: int, skip: set[int]) -> Iterator[_Shard]:
    ids: list[Any] = []
    texts: list[str] = []
    index = 0
    for ident, text in src.iter_rows():
        ids.append(ident)
        texts.append(text)
        if len(texts) == size:
            if index not in skip:
                yield _Shard(index, ids, texts)
            ids, texts, index = [], [], index + 1
    if texts and index not in skip:
        yield _Shard(index, ids, texts)


def _fixed_lists(pa: Any, rows: npt.NDArray[Any]) -> Any:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(rows).reshape(-1)), rows.shape[1])


def _write_shard(outdir: Path, shard: _Shard, vectors: npt.NDArray[np.float32], job: dict[str, Any],
                 ranges: npt.NDArray[np.float32] | None) -> None:
    pa = require_pyarrow()
    ids = pa.array(shard.ids, type=getattr(pa, job["settings"]["id_type"])())  # string, large_string, int64, int32
    columns = {"id": ids, "vector": _fixed_lists(pa, vectors.astype(np.float32, copy=False))}
    for precision in job["settings"]["precisions"]:  # the same codes Embedder.encode(precision=...) gives
        columns[f"vector_{precision}"] = _fixed_lists(pa, quantize(vectors, precision, ranges))
    table = pa.table(columns)
    final = outdir / shard_name(shard.index)
    tmp = outdir / f".{final.name}.tmp"
    with open(tmp, "wb") as f:
        pa.parquet.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _shard_ok(outdir: Path, entry: dict[str, Any]) -> bool:
    path = outdir / shard_name(entry["shard"])
    try:
        rows = int(require_pyarrow().parquet.ParquetFile(path).metadata.num_rows)
    except Exception:  # noqa: BLE001 - any unreadable shard is embedded again
        return False
    return bool(rows == entry["rows"])


def prepare_job(input: str | os.PathLike[str], outdir: str | os.PathLike[str], *, bundle: str | os.PathLike[str],
                text_field: str = "text", id_field: str | None = None, input_format: str | None = None,
                prompt: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
                max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, precisions: Sequence[str] = (),
                engine: str = "local", log: IO[str] | None = None,
                ) -> tuple[Source, Path, dict[str, Any], npt.NDArray[np.float32] | None]:
    """Check everything, load or start the job manifest.

    Returns (source, outdir, job with its done shards checked, the bundle's int8 ranges if needed).
    """
    require_pyarrow()
    log = log if log is not None else sys.stderr
    for name, value in (("--shard-size", shard_size), ("--batch-size", batch_size),
                        ("--max-batch-tokens", max_batch_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name}: expected a positive integer, got {value!r}")
    src = open_source(input, input_format, text_field, id_field)
    m = bundle_manifest(bundle)
    precisions = list(dict.fromkeys(precisions))
    for p in precisions:
        if p not in EXTRA_PRECISIONS:
            raise InputError(f"--precision: expected one of {', '.join(EXTRA_PRECISIONS)}, got {p!r}")
    ranges = None
    if {"int8", "uint8"} & set(precisions):
        if RANGES_KEY not in m.extra:
            raise BundleError(f"{bundle}: the manifest has no {RANGES_KEY!r} (built by an older edge-embed); "
                              "rebuild the bundle for int8/uint8 columns, or use --precision binary/ubinary")
        ranges = ranges_array(m.extra[RANGES_KEY])
    if prompt is not None and prompt not in m.prompts:
        known = ", ".join(sorted(m.prompts)) or "none"
        raise InputError(f"--prompt: {prompt!r} is not in this bundle's prompts (known: {known})")
    out = Path(outdir)
    if src.path.resolve().parent == out.resolve() or out.resolve() in src.path.resolve().parents:
        raise InputError(f"-o {out}: the input lies inside the output directory; choose another -o")
    planned: dict[str, Any] = {
        "format": JOB_FORMAT,
        "input": {**input_fingerprint(src.path), "format": src.format, "rows": src.rows},
        "bundle": {"path": str(Path(bundle).resolve()), "digest": bundle_digest(m),
                   "model_id": m.source.get("model_id"), "dim": m.dim},
        "settings": {"input_format": src.format, "text_field": src.text_field, "id_field": src.id_field,
                     "id_type": src.id_type, "prompt": prompt, "shard_size": shard_size, "batch_size": batch_size,
                     "max_batch_tokens": max_batch_tokens, "precisions": precisions, "engine": engine},
        "columns": {"id": src.id_type, "vector": f"fixed_size_list<float32>[{m.dim}]",
                    **{f"vector_{p}": _code_type(p, m.dim) for p in precisions}},
        "shards": -(-src.rows // shard_size),
        "done": [],
        "complete": False,
        "edge_embed": __version__,
    }
    job_path = out / JOB_FILE
    if job_path.exists():
        job = _load_job(job_path)
        why = _foreign(job, planned, src.path)
        if why:
            raise InputError(f"{job_path}: this output directory belongs to another job, {why}; "
                             "choose another -o, or delete the directory to start over")
        good = [d for d in job["done"] if _shard_ok(out, d)]
        for d in job["done"]:
            if d not in good:
                log.write(f"embed-corpus: {shard_name(d['shard'])} is missing or damaged; embedding it again\n")
        planned["done"] = sorted(good, key=lambda d: d["shard"])
        planned["input"] = {**planned["input"], "path": str(src.path.resolve())}
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"-o {out}: exists and is not a corpus job (no {JOB_FILE}); choose a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".part-*.tmp"):  # shards a killed run did not finish
        stale.unlink()
    return src, out, planned, ranges


def _code_type(precision: str, dim: int) -> str:
    width = dim // 8 if precision.endswith("binary") else dim
    return f"fixed_size_list<{'uint8' if precision.startswith('u') else 'int8'}>[{width}]"


def embed_corpus(input: str | os.PathLike[str], outdir: str | os.PathLike[str], *, bundle: str | os.PathLike[str],
                 text_field: str = "text", id_field: str | None = None, input_format: str | None = None,
                 prompt: str | None = None, workers: int | None = None, threads: int | None = None,
                 shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, precisions: Sequence[str] = (),
                 progress: bool | None = None, log: IO[str] | None = None) -> JobSummary:
    """Embed INPUT into OUTDIR's Parquet shards on ``workers`` processes; resumes a job already there.

    precisions: also store the vectors as these codes (int8, uint8, binary, ubinary), one
    ``vector_<precision>`` column each, as ``Embedder.encode(precision=...)`` computes them.
    progress: None shows it live on a terminal and one line per tenth otherwise; False hides it.
    """
    log = log if log is not None else sys.stderr
    src, out, job, ranges = prepare_job(input, outdir, bundle=bundle, text_field=text_field, id_field=id_field,
                                        input_format=input_format, prompt=prompt, shard_size=shard_size,
                                        batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                        precisions=precisions, log=log)
    n_workers, n_threads = default_parallelism(workers, threads)
    job_path = out / JOB_FILE
    done = {d["shard"] for d in job["done"]}
    already = sum(d["rows"] for d in job["done"])
    t0 = time.perf_counter()
    quiet = progress is False
    bar = Progress(src.rows, already, log, live=progress, enabled=not quiet)

    def record(shard: _Shard, vectors: npt.NDArray[np.float32]) -> None:
        _write_shard(out, shard, vectors, job, ranges)
        job["done"].append({"shard": shard.index, "rows": len(shard.ids)})
        job["done"].sort(key=lambda d: d["shard"])
        _write_atomic(job_path, _dump(job))
        bar.update(len(shard.ids))

    _write_atomic(job_path, _dump(job))
    truncated = 0
    pending = _shards(src, shard_size, done)
    try:
        if len(done) < job["shards"]:
            if n_workers == 1:
                truncated = _run_inline(pending, bundle, n_threads, job, record)
            else:
                truncated = _run_pool(pending, bundle, n_workers, n_threads, job, record)
    except KeyboardInterrupt:
        bar.close()
        log.write(f"embed-corpus: stopped with {len(job['done'])} of {job['shards']} shards in {out}; "
                  "run the same command again to continue\n")
        raise
    bar.close()
    job["complete"] = True
    _write_atomic(job_path, _dump(job))
    seconds = time.perf_counter() - t0
    embedded = src.rows - already
    if not quiet:
        rate = f", {embedded / seconds:.0f} texts/s" if embedded and seconds > 0 else ""
        log.write(f"embed-corpus: {src.rows} texts in {job['shards']} shards in {out} "
                  f"({embedded} embedded now in {seconds:.1f} s{rate}, "
                  f"{n_workers} worker(s) x {n_threads} thread(s))\n")
    files = [out / shard_name(i) for i in range(job["shards"])]
    return JobSummary(out, src.rows, job["shards"], embedded, seconds, truncated, files)


def _dump(job: dict[str, Any]) -> bytes:
    return (json.dumps(job, indent=1) + "\n").encode()


def _run_inline(pending: Iterator[_Shard], bundle: str | os.PathLike[str], threads: int, job: dict[str, Any],
                record: Any) -> int:
    settings = job["settings"]
    emb = Embedder.load(bundle, threads=threads)
    truncated = 0
    for shard in pending:
        res = emb.embed_detailed(shard.texts, prompt=settings["prompt"], batch_size=settings["batch_size"],
                                 max_batch_tokens=settings["max_batch_tokens"])
        truncated += res.truncated
        record(shard, res.vectors)
    return truncated


def _run_pool(pending: Iterator[_Shard], bundle: str | os.PathLike[str], workers: int, threads: int,
              job: dict[str, Any], record: Any) -> int:
    settings = job["settings"]
    args = (settings["prompt"], settings["batch_size"], settings["max_batch_tokens"])
    ctx = multiprocessing.get_context("spawn")  # no inherited threads or sessions; the same on every OS
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(str(bundle), threads, os.getpid()))
    inflight: deque[tuple[_Shard, Future[tuple[npt.NDArray[np.float32], int]]]] = deque()
    truncated = 0
    try:
        # two shards per worker in flight: one running, one queued; shards are written in order
        for shard in pending:
            inflight.append((shard, pool.submit(_embed_shard, shard.texts, *args)))
            if len(inflight) >= 2 * workers:
                truncated += _finish(inflight.popleft(), record)
        while inflight:
            truncated += _finish(inflight.popleft(), record)
    except BaseException as e:
        # a running shard would otherwise finish first (Python 3.14 adds terminate_workers for this);
        # shutdown() drops the executor's process table, so it is read first
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        if isinstance(e, BrokenProcessPool):
            raise EdgeEmbedError(f"embed-corpus: a worker process died (out of memory?) after {len(job['done'])} "
                                 f"of {job['shards']} shards; run the same command again to continue, with fewer "
                                 "--workers or a smaller --max-batch-tokens if it happens again") from None
        raise
    pool.shutdown()
    return truncated


def _finish(item: tuple[_Shard, Future[tuple[npt.NDArray[np.float32], int]]], record: Any) -> int:
    shard, fut = item
    vectors, truncated = fut.result()
    record(shard, vectors)
    return truncated
