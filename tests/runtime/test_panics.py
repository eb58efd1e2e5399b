"""A tokenizer that panics (Rust) is one line of ours on stderr, not Rust's report and backtrace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from edge_embed import Embedder, InputError
from edge_embed.manifest import Manifest
from edge_embed.panics import quiet_panics, without_panic_reports

REPO = Path(__file__).resolve().parents[2]


def _panicking_json(good: str) -> str:
    """The bundle's tokenizer with a template naming a second sequence: panics on every text."""
    tok = json.loads(good)
    tok["post_processor"]["single"] = [{"Sequence": {"id": "B", "type_id": 0}}]
    return json.dumps(tok)


def test_a_panicking_bundle_tokenizer_is_one_stderr_line_from_the_cli(minilm_int8: Path, tmp_path: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(minilm_int8, root)
    (root / "tokenizer.json").write_text(_panicking_json((root / "tokenizer.json").read_text("utf-8")), "utf-8")
    m = Manifest.read(root)
    m.files.update(Manifest.describe_files(root, ["tokenizer.json"]))
    m.write(root)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUST_BACKTRACE": "1"}  # the noisiest report Rust writes
    r = subprocess.run([sys.executable, "-m", "edge_embed.cli", "embed", "-m", str(root), "hello"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "tokenizer.json" in lines[0] and "PanicException" in lines[0]


def test_a_panic_while_embedding_is_an_input_error_and_other_stderr_output_survives(
        int8: Embedder, capfd: pytest.CaptureFixture[str]) -> None:
    emb = Embedder(int8.path, int8.manifest, int8.session, Tokenizer.from_str(_panicking_json(int8._tok.to_str())))
    capfd.readouterr()
    with pytest.raises(InputError, match=r"texts\[0\]: the bundle's tokenizer failed"):
        emb.embed(["any text at all", "and another"])
    with quiet_panics():
        os.write(2, b"a line someone else wrote meanwhile\n")
    err = capfd.readouterr().err
    assert "panicked" not in err and "backtrace" not in err, err
    assert err == "a line someone else wrote meanwhile\n"


def test_panic_reports_are_cut_out_and_nothing_else() -> None:
    report = (b"\nthread '<unnamed>' (2613) panicked at src/processors/template.rs:556:54:\n"
              b"index out of bounds: the len is 1 but the index is 1\nstack backtrace:\n"
              b"   0: __rustc::rust_begin_unwind\n   1: core::panicking::panic_fmt\n"
              b"note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n")
    short = (b"thread 'main' panicked at src/lib.rs:1:1:\nboom\n"
             b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n")
    full = (b"thread '<unnamed>' panicked at src/a.rs:1:2:\nboom\nstack backtrace:\n   0: f\n"
            b"             at src/a.rs:1\n")
    data = (b"before\n" + report + b"between\n" + short + full + b"after: thread 'x' panicked at is only text\n"
            + full + b"kept\n" + short)
    assert without_panic_reports(data) == b"before\nbetween\nafter: thread 'x' panicked at is only text\nkept\n"
