"""Embedder: a bundle's ONNX session + tokenizer + pooling, turning texts into vectors.

Deliberately does not download anything, build or quantize models, or guess how a model
pools: everything model-specific comes from the bundle's manifest. It feeds the graph
only the inputs the graph declares and returns 2-D float32 arrays in input order.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from .archive import ArchiveSource, is_archive, read_archive
from .cut import Shrinker, break_test, cut, run_shrinker
from .errors import BundleError, InputError
from .manifest import RANGES_KEY, Manifest, check_digest
from .panics import quiet_panics
from .pooling import POOLERS, l2_normalize
from .precision import PRECISIONS, quantize, ranges_array
from .progress import Progress
from .selfcheck import SelfCheckResult, probe_file
from .selfcheck import self_check as run_self_check

__all__ = ["EmbedResult", "Embedder", "max_threads"]

log = logging.getLogger("edge_embed")

_ORT_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# encode() reads a generator this many batches at a time, so similar lengths still share a batch
_ITER_BATCHES = 8
# encode_document()'s prompt: the first of these names the bundle has (sentence-transformers' order)
_DOCUMENT_PROMPTS = ("document", "passage", "corpus")
THREADS_ENV = "EDGE_EMBED_THREADS"
MODEL_FORMATS = ("onnx", "ort")
LONG_TEXT = ("truncate", "error", "window")
# Before tokenizing, a text is cut at max_length * _CHARS_PER_TOKEN characters (then 4x that,
# ... until the cut holds more than max_length tokens), so a 5 MB text costs about what its
# first max_length tokens cost. English runs ~4-5 characters per WordPiece token, CJK one.
_CHARS_PER_TOKEN = 8
_PROBE_TEXTS = ["a b", "", "zzqxj unknownword \u2603 \u8fb9\u7f18 \U0001f642 " + "x" * 120]


@dataclass(frozen=True)
class EmbedResult:
    """Vectors plus what happened on the way: tokens used, texts truncated, and windows."""

    vectors: npt.NDArray[np.float32]
    tokens: npt.NDArray[np.int64]  # tokens fed to the model per text (after truncation; all its windows')
    truncated: int  # how many texts were cut at max_length
    # long_text="window": per text, its windows' vectors, shape (windows, dim); else None
    windows: list[npt.NDArray[np.float32]] | None = None

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())


def max_threads() -> int:
    """The most intra-op threads load() accepts: 4 per logical CPU (more only adds contention)."""
    return 4 * (os.cpu_count() or 1)


def _check_threads(threads: Any) -> int | None:
    where = "threads"
    if threads is None and os.environ.get(THREADS_ENV):
        where = f"${THREADS_ENV}"
        try:
            threads = int(os.environ[THREADS_ENV])
        except ValueError:
            raise InputError(f"${THREADS_ENV}: expected an integer, got {os.environ[THREADS_ENV]!r}") from None
    if threads is None:
        return None
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise InputError(f"{where}: expected a non-negative integer (0 = onnxruntime's choice), got {threads!r}")
    if threads > max_threads():
        raise InputError(f"{where}: {threads} threads on a machine with {os.cpu_count()} CPUs; "
                         f"use at most {max_threads()} (0 = onnxruntime's choice)")
    return threads


def check_texts(texts: Any) -> list[str]:
    """The one place that decides what embed() accepts: a sequence of str that is valid Unicode.

    A lone surrogate (``"\\udce9"``: what ``surrogateescape`` makes of a stray byte, or a JSON
    ``"\\udce9"`` escape) cannot be encoded as UTF-8, so no tokenizer can see it: it is an
    InputError naming the text's index, never silently replaced.
    """
    if isinstance(texts, (str, bytes)):
        raise InputError("texts: got a single string; wrap a single text in a list: embed([text])")
    if not isinstance(texts, Sequence) and not isinstance(texts, np.ndarray):
        raise InputError(f"texts: expected a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}]: expected str, got {type(t).__name__}; pass text, not {type(t).__name__}")
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InputError(
                    f"texts[{i}]: character {e.start} is a lone surrogate (U+{ord(t[e.start]):04X}), not text; "
                    "decode input bytes with errors='replace', or remove it"
                ) from None
    return out


def _tokenizer_failure(e: BaseException) -> bool:
    """An error of the tokenizer's own: an Exception, or pyo3's PanicException (a BaseException,
    so that ``except Exception`` misses it); not KeyboardInterrupt, SystemExit or MemoryError."""
    return (isinstance(e, Exception) and not isinstance(e, MemoryError)) or type(e).__name__ == "PanicException"


def _tokenize_batch(tok: Tokenizer, texts: list[str]) -> list[Encoding]:
    """encode_batch, with a tokenizer's failure on a text (an Exception, or pyo3's PanicException)
    as an InputError naming the first text it fails on."""
    if not texts:
        return []
    try:
        with quiet_panics():
            return list(tok.encode_batch(texts))
    except BaseException as e:
        if not _tokenizer_failure(e):
            raise
        error: BaseException = e
    bad = 0
    with quiet_panics():
        for i, t in enumerate(texts):  # which one: each alone (only after a failure)
            try:
                tok.encode(t)
            except BaseException as e:
                if not _tokenizer_failure(e):
                    raise
                bad, error = i, e
                break
    raise InputError(f"texts[{bad}]: the bundle's tokenizer failed on this text ({type(error).__name__}: "
                     f"{str(error)[:200]})")


class Embedder:
    """Loads a bundle and embeds text. Use :meth:`load`."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, session: ort.InferenceSession,
                 tokenizer: Tokenizer) -> None:
        self.path = bundle_dir
        self.manifest = manifest
        self.session = session
        self._tok = tokenizer
        self.self_check_result: SelfCheckResult | None = None  # set by load(self_check=...)
        self._tok_full: Tokenizer | None = None  # built on first token_count(): copying costs ~0.1 s of cold start
        self._breaks: Callable[[str], bool] | None = None  # where long texts may be cut: on first long text
        self._shrink: Shrinker | None = None  # shortens one-word runs (same tokens): with _breaks
        self._tok_windows: dict[int, Tokenizer] = {}  # long_text="window": one per stride, built on first use
        self._ranges: npt.NDArray[np.float32] | None = None  # int8_ranges as an array, on first use
        self._pool = POOLERS[manifest.pooling]
        self._inputs = {i.name: _ORT_INT_TYPES[i.type] for i in session.get_inputs()}
        outputs = session.get_outputs()
        names = [o.name for o in outputs]
        self._output = "last_hidden_state" if "last_hidden_state" in names else names[0]
        self._output_rank = len(next(o.shape for o in outputs if o.name == self._output))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike[str] | ArchiveSource, threads: int | None = None, *,
             verify: bool = True, digest: str | None = None, providers: Sequence[str] | None = None,
             model_format: str = "onnx", self_check: bool | str = False) -> Embedder:
        """Load a bundle: a directory, a packed ``.edgeembed`` file, its bytes or a binary file object.

        threads: intra-op threads for ONNX Runtime (default: $EDGE_EMBED_THREADS, else ORT's
        choice of one per physical core); at most :func:`max_threads` (4 per logical CPU).
        verify: check every file's sha256 against the manifest before use (the default; see
        docs/robustness.md for what it costs); False checks sizes only. The manifest itself is
        checked against the bundle's manifest.json.sha256 when it has one. digest: the bundle
        digest ``"sha256:<hex>"`` that ``edge-embed info`` prints (the sha256 of manifest.json);
        any other manifest is refused, and every file is verified, so a pinned digest covers them all.
        model_format: "onnx", or "ort" for the bundle's ORT-format model
        (``edge-embed convert``). Any problem with the bundle is a BundleError naming the file.
        A packed bundle is never unpacked to disk: onnxruntime opens a packed file itself as the
        ONNX model (see edge_embed.archive); bytes, file objects and ORT-format models are read
        into memory.
        self_check: embed the bundle's stored probe texts and compare with their fp32
        reference vectors; True raises SelfCheckError below the manifest's threshold,
        "warn" issues a SelfCheckWarning instead (see edge_embed.selfcheck). The result is
        kept as ``self_check_result``.
        """
        if model_format not in MODEL_FORMATS:
            raise InputError(f"model_format: expected one of {MODEL_FORMATS}, got {model_format!r}")
        if self_check not in (False, True, "warn"):
            raise InputError(f"self_check: expected True, False or 'warn', got {self_check!r}")
        if not isinstance(verify, bool):
            raise InputError(f"verify: expected True or False, got {verify!r}")
        if digest is not None:
            check_digest(digest)
            verify = True  # the digest covers the files only through their sha256 in the manifest
        threads = _check_threads(threads)

        def model_name(m: Manifest) -> str:
            name = m.model_file if model_format == "onnx" else m.ort_model_file
            if name is None:
                where = path if isinstance(path, (str, os.PathLike)) else "<bundle>"
                raise BundleError(f"{where!s}: the manifest names no 'ort_model_file'; add one with "
                                  "'edge-embed convert BUNDLE' or load the ONNX model")
            return name

        packed = None
        if is_archive(path):
            def keep(m: Manifest) -> set[str]:
                probes = probe_file(m) if self_check else None
                return {model_name(m), m.tokenizer_file} | ({probes} if probes else set())

            # a packed file is opened by onnxruntime in place of its ONNX model when its layout allows
            packed = read_archive(path, verify=verify, keep=keep, in_place=model_format == "onnx", digest=digest)
            root, manifest = Path(packed.label), packed.manifest
        else:
            root = Path(path)  # type: ignore[arg-type]
            manifest = Manifest.read(root, digest=digest)
            if verify:
                manifest.verify(root)
            else:
                manifest.check_present(root)
        model_file = model_name(manifest)

        tok_path: Any = packed.where(manifest.tokenizer_file) if packed else root / manifest.tokenizer_file
        try:
            with quiet_panics():
                if packed:
                    tokenizer = Tokenizer.from_str(packed.data(manifest.tokenizer_file).decode("utf-8"))
                else:
                    tokenizer = Tokenizer.from_file(str(tok_path))
                tokenizer.no_padding()  # we pad per batch, to the batch's own longest text
                tokenizer.enable_truncation(manifest.max_length)
                # a tokenizer that panics on plain words, an unknown one, CJK or an emoji is the bundle's fault
                tokenizer.encode_batch(_PROBE_TEXTS)
        except BundleError:
            raise
        except BaseException as e:  # tokenizers raises bare Exceptions, and pyo3's PanicException (a BaseException)
            if not _tokenizer_failure(e):
                raise
            raise BundleError(f"{tok_path}: not a readable tokenizers file ({type(e).__name__}: {str(e)[:200]}); "
                              "rebuild the bundle") from None

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or 0
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if model_format == "ort":
            so.add_session_config_entry("session.load_model_format", "ORT")
        available = ort.get_available_providers()
        wanted = list(providers) if providers else ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise InputError(f"providers: {missing} not available in this onnxruntime; available: {available}")
        model_path: Any = packed.where(model_file) if packed else root / model_file
        model: str | bytes = str(model_path)
        if packed:
            in_place = packed.model_path(model_file)
            model = str(in_place) if in_place else packed.data(model_file)
        try:
            session = ort.InferenceSession(model, sess_options=so, providers=wanted)
        except Exception as e:  # ORT raises its own Fail / InvalidGraph / ... types
            raise BundleError(f"{model_path}: onnxruntime cannot load it ({e}); rebuild the bundle") from None

        for i in session.get_inputs():
            if i.name not in _KNOWN_INPUTS:
                raise BundleError(f"{model_path}: graph input {i.name!r} is not one edge-embed feeds {_KNOWN_INPUTS}")
            if i.type not in _ORT_INT_TYPES:
                raise BundleError(f"{model_path}: graph input {i.name!r} has type {i.type}, expected int64 or int32")
        if "input_ids" not in {i.name for i in session.get_inputs()}:
            raise BundleError(f"{model_path}: the graph has no 'input_ids' input")
        emb = cls(root, manifest, session, tokenizer)
        if emb._output_rank not in (2, 3):
            raise BundleError(f"{model_path}: output {emb._output!r} has rank {emb._output_rank}, expected 2 or 3")
        if self_check:
            name = probe_file(manifest)
            probes = packed.data(name) if packed and name else None
            emb.self_check_result = run_self_check(emb, on_fail="warn" if self_check == "warn" else "raise",
                                                   data=probes)
        return emb

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self.manifest.prompts)

    def __repr__(self) -> str:
        return f"Embedder({str(self.path)!r}, dim={self.dim}, pooling={self.manifest.pooling!r})"

    def with_session(self, session: Any) -> Embedder:
        """This bundle's tokenizer, padding and pooling around another session.

        For tools that run an instrumented copy of the model (the build's emulating and
        activation-recording graphs): ``session`` needs ``get_inputs``, ``get_outputs`` and
        ``run`` as onnxruntime's InferenceSession has them.
        """
        return Embedder(self.path, self.manifest, session, self._tok)

    # ------------------------------------------------------------------ embedding
    def _prefix(self, prompt: str | None) -> str:
        if prompt is None:
            return ""
        if not isinstance(prompt, str):
            raise InputError(f"prompt: expected a prompt name (str) or None, got {type(prompt).__name__}")
        if prompt not in self.manifest.prompts:
            known = ", ".join(sorted(self.manifest.prompts)) or "none"
            raise InputError(f"prompt: {prompt!r} is not in this bundle's prompts (known: {known})")
        return self.manifest.prompts[prompt]

    def tokenize(self, texts: Sequence[str], prompt: str | None = None) -> list[Encoding]:
        """Tokenize with the bundle's tokenizer, truncated at max_length (the tokens embed() feeds).

        A long text is cut before it is tokenized (at whitespace, and for BERT's tokenizers also
        before CJK ideographs and punctuation; a giant run of letters that WordPiece makes one
        unknown token loses its middle: see edge_embed.cut), so its cost is about that of its
        first max_length tokens; the kept tokens are those of the whole text, and
        ``overflowing`` is non-empty exactly when the whole text is longer than max_length (it
        holds the overflow of the cut text only). Offsets refer to the text as cut.
        """
        items = check_texts(texts)
        prefix = self._prefix(prompt)
        whole = [prefix + t for t in items]
        out: list[Encoding | None] = [None] * len(whole)
        pending = list(range(len(whole)))
        limit = self.max_length * _CHARS_PER_TOKEN
        breaks, shrink = self._cut_tools() if any(len(t) > limit for t in whole) else (None, None)
        while pending:
            # only a head of a long text, a little longer than the cut, is shortened: the cut
            # never looks past it
            full = {i: shrink.head(whole[i], limit) if shrink and len(whole[i]) > limit else whole[i]
                    for i in pending}
            cuts = [cut(full[i], limit, breaks) if breaks else full[i] for i in pending]
            again = []
            for i, c, e in zip(pending, cuts, _tokenize_batch(self._tok, cuts), strict=True):
                if len(c) < len(full[i]) and not e.overflowing:
                    again.append(i)  # the cut fits in max_length: the rest may hold more tokens
                else:
                    out[i] = e
            pending, limit = again, limit * 4
        return [e for e in out if e is not None]

    def _cut_tools(self) -> tuple[Callable[[str], bool], Shrinker | None]:
        """Where this tokenizer starts a word, and its run shrinker: read from its configuration
        on the first long text."""
        if self._breaks is None:
            config = self._tok.to_str()
            self._breaks, self._shrink = break_test(config), run_shrinker(config)
        return self._breaks, self._shrink

    def _shortened(self, texts: list[str]) -> list[str]:
        """``texts`` with the giant runs of the long ones shortened (edge_embed.cut.run_shrinker):
        the same tokens for less tokenizing. Reads the tokenizer's configuration on the first
        long text."""
        limit = self.max_length * _CHARS_PER_TOKEN
        if not any(len(t) > limit for t in texts):
            return texts
        shrink = self._cut_tools()[1]
        if shrink is None:
            return texts
        return [shrink(t) if len(t) > limit else t for t in texts]

    def token_count(self, texts: Sequence[str], prompt: str | None = None) -> list[int]:
        """Tokens each text needs, special tokens included, before truncation.

        Exact: it tokenizes every text whole (only giant one-word runs shortened, which keeps
        their single token), so it costs time in proportion to the text's length (embed() does
        not call it: it cuts long texts first).
        """
        items = check_texts(texts)
        prefix = self._prefix(prompt)
        if not items:
            return []
        if self._tok_full is None:
            self._tok_full = Tokenizer.from_str(self._tok.to_str())
            self._tok_full.no_truncation()
        return [len(e.ids) for e in _tokenize_batch(self._tok_full, self._shortened([prefix + t for t in items]))]

    def embed(self, texts: Sequence[str], prompt: str | None = None, batch_size: int = 32, *,
              long_text: str = "truncate", stride: int | None = None) -> npt.NDArray[np.float32]:
        """Embed texts: a (len(texts), dim) float32 array, in input order.

        long_text: what to do with a text longer than max_length tokens:
        "truncate" (default) keeps its first max_length tokens, and a warning names how many texts
        were cut; "error" raises an InputError naming the first such text; "window" embeds
        overlapping windows of max_length tokens (``stride`` tokens shared by neighbours, default
        max_length // 8) and returns their token-weighted mean, normalised as the manifest says.
        Use :meth:`embed_detailed` for the counts and the per-window vectors as data.
        """
        res = self.embed_detailed(texts, prompt=prompt, batch_size=batch_size, long_text=long_text, stride=stride)
        if res.truncated:
            log.warning("%d of %d texts were longer than %d tokens and were truncated",
                        res.truncated, len(res.vectors), self.max_length)
        return res.vectors

    def embed_detailed(self, texts: Sequence[str], prompt: str | None = None, batch_size: int = 32, *,
                       long_text: str = "truncate", stride: int | None = None,
                       normalize: bool = True, max_batch_tokens: int | None = None) -> EmbedResult:
        """Like :meth:`embed`, also returning tokens per text, the truncated count and, with
        long_text="window", each text's window vectors (``windows``).

        normalize=False skips the L2 normalisation the manifest may ask for (the pooled vectors
        as they are; window means are then not renormalised either).
        max_batch_tokens: also cut a batch before its padded size (rows x longest text) would
        pass this many tokens, which bounds the memory one ONNX Runtime run takes; batches of
        short texts then hold up to batch_size rows. A single text is never split.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int)
                                             or isinstance(max_batch_tokens, bool) or max_batch_tokens < 1):
            raise InputError(f"max_batch_tokens: expected a positive integer or None, got {max_batch_tokens!r}")
        if not isinstance(long_text, str) or long_text not in LONG_TEXT:
            raise InputError(f"long_text: expected one of {', '.join(LONG_TEXT)}, got {long_text!r}")
        if long_text == "window":
            return self._embed_windows(texts, prompt, batch_size, self._check_stride(stride), normalize,
                                       max_batch_tokens)
        if stride is not None:
            raise InputError("stride: only used with long_text='window'")
        encs = self.tokenize(texts, prompt)
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        cut = [i for i, e in enumerate(encs) if e.overflowing]
        if cut and long_text == "error":
            raise InputError(
                f"texts[{cut[0]}]: longer than max_length={self.max_length} tokens "
                f"({len(cut)} texts are); shorten them, or use long_text='truncate' or 'window'"
            )
        return EmbedResult(self._run_sorted(encs, batch_size, normalize, max_batch_tokens), lengths, len(cut))

    def _check_stride(self, stride: Any) -> int:
        high = (self.max_length - 2) // 2  # every window needs room for tokens of its own
        if stride is None:
            return self.max_length // 8
        if not isinstance(stride, int) or isinstance(stride, bool) or not 0 <= stride <= high:
            raise InputError(f"stride: expected an integer from 0 to {high} (tokens shared by neighbouring "
                             f"windows of {self.max_length}), got {stride!r}")
        return stride

    def _embed_windows(self, texts: Sequence[str], prompt: str | None, batch_size: int, stride: int,
                       normalize: bool, max_batch_tokens: int | None = None) -> EmbedResult:
        items = check_texts(texts)
        prefix = self._prefix(prompt)
        tok = self._tok_windows.get(stride)
        if tok is None:
            tok = Tokenizer.from_str(self._tok.to_str())
            tok.enable_truncation(self.max_length, stride=stride)
            self._tok_windows[stride] = tok
        # tokenizers returns the windows after the first as its overflowing encodings, each with
        # the special tokens of a text of its own
        per_text = [[e, *e.overflowing] for e in _tokenize_batch(tok, self._shortened([prefix + t for t in items]))]
        flat = [w for ws in per_text for w in ws]
        vecs = self._run_sorted(flat, batch_size, normalize, max_batch_tokens)
        weights = np.fromiter((len(w.ids) for w in flat), dtype=np.float32, count=len(flat))
        out = np.empty((len(items), self.dim), dtype=np.float32)
        windows: list[npt.NDArray[np.float32]] = []
        tokens = np.empty(len(items), dtype=np.int64)
        at = 0
        for i, ws in enumerate(per_text):
            v, w = vecs[at:at + len(ws)], weights[at:at + len(ws)]
            out[i] = (w[:, None] * v).sum(axis=0) / w.sum()
            windows.append(v)
            tokens[i] = int(w.sum())
            at += len(ws)
        if normalize and self.manifest.normalize and len(out):
            out = l2_normalize(out)
        return EmbedResult(out, tokens, 0, windows)

    def _run_sorted(self, encs: list[Encoding], batch_size: int, normalize: bool,
                    max_batch_tokens: int | None = None) -> npt.NDArray[np.float32]:
        n = len(encs)
        out = np.empty((n, self.dim), dtype=np.float32)
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=n)
        # longest first: similar lengths share a batch, so little padding is computed
        order = np.argsort(-lengths, kind="stable")
        start = 0
        while start < n:
            rows = batch_size
            if max_batch_tokens is not None:  # the batch's first text is its longest
                rows = max(1, min(batch_size, max_batch_tokens // max(int(lengths[order[start]]), 1)))
            idx = order[start:start + rows]
            out[idx] = self._run([encs[i] for i in idx], normalize)
            start += rows
        return out

    def _run(self, batch: list[Encoding], normalize: bool = True) -> npt.NDArray[np.float32]:
        width = max(len(e.ids) for e in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        types = np.zeros((len(batch), width), dtype=np.int64)
        for row, e in enumerate(batch):
            k = len(e.ids)
            ids[row, :k] = e.ids
            mask[row, :k] = 1
            types[row, :k] = e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feed = {name: arrays[name].astype(dt, copy=False) for name, dt in self._inputs.items()}
        hidden = self.session.run([self._output], feed)[0]
        if self._output_rank == 3:
            pooled = self._pool(hidden, mask)
        else:
            pooled = np.asarray(hidden, dtype=np.float32)
        if pooled.shape[1] != self.dim:
            raise BundleError(
                f"{self.path / self.manifest.model_file}: model returns {pooled.shape[1]}-d vectors, "
                f"the manifest says dim={self.dim}"
            )
        return l2_normalize(pooled) if normalize and self.manifest.normalize else pooled

    # ------------------------------------------------------------------ sentence-transformers shape
    def encode(self, sentences: str | Iterable[str], batch_size: int = 32, show_progress_bar: bool | None = None,
               normalize_embeddings: bool | None = None, prompt_name: str | None = None, prompt: str | None = None,
               convert_to_numpy: bool = True, precision: str = "float32") -> Any:
        """sentence-transformers' ``encode``: a str gives a 1-D vector, any iterable of str a 2-D array.

        A generator (or any iterable that is not a sequence) is read a few batches at a time and
        never held twice. prompt_name picks a prompt of the bundle (``emb.prompts``); prompt is a
        literal prefix (it wins when both are given, with a warning, as in sentence-transformers).
        normalize_embeddings=True L2-normalises; None or False return what the bundle produces
        (its manifest's ``normalize``: a bundle that normalises is like a model ending in a
        Normalize module). precision: float32, or int8 / uint8 (per-dimension ranges recorded in
        the bundle at build time) or binary / ubinary (packed sign bits), sentence-transformers'
        layouts. convert_to_numpy=False gives a list of 1-D arrays. show_progress_bar: a counter
        on stderr (default off).
        """
        return self._encode(sentences, batch_size, show_progress_bar, "unit" if normalize_embeddings else "bundle",
                            self._encode_prefix(prompt_name, prompt), convert_to_numpy, precision)

    def encode_query(self, sentences: str | Iterable[str], **kwargs: Any) -> Any:
        """encode() with the bundle's ``query`` prompt (when it has one and no prompt is given)."""
        if "query" in self.manifest.prompts and kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = "query"
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences: str | Iterable[str], **kwargs: Any) -> Any:
        """encode() with the bundle's ``document`` / ``passage`` / ``corpus`` prompt, if it has one."""
        name = next((n for n in _DOCUMENT_PROMPTS if n in self.manifest.prompts), None)
        if name and kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = name
        return self.encode(sentences, **kwargs)

    @staticmethod
    def similarity(a: Any, b: Any) -> npt.NDArray[np.float32]:
        """Cosine similarity matrix (len(a), len(b)) of two vectors or stacks of vectors."""
        x = np.atleast_2d(np.asarray(a, dtype=np.float32))
        y = np.atleast_2d(np.asarray(b, dtype=np.float32))
        if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
            raise InputError(f"similarity: expected vectors of one width, got shapes {x.shape} and {y.shape}")
        out: npt.NDArray[np.float32] = l2_normalize(x) @ l2_normalize(y).T
        return out

    def _encode(self, sentences: str | Iterable[str], batch_size: int, show_progress_bar: bool | None,
                normalize: str, prefix: str, convert_to_numpy: bool, precision: str) -> Any:
        """encode()'s work; normalize: "bundle" (as the manifest says), "unit", or "raw" (never normalised)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if precision not in PRECISIONS:
            raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        ranges = self._int8_ranges() if precision in ("int8", "uint8") else None
        single = isinstance(sentences, str)
        if isinstance(sentences, bytes):
            raise InputError("sentences: got bytes; decode them to str first")
        texts: Iterable[Any] = [sentences] if single else sentences
        if not isinstance(texts, Iterable):
            raise InputError(f"sentences: expected a str or an iterable of str, got {type(texts).__name__}")

        chunks: Iterator[list[Any]]
        if isinstance(texts, (Sequence, np.ndarray)) and not show_progress_bar:
            chunks = iter([list(texts)])  # a list is sorted by length as a whole
        else:
            it = iter(texts)
            chunks = iter(lambda: list(itertools.islice(it, batch_size * _ITER_BATCHES)), [])
        parts: list[npt.NDArray[Any]] = []
        done = truncated = 0
        total = len(texts) if isinstance(texts, (Sequence, np.ndarray)) else None
        with Progress("encode", total, enabled=bool(show_progress_bar)) as progress:
            for chunk in chunks:
                for i, t in enumerate(chunk):
                    if not isinstance(t, str):
                        raise InputError(f"sentences[{done + i}]: expected str, got {type(t).__name__}")
                res = self.embed_detailed([prefix + t for t in chunk], batch_size=batch_size,
                                          normalize=normalize != "raw")
                vecs = l2_normalize(res.vectors) if normalize == "unit" else res.vectors
                parts.append(quantize(vecs, precision, ranges))
                truncated += res.truncated
                done += len(chunk)
                progress.update(len(chunk))
        if truncated:
            log.warning("%d of %d texts were longer than %d tokens and were truncated", truncated, done,
                        self.max_length)
        if not parts:
            parts = [quantize(np.zeros((0, self.dim), np.float32), precision, ranges)]
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if single:
            return out[0]
        return out if convert_to_numpy else list(out)

    def _encode_prefix(self, prompt_name: str | None, prompt: str | None) -> str:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InputError(f"prompt: expected a prefix string, got {type(prompt).__name__}")
            if prompt_name is not None:
                log.warning("encode: both prompt and prompt_name given; using prompt, ignoring prompt_name=%r",
                            prompt_name)
            return prompt
        return self._prefix(prompt_name)

    def _int8_ranges(self) -> npt.NDArray[np.float32]:
        if self._ranges is None:
            value = self.manifest.extra.get(RANGES_KEY)
            if value is None:
                raise BundleError(f"{self.path}: the manifest has no {RANGES_KEY!r} (built by an older edge-embed); "
                                  "rebuild the bundle with 'edge-embed build' for int8/uint8 precision, or use "
                                  "precision='binary' / 'ubinary' / 'float32'")
            self._ranges = ranges_array(value)
        return self._ranges
