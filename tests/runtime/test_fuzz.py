"""Fuzzing the Python API and the CLI with hypothesis (bounded, derandomized: the same
examples every run). Whatever comes in, the only exceptions are edge-embed's own; vectors
are finite, unit norm and batch-invariant; the CLI exits 0, 1 or 2 and never prints a traceback."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_embed import EdgeEmbedError, Embedder
from edge_embed.cli import main

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLI_FUZZ = settings(FUZZ, max_examples=20)

TRICKY = ["\udce9", "\ud800", "\udfff", "\x00", "\r", "\n", "\t", " ", "\u0301", "\ufeff", "☃", "\U0001F600", "边",
          "a", "word", "[CLS]", "[SEP]", "##ing", "\x1c"]
unicode_text = st.text(st.characters(), max_size=60)  # any code point hypothesis draws, surrogates excluded
tricky_text = st.lists(st.sampled_from(TRICKY), max_size=40).map("".join)  # surrogates, controls, specials included
huge_text = st.builds(lambda w, n: w * n, st.sampled_from(["word ", "ab", "边缘", " ", "\n\n", "x" * 150 + " "]),
                      st.integers(1, 20_000))
any_text = st.one_of(unicode_text, tricky_text, huge_text, st.just(""))
element = st.one_of(any_text, any_text, any_text, st.integers(), st.none(), st.binary(max_size=5), st.floats())
container = st.one_of(
    st.lists(element, max_size=6),
    st.lists(any_text, max_size=6).map(tuple),
    any_text,  # a bare string: an error, not per-character embedding
    st.binary(max_size=5), st.none(), st.integers(), st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
)


def check_vectors(v: Any, n: int, dim: int) -> None:
    assert isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == (n, dim)
    assert np.isfinite(v).all()
    if n:
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)


@FUZZ
@given(texts=container,
       prompt=st.one_of(st.none(), st.just("query"), st.text(max_size=4), st.integers()),
       batch_size=st.one_of(st.integers(-2, 40), st.none(), st.floats(allow_nan=True), st.booleans(), st.just("8")),
       long_text=st.sampled_from(["truncate", "error", "window", "slide", None]),
       stride=st.one_of(st.none(), st.integers(-3, 200)))
def test_embed_raises_only_its_own_errors(int8: Embedder, texts: Any, prompt: Any, batch_size: Any,
                                          long_text: Any, stride: Any) -> None:
    try:
        v = int8.embed(texts, prompt=prompt, batch_size=batch_size, long_text=long_text, stride=stride)
    except EdgeEmbedError:
        return
    check_vectors(v, len(texts), int8.dim)


@FUZZ
@given(texts=st.lists(any_text, max_size=5), detailed=st.booleans())
def test_token_paths_raise_only_their_own_errors(int8: Embedder, texts: list[str], detailed: bool) -> None:
    try:
        if detailed:
            texts = [t[:3000] for t in texts]  # a few windows each: a huge text makes hundreds
            res = int8.embed_detailed(texts, long_text="window")
            assert res.windows is not None and len(res.windows) == len(texts)
            check_vectors(res.vectors, len(texts), int8.dim)
        else:
            encs = int8.tokenize(texts)
            assert all(len(e.ids) <= int8.max_length for e in encs)
    except EdgeEmbedError:
        pass


clean_text = st.one_of(st.text(st.characters(exclude_categories=["Cs"]), max_size=80),
                       st.builds(lambda w, n: w * n, st.sampled_from(["word ", "ab ", "边"]), st.integers(1, 300)))


@settings(FUZZ, max_examples=8)
@given(texts=st.lists(clean_text, min_size=1, max_size=4), long_text=st.sampled_from(["truncate", "window"]),
       batch_size=st.integers(1, 6))
def test_vectors_do_not_depend_on_the_batch(fp32: Embedder, texts: list[str], long_text: str, batch_size: int) -> None:
    together = fp32.embed(texts, batch_size=batch_size, long_text=long_text)
    check_vectors(together, len(texts), fp32.dim)
    alone = np.vstack([fp32.embed([t], long_text=long_text) for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-5)


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    out = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: usage errors
            code = e.code if isinstance(e.code, int) else 2
    return code, err.getvalue()


@CLI_FUZZ
@given(data=st.data())
def test_cli_exits_0_1_or_2_without_tracebacks(minilm_int8: Path, tmp_path_factory: pytest.TempPathFactory,
                                               data: st.DataObject) -> None:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "dir").mkdir()
    (tmp / "in.txt").write_bytes(data.draw(st.sampled_from([b"a\nb\n", b"\xff\n", b"x\r\ny\rz", b"", b"ok\n" * 3])))
    word = st.one_of(st.lists(st.sampled_from(TRICKY), min_size=1, max_size=8).map("".join),
                     st.text(min_size=1, max_size=8))
    model = data.draw(st.sampled_from([str(minilm_int8), str(minilm_int8), str(tmp / "nope"), str(tmp / "in.txt")]))
    argv = ["embed", "-m", model]
    options = {
        "--threads": st.sampled_from(["0", "1", "-1", "100000", "x", ""]),
        "--batch-size": st.sampled_from(["1", "0", "-5", "7", "many"]),
        "-f": st.sampled_from(["jsonl", "npy", "xml"]),
        "-o": st.sampled_from([str(tmp / "out.npy"), str(tmp / "out.jsonl"), str(tmp / "dir"),
                               str(tmp / "missing" / "x"), str(tmp / "in.txt"), "/dev/full"]),
        "--long-text": st.sampled_from(["truncate", "error", "window", "bogus"]),
        "--stride": st.sampled_from(["0", "16", "-1", "999", "s"]),
        "--prompt": st.sampled_from(["query", "nope"]),
        "--digest": st.sampled_from(["sha256:" + "0" * 64, "md5:1", ""]),
        "-i": st.sampled_from([str(tmp / "in.txt"), str(tmp / "absent.txt"), str(tmp / "dir")]),
    }
    for flag in data.draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True)):
        argv += [flag, data.draw(options[flag])]
    if "-i" not in argv:
        argv += data.draw(st.lists(word, min_size=0, max_size=3))
    code, err = _run_cli(argv)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 1:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edge-embed: error: "), (argv, err)
    assert not list(tmp.glob(".*.partial")), argv
