"""`edge-embed embed` outputs: never lose data, never leave a file that looks finished.

Through main([...]) in-process, and in a subprocess for signals.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder
from edge_embed.cli import main

from ..conftest import REPO


def one_line_error(err: str, *needles: str) -> None:
    assert err.startswith("edge-embed: error: "), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_output_equal_to_input_is_refused_and_the_input_kept(minilm_int8: Path, tmp_path: Path, how: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n", encoding="utf-8")
    out = src
    if how == "symlink":
        out = tmp_path / "link.txt"
        out.symlink_to(src)
    elif how == "hardlink":
        out = tmp_path / "hard.txt"
        os.link(src, out)
    assert main(["embed", "-m", str(minilm_int8), "-i", str(src), "-o", str(out)]) == 1
    one_line_error(capsys.readouterr().err, "is the input file")
    assert src.read_text(encoding="utf-8") == "one\ntwo\n"


def test_failure_at_line_1_keeps_an_existing_output(minilm_int8: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"\xff bad\nfine\n")
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n", encoding="utf-8")
    assert main(["embed", "-m", str(minilm_int8), "-i", str(src), "-o", str(out)]) == 1
    one_line_error(capsys.readouterr().err, "line 1 is not UTF-8")
    assert out.read_text(encoding="utf-8") == "precious\n"
    assert leftovers(tmp_path) == []


def test_bad_byte_late_in_the_input_leaves_no_output(minilm_int8: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"a\n" * 2999 + b"bad \xc3\x28 byte\nlast\n")
    out = tmp_path / "out.jsonl"
    # chunks of 1500: one is embedded and written before line 3000 is read
    assert main(["embed", "-m", str(minilm_int8), "-i", str(src), "-o", str(out), "--chunk-size", "1500",
                 "--batch-size", "250"]) == 1
    one_line_error(capsys.readouterr().err, "line 3000 is not UTF-8")
    assert not out.exists() and leftovers(tmp_path) == []


def test_npy_output_path_is_exact_and_implied_by_the_extension(minilm_int8: Path, tmp_path: Path) -> None:
    exact = tmp_path / "vectors.bin"
    assert main(["embed", "-m", str(minilm_int8), "-f", "npy", "-o", str(exact), "a", "b"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.bin"]
    arr = np.load(exact)
    assert arr.shape == (2, 384) and arr.dtype == np.float32
    implied = tmp_path / "x.npy"
    assert main(["embed", "-m", str(minilm_int8), "-o", str(implied), "a", "b"]) == 0
    np.testing.assert_array_equal(np.load(implied), arr)
    jsonl = tmp_path / "x.jsonl"
    assert main(["embed", "-m", str(minilm_int8), "-o", str(jsonl), "a"]) == 0
    assert json.loads(jsonl.read_text(encoding="utf-8"))["index"] == 0


def test_output_file_gets_the_usual_permissions(minilm_int8: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["embed", "-m", str(minilm_int8), "-o", str(out), "a"]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("where", ["missing-dir", "directory", "read-only", "dev-full"])
def test_unwritable_outputs_are_one_line(minilm_int8: Path, tmp_path: Path, where: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    if where == "missing-dir":
        target, needle = tmp_path / "nope" / "out.jsonl", "does not exist"
    elif where == "directory":
        target, needle = tmp_path, "is a directory"
    elif where == "read-only":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        if os.access(ro, os.W_OK):  # root ignores modes: /proc refuses new files to everyone
            ro = Path("/proc")
        target, needle = ro / "out.jsonl", "cannot write there"
    else:
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full on this system")
        target, needle = Path("/dev/full"), "No space left on device"
    assert main(["embed", "-m", str(minilm_int8), "-o", str(target), "some text"]) == 1
    one_line_error(capsys.readouterr().err, needle)
    if where == "read-only" and target.parent != Path("/proc"):
        assert list(target.parent.iterdir()) == []


def test_full_disk_leaves_no_partial_file(minilm_int8: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("mounting a 64 KiB tmpfs needs root (the /dev/full case covers the message)")
    try:
        (mnt / "out.jsonl").write_text("old\n")
        # ~200 vectors of 384 floats as JSON: about 1.6 MB, far over 64 KiB
        assert main(["embed", "-m", str(minilm_int8), "-o", str(mnt / "out.jsonl"),
                     *[f"text {i}" for i in range(200)]]) == 1
        one_line_error(capsys.readouterr().err, "No space left on device")
        assert (mnt / "out.jsonl").read_text() == "old\n" and leftovers(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_records_split_on_newline_only(minilm_int8: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"carriage\rreturn inside\r\nsecond\nthird")
    out = tmp_path / "out.npy"
    assert main(["embed", "-m", str(minilm_int8), "-i", str(src), "-o", str(out)]) == 0
    want = Embedder.load(minilm_int8).embed(["carriage\rreturn inside", "second", "third"])
    np.testing.assert_allclose(np.load(out), want, atol=1e-6)


def test_stdin_is_read_as_utf8_bytes(minilm_int8: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ok\r\nsplit\ronly here\n"), encoding="ascii"))
    assert main(["embed", "-m", str(minilm_int8), "-i", "-"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xe9t\xe9\n"), encoding="utf-8"))
    assert main(["embed", "-m", str(minilm_int8), "-i", "-"]) == 1
    one_line_error(capsys.readouterr().err, "stdin: line 2 is not UTF-8")


def test_undecodable_argv_is_one_line(minilm_int8: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of a latin-1 argument
    assert main(["embed", "-m", str(minilm_int8), "fine", bad]) == 1
    one_line_error(capsys.readouterr().err, "TEXT 2: not valid UTF-8")


@pytest.mark.parametrize("threads", ["100000", "-1"])
def test_threads_are_bounded(minilm_int8: Path, threads: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "-m", str(minilm_int8), "--threads", threads, "x"]) == 1
    one_line_error(capsys.readouterr().err, "threads")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_keeps_the_old_output(minilm_int8: Path, tmp_path: Path, sig: signal.Signals) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(f"sentence number {i} of a long input\n" for i in range(200_000)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("old\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "edge_embed.cli", "embed", "-m", str(minilm_int8), "-i", str(src),
                          "-o", str(out), "--chunk-size", "64"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until some vectors are written under the temporary name
            parts = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
            if parts and parts[0].stat().st_size > 0:
                break
            assert p.poll() is None, p.stderr.read() if p.stderr else ""
            time.sleep(0.05)
        else:
            pytest.fail("no partial output appeared")
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "Traceback" not in err
    assert out.read_text(encoding="utf-8") == "old\n" and leftovers(tmp_path) == []
