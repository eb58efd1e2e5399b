"""Calibration text -> an onnxruntime CalibrationDataReader for static INT8.

Reads the user's own corpus (one text per line, or JSONL with a ``text`` field), draws a
seeded sample so two builds from the same file calibrate identically, and tokenises it
with the bundle's own tokenizer.json, so activations are observed at the lengths the
model will really run. Does not quantize; int8.py consumes the reader.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import BuildError

__all__ = ["CalibrationSet", "TextCalibrationReader", "load_calibration"]

DEFAULT_SIZE = 200
DEFAULT_SEED = 0


@dataclass(frozen=True)
class CalibrationSet:
    path: str
    file_sha256: str
    available: int
    texts: list[str]
    seed: int

    def describe(self) -> dict[str, Any]:
        """What the manifest records: enough to reproduce or audit the calibration."""
        return {
            "file": Path(self.path).name,
            "file_sha256": self.file_sha256,
            "texts_available": self.available,
            "texts_used": len(self.texts),
            "sample_sha256": hashlib.sha256("\n".join(self.texts).encode()).hexdigest(),
            "seed": self.seed,
        }


def _texts(path: Path, raw: str) -> list[str]:
    lines = raw.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if not first.lstrip().startswith("{"):
        return [ln.strip() for ln in lines if ln.strip()]
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BuildError(f"{path}:{n}: not a JSON line ({e.msg}); give JSONL with a 'text' field "
                             "or plain text, one text per line") from None
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise BuildError(f"{path}:{n}: JSONL rows need a string 'text' field")
        if text.strip():
            out.append(text.strip())
    return out


def load_calibration(path: str | Path, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> CalibrationSet:
    """Read and sample the calibration corpus; every problem is a BuildError raised before any work."""
    p = Path(path)
    if size < 1:
        raise BuildError(f"--calibration-size: must be at least 1, got {size}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise BuildError(f"{p}: cannot read the calibration file ({e.strerror}); give a text file "
                         "(one text per line) or JSONL with a 'text' field") from None
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BuildError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    texts = _texts(p, raw)
    if not texts:
        raise BuildError(f"{p}: the calibration file holds no text; give a few hundred texts from your own "
                         "corpus, one per line (or JSONL with a 'text' field)")
    # unique texts, in file order, then a seeded sample: the same file and seed give the same set
    unique = list(dict.fromkeys(texts))
    sample = unique if len(unique) <= size else random.Random(seed).sample(unique, size)
    return CalibrationSet(str(p), hashlib.sha256(data).hexdigest(), len(unique), sample, seed)


def _reader_base() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader  # type: ignore[no-any-return]


class TextCalibrationReader(_reader_base()):  # type: ignore[misc]
    """Feeds tokenised calibration texts to onnxruntime's calibrator.

    ``fixed_length=False`` gives one text per batch at its real length (MinMax accepts
    any shapes). Entropy and Percentile stack histograms and need one shape, so with
    ``fixed_length=True`` every batch is padded to the longest sampled text, mask zero.
    """

    def __init__(self, texts: list[str], tokenizer_json: Path, input_names: list[str],
                 fixed_length: bool = False, batch_size: int = 8) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_json))
        self.encodings = tok.encode_batch(texts)
        self.input_names = input_names
        self.fixed = fixed_length
        self.batch_size = batch_size if fixed_length else 1
        self.length = max(len(e.ids) for e in self.encodings)
        self._it = iter(self._batches())

    def _batches(self) -> list[dict[str, np.ndarray]]:
        out = []
        for i in range(0, len(self.encodings), self.batch_size):
            chunk = self.encodings[i:i + self.batch_size]
            n = self.length if self.fixed else max(len(e.ids) for e in chunk)
            ids = np.zeros((len(chunk), n), np.int64)
            mask = np.zeros((len(chunk), n), np.int64)
            types = np.zeros((len(chunk), n), np.int64)
            for r, e in enumerate(chunk):
                ids[r, :len(e.ids)] = e.ids
                mask[r, :len(e.ids)] = e.attention_mask
                types[r, :len(e.ids)] = e.type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out.append({k: v for k, v in feed.items() if k in self.input_names})
        return out

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches())

    def __len__(self) -> int:
        return (len(self.encodings) + self.batch_size - 1) // self.batch_size
