"""Progress output: live on a terminal, whole lines per tenth of the work in a log."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from edge_embed.progress import Progress
from tests.conftest import REPO


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_one_line_per_tenth() -> None:
    log = io.StringIO()
    with Progress("embedding", 5000, stream=log) as p:
        for _ in range(5000):
            p.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 10, lines
    assert lines[0].startswith("embedding: 500/5000 texts (10%)")
    assert lines[-1].startswith("embedding: 5000/5000 texts (100%)")


def test_log_with_coarse_steps_skips_no_final_line() -> None:
    log = io.StringIO()
    with Progress("probes", 7, stream=log, unit="probes") as p:
        p.update(3)  # 42 %: crosses four tenths at once, one line
        p.update(4)
    assert [ln.split(" (")[0] for ln in log.getvalue().splitlines()] == ["probes: 3/7 probes", "probes: 7/7 probes"]


def test_log_with_unknown_total_writes_the_final_count_on_close() -> None:
    log = io.StringIO()
    p = Progress("embedding", None, stream=log)
    for _ in range(300):
        p.update(1)
    p.close()
    p.close()  # closing twice writes nothing more
    assert log.getvalue().count("\n") == 1 and log.getvalue().startswith("embedding: 300 texts")


def test_terminal_is_live_and_ends_with_a_newline() -> None:
    tty = Terminal()
    with Progress("embedding", 1000, stream=tty) as p:
        for _ in range(10):
            p.update(100)
    out = tty.getvalue()
    assert out.startswith("\r") and out.endswith("\n") and out.count("\n") == 1
    assert out.rstrip("\n").split("\r")[-1].startswith("embedding: 1000/1000 texts (100%)")


def test_disabled_writes_nothing() -> None:
    log = io.StringIO()
    with Progress("x", 10, stream=log, enabled=False) as p:
        p.update(10)
    assert log.getvalue() == ""


@pytest.mark.parametrize("live", [False, True])
def test_detail_is_shown(live: bool) -> None:
    out = Terminal() if live else io.StringIO()
    with Progress("bench", 2, unit="measurements", stream=out) as p:
        p.update(1, "minilm: 128 tokens, batch 32")
        p.update(1, "minilm: cold start x3")
    assert "- minilm: 128 tokens, batch 32" in out.getvalue() and "- minilm: cold start x3" in out.getvalue()


def test_cli_progress_into_a_file_is_line_per_tenth(minilm_int8: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line number {i}\n" for i in range(200)), encoding="utf-8")
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        r = subprocess.run([sys.executable, "-m", "edge_embed.cli", "embed", "-m", str(minilm_int8), "-i", str(src),
                            "-f", "npy", "-o", str(tmp_path / "o.npy"), "--chunk-size", "20", "--progress"],
                           cwd=REPO, stderr=err, stdout=subprocess.DEVNULL, timeout=300)
    assert r.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("embedding: ")]
    assert [ln.split(" texts")[0] for ln in lines] == [f"embedding: {n}/200" for n in range(20, 201, 20)]
