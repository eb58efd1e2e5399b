"""The ``edge-embed`` command line: embed, info, serve, and the build verbs.

Build verbs import the ``quantize`` package, and ``serve`` the server, only when run, so
the runtime CLI works on a device with the three runtime dependencies. Every EdgeEmbedError becomes one line on
stderr and exit code 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import __version__
from .archive import is_archive, pack, read_archive
from .cache import HOME_ENV, cache_dir, cache_name
from .embedder import LONG_TEXT, MODEL_FORMATS, Embedder
from .errors import EdgeEmbedError, InputError, UsageError
from .manifest import Manifest
from .progress import Progress

__all__ = ["main"]

MODEL_ENV = "EDGE_EMBED_MODEL"
DIGEST_ENV = "EDGE_EMBED_DIGEST"
Handler = Callable[[argparse.Namespace], int]


def _err(msg: str) -> None:
    sys.stderr.write(f"edge-embed: error: {msg}\n")


@contextlib.contextmanager
def quiet_third_party(verbose: bool) -> Iterator[None]:
    """Keep torch / transformers / optimum / onnxruntime warnings and log advice off stderr unless verbose.

    The build's own progress lines are written directly, not logged, so they stay; so do
    warnings raised by edge_embed and quantize themselves.
    """
    if verbose:
        yield
        return
    # transformers and optimum set their loggers' levels when first used, so levels set here
    # would not hold: logging is disabled up to WARNING instead (build stages do not log)
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("default", module=r"(edge_embed|quantize)(\.|$)")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


# ---------------------------------------------------------------------- embed
def _read_lines(path: str) -> Iterator[str]:
    """One record per line of a UTF-8 file or stdin, split on ``\n`` only (a lone ``\r`` is text).

    A trailing ``\r\n`` or ``\n`` is removed. Bytes are read and decoded line by line, so a
    bad byte is reported with its line number, whatever the locale's encoding is.
    """
    stream: IO[bytes] | IO[str]
    if path == "-":
        # sys.stdin decodes with the locale and splits on \r too: read its bytes when it has them
        stream = getattr(sys.stdin, "buffer", sys.stdin)
    else:
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise InputError(f"{path}: cannot open input ({e.strerror})") from None
    where = "stdin" if path == "-" else path
    try:
        for number, raw in enumerate(stream, 1):
            if isinstance(raw, bytes):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(f"{where}: line {number} is not UTF-8 text ({e.reason} at byte {e.start} "
                                     "of the line); convert the file to UTF-8") from None
            else:
                line = raw
            if line.endswith("\n"):
                line = line[:-1]
                if line.endswith("\r"):
                    line = line[:-1]
            yield line
    except UnicodeDecodeError as e:  # a text stream that decodes itself
        raise InputError(f"{where}: not UTF-8 text ({e.reason}); convert it to UTF-8") from None
    except OSError as e:
        raise InputError(f"{where}: cannot read input ({e.strerror})") from None
    finally:
        if path != "-":
            stream.close()


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that a partial output is removed like on Ctrl-C."""


class AtomicOutput:
    """An output file written to a temporary name beside it and renamed into place when complete.

    An interrupted or failed run leaves the target as it was (absent, or its old contents) and no
    file that looks finished. A target that exists and is not a regular file (``/dev/stdout``,
    a FIFO, ``/dev/full``) is written directly: it cannot be renamed over.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.tmp: str | None = None
        path = Path(target)
        if path.is_dir():
            raise InputError(f"-o {target}: is a directory; name a file to write")
        parent = path.parent
        if not parent.is_dir():
            raise InputError(f"-o {target}: the directory {parent} does not exist; create it first")
        try:
            if path.exists() and not path.is_file():
                self.file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by commit/discard
            else:
                fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=parent)
                self.file = os.fdopen(fd, "wb")
        except OSError as e:
            raise InputError(f"-o {target}: cannot write there ({e.strerror}); choose another path") from None

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            raise InputError(f"-o {self.target}: writing failed ({e.strerror}); nothing was written") from None

    def commit(self) -> None:
        try:
            self.file.flush()
            if self.tmp is not None:
                os.fsync(self.file.fileno())
            self.file.close()
            if self.tmp is not None:
                mode = 0o666 & ~_umask()
                os.chmod(self.tmp, mode)  # mkstemp makes 0600; give the file the mode open() would
                os.replace(self.tmp, self.target)
                self.tmp = None
        except OSError as e:
            raise InputError(f"-o {self.target}: writing failed ({e.strerror}); nothing was written") from None
        finally:
            self.discard()

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.tmp = None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While writing a file, SIGTERM unwinds like Ctrl-C so the partial output is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_argv_texts(texts: Sequence[str]) -> None:
    for i, t in enumerate(texts, 1):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"TEXT {i}: not valid UTF-8 (the argument holds undecodable bytes); "
                             "pass UTF-8 text or use -i FILE") from None


def _count_lines(path: str) -> int | None:
    if path == "-":
        return None
    try:
        with open(path, "rb") as f:
            return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


def _output_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    return "npy" if args.output and args.output.lower().endswith(".npy") else "jsonl"


def cmd_embed(args: argparse.Namespace) -> int:
    if not args.model:
        raise UsageError(f"-m/--model: name a bundle directory (or set ${MODEL_ENV})")
    if args.texts and args.input:
        raise UsageError("give texts as arguments or with -i FILE, not both")
    if not args.texts and not args.input:
        raise UsageError("nothing to embed: give TEXT arguments, or -i FILE (- for stdin)")
    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size: expected a positive integer, got {args.chunk_size}")
    _check_argv_texts(args.texts)
    fmt = _output_format(args)
    if fmt == "npy" and not args.output and sys.stdout.isatty():
        raise UsageError("-f npy writes binary; give -o OUT.npy or redirect stdout")
    if args.output and args.input and args.input != "-" and _same_file(args.input, args.output):
        raise InputError(f"-o {args.output}: is the input file (-i {args.input}); write the output elsewhere")
    emb = Embedder.load(args.model, threads=args.threads, model_format=args.model_format,
                        verify=args.verify, digest=args.digest)
    # the options are checked before any input is read, so an empty input does not hide a bad one
    emb.embed_detailed([], prompt=args.prompt, batch_size=args.batch_size, long_text=args.long_text,
                       stride=args.stride)

    chunks: Iterator[list[str]]
    if args.texts:
        chunks = iter([list(args.texts)])
        total: int | None = len(args.texts)
    else:
        total = _count_lines(args.input)
        chunks = _chunked(_read_lines(args.input), args.chunk_size)
    show = args.progress if args.progress is not None else (bool(args.input) and sys.stderr.isatty())
    progress = Progress("embedding", total, enabled=show)

    out = AtomicOutput(args.output) if args.output else None

    def write(data: str | bytes) -> None:
        if out is not None:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
        elif isinstance(data, str):
            sys.stdout.write(data)
            sys.stdout.flush()
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    vectors: list[np.ndarray] = []
    truncated = index = 0
    try:
        with _sigterm_raises():
            for chunk in chunks:
                res = emb.embed_detailed(chunk, prompt=args.prompt, batch_size=args.batch_size,
                                         long_text=args.long_text, stride=args.stride)
                truncated += res.truncated
                if fmt == "jsonl":
                    lines = []
                    for row in res.vectors:
                        lines.append(json.dumps({"index": index, "embedding": row.tolist()}) + "\n")
                        index += 1
                    write("".join(lines))
                else:
                    vectors.append(res.vectors)
                progress.update(len(chunk))
            if fmt == "npy":
                arr = np.concatenate(vectors) if vectors else np.zeros((0, emb.dim), np.float32)
                buf = io.BytesIO()
                np.save(buf, arr)  # to a buffer: np.save(path) would append .npy to a path without it
                write(buf.getvalue())
            if out is not None:
                out.commit()
    finally:
        progress.close()
        if out is not None:
            out.discard()
    if truncated:
        sys.stderr.write(f"edge-embed: {truncated} text(s) longer than {emb.max_length} tokens were truncated\n")
    return 0


def _chunked(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    buf: list[str] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


# ---------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    if is_archive(args.bundle):
        # keep=nothing: every member is read through (sizes, and sha256 with --verify), none kept
        m = read_archive(args.bundle, verify=args.verify, keep=lambda _: (), digest=args.digest).manifest
    else:
        m = Manifest.read(args.bundle, digest=args.digest)
        if args.verify:
            m.verify(args.bundle)
        else:
            m.check_present(args.bundle)
    if args.json:
        print(json.dumps(m.to_dict(), indent=2))
    else:
        _print_info(m, args.bundle)
    if args.verify:
        print(f"verified: {len(m.files)} files match their sha256")
    if args.self_check:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            emb = Embedder.load(args.bundle, threads=args.threads,
                                self_check="warn" if args.self_check == "warn" else True)
        for w in caught:
            _err(f"warning: {w.message}")
        if emb.self_check_result is not None:
            print(emb.self_check_result.summary(), file=sys.stderr if args.json else sys.stdout)
    return 0


def _quantization_summary(q: dict[str, Any]) -> str:
    """e.g. "auto, avx512-vnni preset, 6 MatMuls with per-token scales, 0 nodes in fp32"."""
    parts = [str(q.get("method", "?"))]
    if q.get("target"):
        parts.append(f"{q['target']} preset")
    if isinstance(q.get("scheme"), str):
        parts.append(f"scheme {q['scheme']}")
    if isinstance(q.get("per_token_nodes"), list) and q["per_token_nodes"]:
        parts.append(f"{len(q['per_token_nodes'])} MatMuls with per-token scales")
    if isinstance(q.get("fp32_nodes"), list) and q.get("method") != "fp32":
        parts.append(f"{len(q['fp32_nodes'])} nodes in fp32")
    return ", ".join(parts)


def _print_info(m: Manifest, path: str) -> None:
    q, v = m.quantization, m.validation
    size = sum(f.bytes for f in m.files.values())
    rows: list[tuple[str, Any]] = [
        ("bundle", path), ("digest", m.digest), ("format", m.format), ("source", m.source.get("model_id", "?")),
        ("revision", m.source.get("revision") or "-"), ("dim", m.dim), ("max_length", m.max_length),
        ("pooling", m.pooling), ("normalize", m.normalize),
        ("prompts", ", ".join(f"{k}={p!r}" for k, p in m.prompts.items()) or "-"),
        ("quantization", _quantization_summary(q)), ("size", f"{size / 1e6:.1f} MB in {len(m.files)} files"),
    ]
    if v:
        figs = ", ".join(f"{k}={v[k]:.4f}" for k in ("cosine_mean", "cosine_p1", "cosine_min", "top10_overlap")
                         if isinstance(v.get(k), float))
        rows.append(("fidelity", f"{figs} ({'passed' if v.get('passed') else 'FAILED'})"))
    rows.append(("built with", ", ".join(f"{k} {val}" for k, val in m.built_with.items())))
    width = max(len(k) for k, _ in rows)
    for k, val in rows:
        print(f"{k:<{width}}  {val}")


# ---------------------------------------------------------------------- pack
def cmd_pack(args: argparse.Namespace) -> int:
    out = pack(args.bundle, args.output, force=args.force)
    size = out.stat().st_size
    print(f"{out}  ({size / 1e6:.1f} MB, verified and packed)")
    return 0


# ---------------------------------------------------------------------- build
def _prompts(items: list[str] | None) -> dict[str, str]:
    prompts: dict[str, str] = {}
    for item in items or []:
        name, sep, prefix = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--prompt: expected NAME=PREFIX, got {item!r}")
        prompts[name.strip()] = prefix
    return prompts


def cmd_convert(args: argparse.Namespace) -> int:
    try:
        from quantize.ort_format import convert_bundle
    except ImportError as e:
        raise InputError(f"convert: {e}") from None
    facts = convert_bundle(args.bundle)
    print(f"{args.bundle}: wrote {facts['model_file']} and {facts['required_operators_and_types']} "
          f"(max abs diff vs ONNX {facts['max_abs_diff_vs_onnx']:.1e})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    if not args.source and not args.from_onnx:
        where = f" for -o {args.output}" if args.output else ""
        raise UsageError(f"build: nothing to build{where}; give a SOURCE (recipe name, model directory or hub id) "
                         "or --from-onnx MODEL_ONNX --tokenizer TOKENIZER_JSON")
    if args.output is None and not args.source:
        raise UsageError("build: --from-onnx needs -o DIR (or a SOURCE name too, whose bundle goes to the cache "
                         f"{cache_dir()})")
    with quiet_third_party(args.verbose):
        try:
            from quantize.bundle import build
            from quantize.plan import BuildPlan
            from quantize.validate import THRESHOLD_KEYS, format_table
        except ImportError as e:
            raise InputError(f"build: {e}") from None
        thresholds = {}
        for item in args.threshold or []:
            key, sep, value = item.partition("=")
            try:
                thresholds[key.strip()] = float(value)
            except ValueError:
                raise UsageError(f"--threshold: expected KEY=NUMBER, got {item!r}") from None
            if not sep:
                raise UsageError(f"--threshold: expected KEY=NUMBER, got {item!r}")
            if key.strip() not in THRESHOLD_KEYS:
                raise UsageError(f"--threshold: unknown key {key.strip()!r}; known: {', '.join(THRESHOLD_KEYS)}")
        if args.output is None:
            args.output = str(cache_dir() / cache_name(args.source))
        plan = BuildPlan(
            out=args.output, source=args.source, from_onnx=args.from_onnx, tokenizer=args.tokenizer,
            method=args.method, scheme=args.scheme, target=args.target, revision=args.revision,
            pooling=args.pooling, max_length=args.max_length, prompts=_prompts(args.prompt),
            thresholds=thresholds, calibration=args.calibration, calibration_method=args.calibration_method,
            calibration_size=args.calibration_size, eval_sts=args.eval_sts, eval_beir=args.eval_beir,
            tuner=args.tuner, tuner_trials=args.tuner_trials, tuner_timeout=args.tuner_timeout,
            probes=args.probes, fp32_out=args.fp32_out, force=args.force, ort_format=args.ort_format)
        report = build(plan)
    if report:
        print(format_table(report))
    print(args.output)
    return 0


# ---------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import run_serve
    except ImportError as e:  # the message names the extra to install
        raise InputError(f"serve: {e}") from None
    return run_serve(args)


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """--digest and --no-verify, for every verb that loads a bundle to embed with it."""
    p.add_argument("--digest", default=os.environ.get(DIGEST_ENV), metavar="sha256:HEX",
                   help=f"refuse the bundle unless its digest (edge-embed info) is this (${DIGEST_ENV})")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="check every file's sha256 before loading (default on; --no-verify checks sizes only)")


def add_serve_parser(sub: Any) -> None:
    """``serve``: flags default to EDGE_EMBED_<FLAG> env vars; the server module loads only when run."""
    env = os.environ.get
    s = sub.add_parser("serve", help="serve a bundle over HTTP: OpenAI /v1/embeddings, TEI /embed (serve extra)")
    s.add_argument("-m", "--model", default=env(MODEL_ENV), help=f"bundle directory (${MODEL_ENV})")
    s.add_argument("--host", default=env("EDGE_EMBED_HOST", "127.0.0.1"), help="address to bind (127.0.0.1)")
    s.add_argument("--port", type=int, default=env("EDGE_EMBED_PORT", "8080"), help="port, 0 for a free one (8080)")
    s.add_argument("--api-key", default=env("EDGE_EMBED_API_KEY"),
                   help="require 'Authorization: Bearer KEY' ($EDGE_EMBED_API_KEY; empty is an error)")
    s.add_argument("--api-key-file", default=env("EDGE_EMBED_API_KEY_FILE"), metavar="PATH",
                   help="read the key from a file, so it is not in the process list ($EDGE_EMBED_API_KEY_FILE)")
    s.add_argument("--max-batch-tokens", type=int, default=env("EDGE_EMBED_MAX_BATCH_TOKENS", "2048"),
                   help="padded tokens per micro-batch (rows x its longest text), taken round-robin from "
                        "concurrent requests (2048)")
    s.add_argument("--max-inputs", type=int, default=env("EDGE_EMBED_MAX_INPUTS", "2048"),
                   help="texts per request (2048)")
    s.add_argument("--max-body-bytes", type=int, default=env("EDGE_EMBED_MAX_BODY_BYTES", str(8 << 20)),
                   help="request body size (8 MiB)")
    s.add_argument("--queue-size", type=int, default=env("EDGE_EMBED_QUEUE_SIZE", "8192"),
                   help="texts waiting for the model before answering 503 (8192)")
    s.add_argument("--batch-size", type=int, default=env("EDGE_EMBED_BATCH_SIZE", "32"),
                   help="texts per micro-batch: one ONNX Runtime run (32)")
    s.add_argument("--batch-wait-ms", type=float, default=env("EDGE_EMBED_BATCH_WAIT_MS", "2"),
                   help="under steady load, wait up to this long for the next micro-batch to fill (2; 0 = off)")
    s.add_argument("--express-tokens", type=int, default=env("EDGE_EMBED_EXPRESS_TOKENS", "256"),
                   help="a request of at most this many padded tokens that arrives while a long request is "
                        "being computed runs at once beside it, in a second inference thread (256; 0 = off)")
    s.add_argument("--long-text", choices=("truncate", "error", "window"),
                   default=env("EDGE_EMBED_LONG_TEXT", "truncate"),
                   help="texts over max_length: truncate, answer 422, or embed overlapping windows and average "
                        "them (a request's truncate field overrides: false = 422, true = truncate)")
    add_load_arguments(s)
    s.add_argument("--header-timeout", type=float, default=env("EDGE_EMBED_HEADER_TIMEOUT", "10"),
                   help="seconds to receive a request's headers before 408 and close (10)")
    s.add_argument("--body-timeout", type=float, default=env("EDGE_EMBED_BODY_TIMEOUT", "30"),
                   help="seconds to receive a request's body before 408 and close (30)")
    s.add_argument("--keep-alive-timeout", type=float, default=env("EDGE_EMBED_KEEP_ALIVE_TIMEOUT", "5"),
                   help="idle seconds before a keep-alive connection is closed (5)")
    s.add_argument("--max-connections", type=int, default=env("EDGE_EMBED_MAX_CONNECTIONS", "512"),
                   help="open connections; more are answered 503 and closed (512)")
    s.add_argument("--graceful-timeout", type=float, default=env("EDGE_EMBED_GRACEFUL_TIMEOUT", "30"),
                   help="on SIGTERM, seconds for in-flight requests; then 503 + Retry-After (30)")
    s.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads ($EDGE_EMBED_THREADS)")
    s.add_argument("--model-format", choices=MODEL_FORMATS, default="onnx",
                   help="onnx, or ort for the bundle's ORT-format model (edge-embed convert)")
    s.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="run the largest batch shape once at startup so memory is flat afterwards (on)")
    s.add_argument("--log-level", default=env("EDGE_EMBED_LOG_LEVEL", "info"),
                   choices=("debug", "info", "warning", "error"))
    s.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------------- embed-corpus
def cmd_embed_corpus(args: argparse.Namespace) -> int:
    from . import corpus

    if not args.model:
        raise InputError(f"-m/--model: name a bundle directory (or set ${MODEL_ENV})")
    try:
        corpus.require_pyarrow()
    except ImportError as e:
        raise InputError(f"embed-corpus: {e}") from None
    common: dict[str, Any] = dict(bundle=args.model, text_field=args.text_field, id_field=args.id_field,
                                  input_format=args.input_format, prompt=args.prompt, shard_size=args.shard_size,
                                  batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                                  precisions=args.precision or (), progress=args.progress)
    if args.engine == "ray":
        try:
            from .ray import embed_corpus_on_ray
        except ImportError as e:
            raise InputError(f"embed-corpus --engine ray: {e}") from None
        summary = embed_corpus_on_ray(args.input, args.output, address=args.address, workers=args.workers,
                                      threads=args.threads, **common)
    else:
        if args.address:
            raise InputError("--address: only with --engine ray")
        summary = corpus.embed_corpus(args.input, args.output, workers=args.workers, threads=args.threads, **common)
    if summary.truncated:
        sys.stderr.write(f"edge-embed: {summary.truncated} text(s) longer than the bundle's max_length "
                         "were truncated\n")
    print(summary.outdir)
    return 0


def add_corpus_parser(sub: Any) -> None:
    from .corpus import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_MAX_BATCH_TOKENS,
        DEFAULT_SHARD_SIZE,
        EXTRA_PRECISIONS,
        INPUT_FORMATS,
    )

    c = sub.add_parser("embed-corpus", help="embed a JSONL/CSV/Parquet/text corpus into resumable Parquet shards "
                                            "on several processes or on Ray (corpus extra)")
    c.add_argument("input", help="JSONL, CSV, Parquet or text file (one text per line)")
    c.add_argument("-o", "--output", required=True,
                   help="directory for part-NNNNN.parquet shards and _job.json; run again to resume")
    c.add_argument("-m", "--model", default=os.environ.get(MODEL_ENV),
                   help=f"bundle directory or packed .edgeembed file (${MODEL_ENV})")
    c.add_argument("--text-field", default="text", help="field or column holding the text (text)")
    c.add_argument("--id-field", help="field or column holding the id (default: id or _id if present, "
                                      "else the row number)")
    c.add_argument("--input-format", choices=INPUT_FORMATS, help="default: from the file name's suffix")
    c.add_argument("--prompt", help="prompt name from the bundle's manifest, e.g. query")
    c.add_argument("--workers", type=int, help="processes (Ray: actors), each with its own ONNX Runtime session "
                                               "(default: physical cores / --threads)")
    c.add_argument("--threads", type=int, help="ONNX Runtime threads per worker (default 1, or cores / --workers)")
    c.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"rows per output shard, the unit of resuming ({DEFAULT_SHARD_SIZE})")
    c.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"at most this many rows per ONNX Runtime run ({DEFAULT_BATCH_SIZE})")
    c.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS,
                   help=f"padded tokens per run, bounding its memory ({DEFAULT_MAX_BATCH_TOKENS})")
    c.add_argument("--precision", action="append", choices=EXTRA_PRECISIONS,
                   help="also store each vector as these codes, a vector_<precision> column each "
                        "(as Embedder.encode(precision=...)); repeatable")
    c.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local processes (default, resumable) or a Ray cluster (ray extra)")
    c.add_argument("--address", help="--engine ray: the cluster to join, e.g. ray://head:10001 or auto "
                                     "(default: start a local Ray)")
    c.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr (default: live on a terminal, one line per tenth otherwise)")
    c.set_defaults(func=cmd_embed_corpus)


# ---------------------------------------------------------------------- eval
def _eval_one(path: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from .evaluate import eval_beir, eval_sts

    emb = Embedder.load(path, threads=args.threads)
    show = not args.quiet
    if show:
        sys.stderr.write(f"evaluating {path}\n")

    def embed(texts: list[str], prompt: str | None) -> np.ndarray:
        return emb.embed(texts, prompt=prompt, batch_size=args.batch_size)

    out = [eval_sts(embed, _sts_file(f, args.split), progress=show) for f in args.sts or []]
    query = "query" if "query" in emb.prompts else None
    out += [eval_beir(embed, d, args.split, query_prompt=query, progress=show) for d in args.beir or []]
    return out


def _sts_file(path: str, split: str) -> str:
    # a folder of STS files (like stsb/) takes --split as the file name
    return os.path.join(path, f"{split}.tsv") if os.path.isdir(path) else path


def cmd_eval(args: argparse.Namespace) -> int:
    if not args.model:
        raise UsageError(f"-m/--model: name a bundle directory (or set ${MODEL_ENV})")
    if not args.sts and not args.beir:
        raise UsageError("eval: nothing to evaluate; give --sts FILE and/or --beir DIR")
    results = _eval_one(args.model, args)
    ref = _eval_one(args.reference, args) if args.reference else None
    metrics = ("cosine_spearman", "ndcg@10", "recall@100")
    rows = []
    for i, r in enumerate(results):
        for m in metrics:
            if m in r:
                row: dict[str, Any] = {"data": r["data"], "metric": m, "bundle": r[m]}
                if ref is not None:
                    row["reference"] = ref[i][m]
                    row["retained_pct"] = 100.0 * r[m] / ref[i][m] if ref[i][m] else float("nan")
                rows.append(row)
    if args.json:
        print(json.dumps({"bundle": args.model, "reference": args.reference, "rows": rows,
                          "details": results, "reference_details": ref}, indent=2))
        return 0
    width = max(len(r["data"]) for r in rows)
    head = f"{'data':<{width}}  {'metric':<15} {'bundle':>8}"
    if ref is not None:
        head += f" {'reference':>9} {'retained':>9}"
    print(head)
    for r in rows:
        line = f"{r['data']:<{width}}  {r['metric']:<15} {r['bundle']:>8.2f}"
        if ref is not None:
            line += f" {r['reference']:>9.2f} {r['retained_pct']:>8.2f}%"
        print(line)
    return 0


# ---------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_report, run_bench

    if not args.model:
        raise UsageError(f"-m/--model: name a bundle directory (or set ${MODEL_ENV})")
    report = run_bench([args.model, *(args.vs or [])], threads=args.threads, seconds=args.seconds,
                       cold_runs=args.cold_runs, progress=not args.quiet)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-embed", description="Small, fast, verified sentence embeddings.")
    p.add_argument("--version", action="version", version=f"edge-embed {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    e = sub.add_parser("embed", help="embed texts with a bundle (JSON lines or .npy)")
    e.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    e.add_argument("-m", "--model", default=os.environ.get(MODEL_ENV),
                   help=f"bundle directory or packed .edgeembed file (${MODEL_ENV})")
    e.add_argument("-i", "--input", help="file with one text per line, - for stdin")
    e.add_argument("-f", "--format", choices=("jsonl", "npy"), default=None,
                   help="jsonl (default) or npy; -o NAME.npy implies npy")
    e.add_argument("-o", "--output", help="output file (default stdout); written under a temporary name and "
                                          "renamed when complete")
    e.add_argument("--prompt", help="prompt name from the bundle's manifest, e.g. query")
    e.add_argument("--long-text", choices=LONG_TEXT, default=os.environ.get("EDGE_EMBED_LONG_TEXT", "truncate"),
                   help="texts over the bundle's max_length: truncate (default), error, or window (the "
                        "token-weighted mean of overlapping max_length windows) ($EDGE_EMBED_LONG_TEXT)")
    e.add_argument("--stride", type=int, default=None, metavar="TOKENS",
                   help="--long-text window: tokens shared by neighbouring windows (default max_length // 8)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--chunk-size", type=int, default=1024, help=argparse.SUPPRESS)
    e.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    e.add_argument("--model-format", choices=MODEL_FORMATS, default="onnx",
                   help="which model file to run: model.onnx, or the ORT-format model.ort (edge-embed convert)")
    add_load_arguments(e)
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr (default: when reading a file on a terminal)")
    e.set_defaults(func=cmd_embed)

    i = sub.add_parser("info", help="show a bundle's manifest")
    i.add_argument("bundle", help="bundle directory or packed .edgeembed file")
    i.add_argument("--verify", action="store_true", help="check every file's sha256")
    i.add_argument("--digest", default=os.environ.get(DIGEST_ENV), metavar="sha256:HEX",
                   help=f"refuse the bundle unless its digest is this (${DIGEST_ENV})")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument("--self-check", nargs="?", const="raise", choices=("raise", "warn"), default=None,
                   help="embed the bundle's probe texts on this device and compare with their fp32 "
                        "references; exit 1 below the manifest's threshold (or only warn: --self-check warn)")
    i.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (self-check)")
    i.set_defaults(func=cmd_info)

    k = sub.add_parser("pack", help="verify a bundle directory and pack it into one .edgeembed file")
    k.add_argument("bundle", help="bundle directory")
    k.add_argument("-o", "--output", required=True, help="file to write, e.g. minilm-int8.edgeembed")
    k.add_argument("--force", action="store_true", help="replace an existing output")
    k.set_defaults(func=cmd_pack)

    c = sub.add_parser("convert", help="add an ORT-format model.ort (ONNX Runtime Mobile) to a bundle (build extra)")
    c.add_argument("bundle", help="bundle directory")
    c.set_defaults(func=cmd_convert)

    b = sub.add_parser("build", help="export, quantize and validate a model into a bundle (build extra)")
    b.add_argument("source", nargs="?", help="recipe name in models/, local HF directory, or Hugging Face id; "
                                             "with --from-onnx, the recipe that describes the ONNX graph")
    b.add_argument("--from-onnx", metavar="PATH",
                   help="start from an fp32 ONNX export instead of PyTorch weights (no torch needed): an .onnx "
                        "file with --tokenizer, or a folder with onnx/model.onnx and tokenizer.json")
    b.add_argument("--tokenizer", metavar="TOKENIZER_JSON",
                   help="tokenizer.json to go with --from-onnx (default: the folder's tokenizer.json)")
    b.add_argument("--prompt", action="append", metavar="NAME=PREFIX",
                   help="a prompt the bundle carries, e.g. query='Represent this sentence: '")
    b.add_argument("--ort-format", action="store_true",
                   help="also write model.ort + required_operators_and_types.config (ONNX Runtime Mobile)")
    b.add_argument("-o", "--output", help=f"bundle directory to write (default: the cache, ${HOME_ENV} or "
                                          "~/.cache/edge-embed, under the SOURCE's name, where "
                                          "edge_embed.compat finds it by id)")
    b.add_argument("--method", default="auto",
                   help="auto (default): the first INT8 scheme, fastest first, that passes the thresholds "
                        "(dynamic, per-token scales, MatMulNBits), then sensitive nodes kept fp32; "
                        "dynamic; static (needs --calibration); fp32")
    b.add_argument("--scheme", default=None,
                   help="try this INT8 scheme alone: dynamic, per-token-all, per-token-asym, nbits8-b32, nbits8-b64, "
                        "nbits8-b128 "
                        "(docs/fidelity.md)")
    b.add_argument("--tuner", default="ort", choices=("ort", "inc"),
                   help="auto's accuracy-aware search: ort (default, onnxruntime only) or inc "
                        "(neural-compressor's tuning; needs the inc extra, see scripts/setup_inc.sh)")
    b.add_argument("--tuner-trials", type=int, default=20, metavar="N", help="--tuner inc: at most N trials (20)")
    b.add_argument("--tuner-timeout", type=int, default=600, metavar="S",
                   help="--tuner inc: stop tuning after S seconds (600)")
    b.add_argument("--calibration", metavar="FILE", help="static: calibration texts, one per line or JSONL 'text'")
    b.add_argument("--calibration-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    b.add_argument("--calibration-size", type=int, default=200, metavar="N",
                   help="static: texts sampled (seeded) from the calibration file (default 200)")
    b.add_argument("--target", choices=("avx2", "avx512-vnni", "arm64"),
                   help="CPU preset for INT8 types and reduce_range (default: this machine's)")
    b.add_argument("--eval-sts", metavar="FILE", help="also check STS Spearman (score<TAB>s1<TAB>s2, header)")
    b.add_argument("--eval-beir", metavar="DIR", help="also check retrieval nDCG@10 on a BEIR folder")
    b.add_argument("--revision", help="hub revision (branch, tag or commit) to pin")
    b.add_argument("--pooling", choices=("cls", "mean"), help="override the recipe's pooling")
    b.add_argument("--max-length", type=int, help="override the recipe's max_length")
    b.add_argument("--threshold", action="append", metavar="KEY=VALUE",
                   help="override a fidelity threshold, e.g. cosine_mean=0.995")
    b.add_argument("--probes", metavar="FILE",
                   help="texts the fidelity gate measures drift on (one per line), instead of the shipped probe set")
    b.add_argument("--fp32-out", help="also write the fp32 reference bundle here")
    b.add_argument("--force", action="store_true", help="replace an existing output")
    b.add_argument("-v", "--verbose", action="store_true",
                   help="also show warnings and log advice of torch, transformers, optimum and onnxruntime")
    b.set_defaults(func=cmd_build)
    ev = sub.add_parser("eval", help="quality on STS files and BEIR folders (MTEB protocol)")
    ev.add_argument("-m", "--model", default=os.environ.get(MODEL_ENV), help=f"bundle directory (${MODEL_ENV})")
    ev.add_argument("--sts", action="append", metavar="FILE",
                    help="score<TAB>s1<TAB>s2 file with a header (or a folder of <split>.tsv); repeatable")
    ev.add_argument("--beir", action="append", metavar="DIR",
                    help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv; repeatable")
    ev.add_argument("--reference", metavar="BUNDLE",
                    help="evaluate this bundle too (e.g. fp32) and show the share retained")
    ev.add_argument("--split", default="test", help="qrels split (and STS file in a folder), default test")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ev.add_argument("--json", action="store_true", help="print the results as JSON")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    ev.set_defaults(func=cmd_eval)

    be = sub.add_parser("bench", help="speed, latency, cold start, memory and size of bundles")
    be.add_argument("-m", "--model", default=os.environ.get(MODEL_ENV), help=f"bundle directory (${MODEL_ENV})")
    be.add_argument("--vs", action="append", metavar="BUNDLE", help="another bundle to measure alongside; repeatable")
    be.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    be.add_argument("--seconds", type=float, default=2.0, help="time spent per measurement (default 2)")
    be.add_argument("--cold-runs", type=int, default=3, help="fresh processes timed for cold start (median)")
    be.add_argument("--json", action="store_true", help="print the report as JSON")
    be.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    be.set_defaults(func=cmd_bench)

    add_serve_parser(sub)
    add_corpus_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except UsageError as e:
        _err(str(e))
        return 2
    except EdgeEmbedError as e:
        _err(str(e))
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except _Terminated:
        _err("terminated")
        return 143


if __name__ == "__main__":
    sys.exit(main())
