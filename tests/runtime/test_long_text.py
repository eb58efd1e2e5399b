"""long_text="truncate" | "error" | "window" on embed / embed_detailed and embed --long-text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder, InputError
from edge_embed.cli import main

LONG = " ".join(f"sentence {i} talks about topic {i % 7} in a long document." for i in range(50))  # ~650 tokens
SHORT = "a short text"


def test_short_texts_are_the_same_in_every_mode(int8: Embedder) -> None:
    base = int8.embed([SHORT, "another one"])
    for mode in ("error", "window"):
        np.testing.assert_allclose(int8.embed([SHORT, "another one"], long_text=mode), base, atol=1e-6)


def test_window_is_the_token_weighted_mean_of_overlapping_windows(fp32: Embedder) -> None:
    # fp32: dynamic INT8 scales activations over the padded batch, so a window's vector moves
    # slightly with the windows it is batched with; fp32 is exact
    int8 = fp32
    res = int8.embed_detailed([LONG, SHORT], long_text="window", stride=16)
    assert res.windows is not None and res.truncated == 0
    w = res.windows[0]
    total = int8.token_count([LONG])[0]
    content, room = total - 2, int8.max_length - 2
    assert w.shape == (int(np.ceil((content - 16) / (room - 16))), 384)  # windows advance by room - stride
    assert res.windows[1].shape == (1, 384)
    # the first window holds the first max_length tokens: the truncated vector
    np.testing.assert_allclose(w[0], int8.embed([LONG])[0], atol=1e-5)
    tok = int8._tok_windows[16]
    enc = tok.encode(LONG)
    sizes = np.array([len(e.ids) for e in [enc, *enc.overflowing]], dtype=np.float32)
    assert sizes.max() <= int8.max_length and int(sizes.sum()) == int(res.tokens[0])
    mean = (sizes[:, None] * w).sum(axis=0) / sizes.sum()
    np.testing.assert_allclose(res.vectors[0], mean / np.linalg.norm(mean), atol=1e-5)
    assert abs(np.linalg.norm(res.vectors[0]) - 1) < 1e-5
    # overlapping windows really overlap: the last 16 content tokens of one open the next
    first, second = enc.ids[1:-1], enc.overflowing[0].ids[1:-1]
    assert first[-16:] == second[:16]


def test_window_is_batch_invariant(fp32: Embedder) -> None:
    texts = [LONG, SHORT, LONG[:1500]]
    both = fp32.embed(texts, long_text="window", batch_size=3)
    alone = np.vstack([fp32.embed([t], long_text="window") for t in texts])
    np.testing.assert_allclose(both, alone, atol=1e-5)


def test_window_differs_from_truncate_on_long_text(int8: Embedder) -> None:
    tail = LONG + " " + "zebras and giraffes graze on the savanna. " * 40
    a = int8.embed([tail])[0]
    b = int8.embed([tail], long_text="window")[0]
    q = int8.embed(["zebras and giraffes on the savanna"])[0]
    assert float(b @ q) > float(a @ q) + 0.05  # truncation never saw the end of the text


def test_error_mode_and_bad_arguments(int8: Embedder) -> None:
    with pytest.raises(InputError, match=r"texts\[1\]: longer than max_length=256"):
        int8.embed([SHORT, LONG], long_text="error")
    with pytest.raises(InputError, match="long_text: expected one of truncate, error, window"):
        int8.embed([SHORT], long_text="slide")
    with pytest.raises(InputError, match="stride: only used with long_text='window'"):
        int8.embed([SHORT], stride=8)
    for bad in (-1, 128, 1.5, True):
        with pytest.raises(InputError, match="stride: expected an integer from 0 to 127"):
            int8.embed([SHORT], long_text="window", stride=bad)  # type: ignore[arg-type]


def test_cli_long_text(minilm_int8: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "-m", str(minilm_int8), "--long-text", "window", "--stride", "16", LONG]) == 0
    out = capsys.readouterr()
    row = np.array(json.loads(out.out)["embedding"])
    want = Embedder.load(minilm_int8).embed([LONG], long_text="window", stride=16)[0]
    np.testing.assert_allclose(row, want, atol=1e-6)
    assert "truncated" not in out.err
    assert main(["embed", "-m", str(minilm_int8), "--long-text", "error", LONG]) == 1
    err = capsys.readouterr().err
    assert "texts[0]: longer than max_length=256" in err and len(err.strip().splitlines()) == 1
