"""Drop-in shapes of ``sentence_transformers.SentenceTransformer`` and ``FlagEmbedding.FlagModel``.

Change one import line and keep the rest of the code::

    from edge_embed.compat import SentenceTransformer   # was: from sentence_transformers import ...
    model = SentenceTransformer("BAAI/bge-base-en-v1.5")
    embeddings = model.encode(["This is a test sentence."])

The name is a bundle directory, a packed ``.edgeembed`` file, or a hub id / recipe name
whose bundle was built earlier into the local cache (``edge-embed build bge-base-en-v1.5``;
see ``edge_embed.cache``). Nothing is downloaded: a missing bundle is a BundleError that
prints the build command.

Constructor keywords that mean nothing for a local CPU bundle are accepted and ignored
(``HARMLESS_ST`` / ``HARMLESS_FLAG``: device, trust_remote_code, cache_folder, token, ...);
any other keyword is an InputError, never swallowed. Deliberately not here: training,
fitting, tensors on a device, and pooling or normalisation other than the bundle's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from .cache import resolve_bundle
from .embedder import Embedder
from .errors import InputError
from .pooling import l2_normalize

__all__ = ["HARMLESS_FLAG", "HARMLESS_ST", "FlagModel", "SentenceTransformer", "load_model"]

# sentence-transformers constructor keywords with no effect on a local CPU bundle
HARMLESS_ST = frozenset({
    "device", "cache_folder", "trust_remote_code", "revision", "local_files_only", "token", "use_auth_token",
    "backend", "model_card_data", "modules",
})
# FlagEmbedding constructor keywords with no effect here (use_fp16 warns once, see FlagModel)
HARMLESS_FLAG = frozenset({"devices", "device", "cache_dir", "trust_remote_code", "batch_size"})
_SIMILARITIES = ("cosine", "dot")
_fp16_warned = False


def _check_kwargs(cls: str, kwargs: dict[str, Any], harmless: frozenset[str]) -> None:
    unknown = sorted(set(kwargs) - harmless)
    if unknown:
        raise InputError(f"{cls}: {', '.join(unknown)} not supported by edge-embed; accepted and ignored: "
                         f"{', '.join(sorted(harmless))} (see edge_embed.compat)")
    if kwargs.get("modules") is not None:
        raise InputError(f"{cls}: modules=... builds a model from parts; edge-embed loads built bundles only")


def load_model(name: str | os.PathLike[str] | Embedder) -> Embedder:
    """A loaded Embedder as it is; a bundle path, packed file, or cached hub id / recipe name loaded."""
    if isinstance(name, Embedder):
        return name
    if not isinstance(name, (str, os.PathLike)):
        raise InputError(f"model_name_or_path: expected a bundle path or model id, got {type(name).__name__}")
    return Embedder.load(resolve_bundle(name))


class SentenceTransformer:
    """``sentence_transformers.SentenceTransformer`` over an edge-embed bundle (encode and friends).

    prompts: extra or replacing prompt prefixes by name (the bundle's are the default);
    default_prompt_name: used when encode() gets no prompt; truncate_dim: keep the first
    dimensions (Matryoshka models); similarity_fn_name: "cosine" (default) or "dot".
    """

    def __init__(self, model_name_or_path: str | os.PathLike[str], *, prompts: dict[str, str] | None = None,
                 default_prompt_name: str | None = None, truncate_dim: int | None = None,
                 similarity_fn_name: str | None = None, **kwargs: Any) -> None:
        _check_kwargs("SentenceTransformer", kwargs, HARMLESS_ST)
        self.embedder = load_model(model_name_or_path)
        self.prompts: dict[str, str] = {**self.embedder.prompts, **(prompts or {})}
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise InputError(f"default_prompt_name: {default_prompt_name!r} is not a prompt of this model "
                             f"(known: {', '.join(sorted(self.prompts)) or 'none'})")
        self.default_prompt_name = default_prompt_name
        dim = self.embedder.dim
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or not 0 < truncate_dim <= dim):
            raise InputError(f"truncate_dim: expected an integer in 1..{self.embedder.dim}, got {truncate_dim!r}")
        self.truncate_dim = truncate_dim
        if similarity_fn_name not in (None, *_SIMILARITIES):
            raise InputError(f"similarity_fn_name: expected one of {', '.join(_SIMILARITIES)}, "
                             f"got {similarity_fn_name!r}")
        self.similarity_fn_name = similarity_fn_name or "cosine"

    # -------------------------------------------------------------- attributes users read
    @property
    def device(self) -> str:
        return "cpu"

    @property
    def max_seq_length(self) -> int:
        return self.embedder.max_length

    def get_sentence_embedding_dimension(self) -> int:
        return self.truncate_dim or self.embedder.dim

    def get_max_seq_length(self) -> int:
        return self.embedder.max_length

    def __repr__(self) -> str:
        return f"SentenceTransformer({str(self.embedder.path)!r}, dim={self.embedder.dim})"

    # -------------------------------------------------------------- encoding
    def encode(self, sentences: str | Iterable[str], prompt_name: str | None = None, prompt: str | None = None,
               batch_size: int = 32, show_progress_bar: bool | None = None,
               output_value: str | None = "sentence_embedding", precision: str = "float32",
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, device: Any = None,
               normalize_embeddings: bool = False, truncate_dim: int | None = None) -> Any:
        """sentence-transformers' encode: str -> 1-D, list / iterable -> 2-D (see Embedder.encode)."""
        del device  # always this CPU
        if output_value != "sentence_embedding":
            raise InputError(f"output_value: only 'sentence_embedding' is available, got {output_value!r}")
        if prompt is None and prompt_name is None:
            prompt_name = self.default_prompt_name
        if prompt is None and prompt_name is not None:
            if prompt_name not in self.prompts:
                raise InputError(f"prompt_name: {prompt_name!r} is not a prompt of this model "
                                 f"(known: {', '.join(sorted(self.prompts)) or 'none'})")
            prompt = self.prompts[prompt_name]
        dim = truncate_dim or self.truncate_dim
        if dim is None:
            out = self.embedder.encode(sentences, batch_size=batch_size, show_progress_bar=show_progress_bar,
                                       normalize_embeddings=normalize_embeddings, prompt=prompt,
                                       convert_to_numpy=True, precision=precision)
        else:
            # as sentence-transformers: cut first, then normalise and quantize the cut vectors
            if precision != "float32":
                raise InputError("truncate_dim: only with precision='float32' (the bundle's int8 ranges and bit "
                                 "layouts are for its full dim)")
            out = self.embedder.encode(sentences, batch_size=batch_size, show_progress_bar=show_progress_bar,
                                       prompt=prompt)[..., :dim]
            if normalize_embeddings:
                out = l2_normalize(np.atleast_2d(out)).reshape(out.shape)
        if convert_to_tensor:
            try:
                import torch
            except ImportError:
                raise InputError("convert_to_tensor=True: needs torch, which edge-embed does not use; install "
                                 "torch or take the numpy array (convert_to_numpy=True)") from None
            return torch.from_numpy(np.ascontiguousarray(out))
        return out if convert_to_numpy or out.ndim == 1 else list(out)

    def encode_query(self, sentences: str | Iterable[str], **kwargs: Any) -> Any:
        """encode() with the 'query' prompt when the model has one (sentence-transformers 5)."""
        if "query" in self.prompts and kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = "query"
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences: str | Iterable[str], **kwargs: Any) -> Any:
        """encode() with the 'document' / 'passage' / 'corpus' prompt when the model has one."""
        name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        if name and kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = name
        return self.encode(sentences, **kwargs)

    def similarity(self, a: Any, b: Any) -> npt.NDArray[np.float32]:
        """(len(a), len(b)) scores by the model's similarity_fn_name (cosine or dot)."""
        if self.similarity_fn_name == "cosine":
            return Embedder.similarity(a, b)
        x = np.atleast_2d(np.asarray(a, dtype=np.float32))
        y = np.atleast_2d(np.asarray(b, dtype=np.float32))
        out: npt.NDArray[np.float32] = x @ y.T
        return out


class FlagModel:
    """``FlagEmbedding.FlagModel`` over an edge-embed bundle.

    query_instruction_for_retrieval: prefix for encode_queries (default: the bundle's 'query'
    prompt; "" for none), put together by query_instruction_format ("{}{}").
    normalize_embeddings: True (default) gives unit vectors, False the pooled vectors as the
    model produces them. use_fp16 is accepted and ignored (one warning): the bundle runs as it
    was built. pooling_method must match the bundle's; max_length may not be below the
    bundle's (rebuild with --max-length to cut texts shorter).
    """

    def __init__(self, model_name_or_path: str | os.PathLike[str], *, normalize_embeddings: bool = True,
                 query_instruction_for_retrieval: str | None = None, query_instruction_format: str = "{}{}",
                 pooling_method: str | None = None, use_fp16: bool | None = None, **kwargs: Any) -> None:
        global _fp16_warned
        max_lengths = {k: kwargs.pop(k) for k in ("max_length", "query_max_length", "passage_max_length")
                       if k in kwargs}
        _check_kwargs("FlagModel", kwargs, HARMLESS_FLAG)
        self.embedder = load_model(model_name_or_path)
        if use_fp16 is not None and not _fp16_warned:
            _fp16_warned = True
            warnings.warn("FlagModel: use_fp16 is ignored; the edge-embed bundle runs as it was built "
                          f"({self.embedder.manifest.quantization.get('method', 'unknown')} on CPU)", stacklevel=2)
        if pooling_method is not None and pooling_method != self.embedder.manifest.pooling:
            raise InputError(f"pooling_method: {pooling_method!r}, but this bundle pools by "
                             f"{self.embedder.manifest.pooling!r}; build a bundle with --pooling {pooling_method}")
        for key, value in max_lengths.items():
            self._check_max_length(key, value)
        if "{}" not in query_instruction_format:
            raise InputError(f"query_instruction_format: needs two '{{}}' (instruction, query), "
                             f"got {query_instruction_format!r}")
        if query_instruction_for_retrieval is None:
            query_instruction_for_retrieval = self.embedder.prompts.get("query")
        self.query_instruction_for_retrieval = query_instruction_for_retrieval
        self.query_instruction_format = query_instruction_format
        self.normalize_embeddings = normalize_embeddings

    def _check_max_length(self, key: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{key}: expected a positive integer, got {value!r}")
        if value < self.embedder.max_length:
            raise InputError(f"{key}={value}: this bundle cuts texts at {self.embedder.max_length} tokens; "
                             f"build one with --max-length {value} for shorter inputs")

    def __repr__(self) -> str:
        return f"FlagModel({str(self.embedder.path)!r}, dim={self.embedder.dim})"

    def encode_queries(self, queries: str | Iterable[str], batch_size: int = 256, max_length: int | None = None,
                       convert_to_numpy: bool = True) -> Any:
        """Queries with the retrieval instruction in front."""
        instr = self.query_instruction_for_retrieval
        if instr:
            fmt = self.query_instruction_format
            queries = fmt.format(instr, queries) if isinstance(queries, str) else (fmt.format(instr, q)
                                                                                    for q in _texts(queries))
        return self.encode(queries, batch_size=batch_size, max_length=max_length, convert_to_numpy=convert_to_numpy)

    def encode_corpus(self, corpus: str | Iterable[str], batch_size: int = 256, max_length: int | None = None,
                      convert_to_numpy: bool = True) -> Any:
        """Passages, no instruction."""
        return self.encode(corpus, batch_size=batch_size, max_length=max_length, convert_to_numpy=convert_to_numpy)

    def encode(self, sentences: str | Iterable[str], batch_size: int = 256, max_length: int | None = None,
               convert_to_numpy: bool = True) -> Any:
        """Texts as they are: a str gives a 1-D vector, a list a 2-D array."""
        if max_length is not None:
            self._check_max_length("max_length", max_length)
        emb = self.embedder
        single = isinstance(sentences, str)
        texts: Iterable[str] = [sentences] if isinstance(sentences, str) else _texts(sentences)
        out = emb._encode(texts, batch_size, None, "unit" if self.normalize_embeddings else "raw", "", True, "float32")
        if single:
            return out[0]
        return out if convert_to_numpy else list(out)


def _texts(items: Any) -> Iterable[str]:
    if isinstance(items, bytes) or not isinstance(items, Iterable):
        raise InputError(f"sentences: expected a str or a list of str, got {type(items).__name__}")
    return items
