"""Pooling against hand-written numpy."""

from __future__ import annotations

import numpy as np

from edge_embed.pooling import cls_pool, l2_normalize, mean_pool


def test_mean_pool_ignores_padding() -> None:
    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    got = mean_pool(h, mask)
    want = np.array([(h[0, 0] + h[0, 1]) / 2, h[1].mean(axis=0)], dtype=np.float32)
    np.testing.assert_allclose(got, want)
    assert got.dtype == np.float32


def test_cls_pool_takes_first_token() -> None:
    h = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(cls_pool(h, np.ones((3, 5), np.int64)), h[:, 0, :])


def test_l2_normalize_unit_and_zero_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    got = l2_normalize(x)
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0]])
    assert not np.isnan(got).any()
