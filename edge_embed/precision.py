"""Output precisions of ``Embedder.encode``: float32, int8, uint8, binary, ubinary.

The layouts are sentence-transformers' (``sentence_transformers.quantization.quantize_embeddings``):
binary/ubinary pack the sign bits (``> 0``) eight dimensions to a byte, binary shifted to
int8; int8/uint8 map each dimension's [min, max] range onto 256 steps. The ranges are not
computed from the texts being encoded (a single query has no range): the build records
them in the manifest key ``int8_ranges``, from the bundle's own vectors of its probe set.
Unlike sentence-transformers, values outside a recorded range are clipped to its ends
instead of wrapping around, and bits are packed per row (the same bytes as sentence-transformers'
whole-array packing when dim is a multiple of 8, as 384 and 768 are). Pure numpy; does not build or read models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InputError

__all__ = ["PRECISIONS", "quantize", "ranges_array"]

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def ranges_array(value: dict[str, Any]) -> npt.NDArray[np.float32]:
    """The (2, dim) float32 array of a validated ``int8_ranges`` (sentence-transformers' ``ranges``)."""
    return np.asarray([value["min"], value["max"]], dtype=np.float32)


def quantize(vectors: npt.NDArray[np.float32], precision: str,
             ranges: npt.NDArray[np.float32] | None = None) -> npt.NDArray[Any]:
    """(n, dim) float32 -> the precision's layout; ranges (2, dim) is needed by int8 and uint8."""
    if precision == "float32":
        return vectors
    if precision in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    if precision in ("int8", "uint8"):
        if ranges is None:
            raise InputError(f"precision={precision!r}: needs the bundle's int8_ranges")
        starts = ranges[0]
        steps = (ranges[1] - ranges[0]) / 255
        scaled: npt.NDArray[np.float32] = (vectors - starts) / steps
        if precision == "uint8":
            return np.clip(scaled, 0, 255).astype(np.uint8)
        return np.clip(scaled - 128, -128, 127).astype(np.int8)
    raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
