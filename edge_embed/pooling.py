"""Pooling and normalisation in pure numpy.

Deliberately knows nothing about models or manifests: the embedder picks the function
named by the manifest's ``pooling`` key.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = ["POOLERS", "cls_pool", "l2_normalize", "mean_pool"]

Array = npt.NDArray[np.float32]


def cls_pool(hidden: Array, mask: npt.NDArray[np.int64]) -> Array:
    """First token's hidden state, shape (batch, dim)."""
    del mask  # CLS is always position 0, padding is on the right
    return np.ascontiguousarray(hidden[:, 0, :], dtype=np.float32)


def mean_pool(hidden: Array, mask: npt.NDArray[np.int64]) -> Array:
    """Mean over the tokens the attention mask keeps, shape (batch, dim)."""
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden * m).sum(axis=1)
    # an all-zero mask cannot come from the tokenizer (it always adds [CLS]/[SEP]),
    # but guard the division the way sentence-transformers does
    counts = np.clip(m.sum(axis=1), 1e-9, None)
    pooled: Array = (summed / counts).astype(np.float32)
    return pooled


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """Rows scaled to unit L2 norm; an all-zero row stays zero instead of NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: Array = (x / np.maximum(norms, eps)).astype(np.float32)
    return unit


POOLERS: dict[str, Callable[[Array, npt.NDArray[np.int64]], Array]] = {
    "cls": cls_pool,
    "mean": mean_pool,
}
