"""Fuzzing the Python API and the CLI with hypothesis (bounded, derandomized: the same
examples every run). Whatever comes in, the only exceptions are edge-embed's own; vectors
are finite, unit norm and batch-invariant; the CLI, given mostly valid command lines with
fuzzed values and input files, does what they ask, refuses broken ones in one line (exit 1)
or with its usage (exit 2), and never prints a traceback."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge_embed import EdgeEmbedError, Embedder
from edge_embed.cli import main

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

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


def _run_cli(argv: list[str]) -> tuple[int, bytes, str]:
    err = io.StringIO()
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # with a .buffer, as a real stdout has (npy)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: usage errors
            code = e.code if isinstance(e.code, int) else 2
    out.flush()
    return code, out.buffer.getvalue(), err.getvalue()  # type: ignore[attr-defined]


# one record of an input file or a TEXT argument: no newline (that would split it), anything else
record = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=40),
    st.lists(st.sampled_from([t for t in TRICKY if t != "\n" and not "\ud800" <= t <= "\udfff"]),
             max_size=12).map("".join),
    st.builds(lambda w, n: w * n, st.sampled_from(["word ", "边缘", "x" * 150 + " ", "\t"]), st.integers(1, 400)),
)
# flag values: a valid one, or (broken=True) one the CLI must refuse with exit 1 or 2
BAD = {
    "--threads": ["-1", "100000", "x", ""],
    "--batch-size": ["0", "-5", "many"],
    "-f": ["xml"],
    "--long-text": ["bogus"],
    "--stride": ["-1", "999", "s"],
    "--prompt": ["query", "nope"],  # the bundle has no prompts
    "--digest": ["sha256:" + "0" * 64, "md5:1"],
    "-m": ["nope", "in.txt"],
    "-o": ["dir", "missing/x", "/dev/full", "in.txt"],  # in.txt: the input file (-i is then given)
    "--workers": ["0", "-2"],
    "--input-format": ["xml"],
}


def _records(raw: bytes) -> list[str]:
    """What the CLI reads from a file: split on \\n only, a trailing \\r\\n or \\n removed."""
    lines = raw.decode("utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _check_vectors_out(fmt: str, data: bytes, n: int, dim: int) -> None:
    if fmt == "npy":
        v = np.load(io.BytesIO(data))
        check_vectors(v, n, dim)
        return
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert [r["index"] for r in rows] == list(range(n))
    check_vectors(np.array([r["embedding"] for r in rows], dtype=np.float32).reshape(n, dim), n, dim)


@settings(FUZZ, max_examples=32)
@given(data=st.data())
def test_cli_valid_command_lines_succeed_and_broken_ones_fail_in_one_line(
        minilm_int8: Path, int8: Embedder, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """Mostly valid command lines (valid subcommand and flags, fuzzed values and input files), one
    in four with a broken flag: a valid one exits 0 with one well-formed vector per record, and an
    input file that is not UTF-8 or a text over max_length with --long-text error exits 1 in
    one line; a broken one exits 1 or 2. Never a traceback, a partial file or a changed input."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "dir").mkdir()
    texts = data.draw(st.lists(record, max_size=6))
    # (hypothesis favours the first of sampled_from's values: the valid one comes first)
    bad_utf8 = data.draw(st.sampled_from([False] * 7 + [True]))
    raw = "".join(t + data.draw(st.sampled_from(["\n", "\r\n"])) for t in texts).encode("utf-8")
    if bad_utf8:
        raw += b"caf\xe9\n"
    broken = data.draw(st.sampled_from([None] * 3 * len(BAD) + sorted(BAD)))  # one flag in four broken

    chosen: list[str] = []  # the broken value drawn

    def value(flag: str, good: Any) -> str:
        if flag != broken:
            return str(data.draw(good) if isinstance(good, st.SearchStrategy) else good)
        chosen.append(data.draw(st.sampled_from(BAD[flag])))
        return str(tmp / chosen[0]) if flag in ("-m", "-o") and not chosen[0].startswith("/") else chosen[0]

    sub = data.draw(st.sampled_from(["embed", "embed", "embed", "info"]
                                    + (["embed-corpus"] if importlib.util.find_spec("pyarrow") else [])))
    fmt, over = "jsonl", False
    if sub == "info":
        raw, texts, bad_utf8 = b"", [], False
        argv = ["info", value("-m", minilm_int8)]
        if data.draw(st.booleans()):
            argv.append("--verify")
        if data.draw(st.booleans()):
            argv.append("--json")
        if data.draw(st.booleans()) or broken == "--digest":
            argv += ["--digest", value("--digest", int8.manifest.digest)]
    elif sub == "embed-corpus":
        raw = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode("utf-8")
        raw += b'{"id": 99, "text": "caf\xe9"}\n' if bad_utf8 else b""
        argv = ["embed-corpus", str(tmp / "in.jsonl"), "-o", str(tmp / "corpus"), "-m", value("-m", minilm_int8),
                "--workers", value("--workers", st.just(1)), "--no-progress"]
        for flag, good in (("--batch-size", st.integers(1, 40)), ("--input-format", st.just("jsonl"))):
            if data.draw(st.booleans()) or broken == flag:
                argv += [flag, value(flag, good)]
    else:
        long_text = data.draw(st.sampled_from(["truncate", "error", "window"]))
        argv = ["embed", "-m", value("-m", minilm_int8), "--long-text", value("--long-text", long_text)]
        fmt = data.draw(st.sampled_from(["jsonl", "npy"]))
        argv += ["-f", value("-f", fmt)]
        to_file = data.draw(st.booleans()) or broken == "-o"
        if to_file:
            argv += ["-o", value("-o", tmp / f"out.{fmt}")]
        options = {"--threads": st.integers(0, 2), "--batch-size": st.integers(1, 40), "--prompt": None,
                   "--digest": int8.manifest.digest, "--stride": st.integers(0, (int8.max_length - 2) // 2)}
        for flag, good in options.items():
            if flag == broken or (good is not None and data.draw(st.integers(0, 3)) == 0
                                  and (flag != "--stride" or long_text == "window")):
                argv += [flag, value(flag, good)]
        argv += data.draw(st.sampled_from([["--progress"], ["--no-progress"], ["--no-verify"], []]))
        from_file = data.draw(st.booleans()) or bad_utf8 or not texts or chosen == ["in.txt"]
        if from_file:
            argv += ["-i", str(tmp / "in.txt")]
            texts = _records(raw) if not bad_utf8 else texts
        else:
            argv += ["--", *texts]
            bad_utf8 = False
        over = long_text == "error" and any(n > int8.max_length for n in int8.token_count(texts))
    # a broken value the command line holds (a broken flag the subcommand does not take is not drawn),
    # less writing nothing to a full device, which does not fail
    expect_fail = (bool(chosen) and not (chosen == ["/dev/full"] and fmt == "jsonl" and not texts)) or bad_utf8
    expect_fail = expect_fail or over
    (tmp / "in.txt").write_bytes(raw)
    (tmp / "in.jsonl").write_bytes(raw)

    code, out, err = _run_cli(argv)
    event(f"{sub}: exit {code}")  # pytest --hypothesis-show-statistics shows how deep the examples go
    assert "Traceback" not in err, (argv, err)
    assert (tmp / "in.txt").read_bytes() == raw and (tmp / "in.jsonl").read_bytes() == raw, argv
    assert not list(tmp.rglob(".*.partial")), argv
    if expect_fail:
        assert code in (1, 2), (argv, code, err)
    else:
        assert code == 0, (argv, code, err)
    if code == 1:
        lines = err.strip().splitlines()
        errors = [line for line in lines if line.startswith("edge-embed: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], (argv, err)
        assert "--progress" in argv or len(lines) == 1, (argv, err)
    if code != 0:
        return
    if sub == "info":
        if "--json" in argv:
            manifest, _ = json.JSONDecoder().raw_decode(out.decode("utf-8"))
            assert manifest["dim"] == int8.dim
        return
    if sub == "embed-corpus":
        pq = pytest.importorskip("pyarrow.parquet")
        assert sum(pq.read_table(f).num_rows for f in (tmp / "corpus").glob("*.parquet")) == len(texts)
        return
    if chosen == ["/dev/full"]:
        return
    _check_vectors_out(fmt, (tmp / f"out.{fmt}").read_bytes() if "-o" in argv else out, len(texts), int8.dim)
