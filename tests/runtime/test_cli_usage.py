"""CLI exit codes: usage errors exit 2 (argparse's and edge-embed's own), user errors 1, one line each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_embed.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "hi"], "-m/--model: name a bundle directory"),
        (["embed", "-m", "{b}"], "nothing to embed"),
        (["embed", "-m", "{b}", "-i", "x.txt", "hi"], "not both"),
        (["embed", "-m", "{b}", "--chunk-size", "0", "hi"], "--chunk-size"),
        (["build", "-o", "out/x"], "build: nothing to build for -o out/x; give a SOURCE (recipe name, model "
                                   "directory or hub id) or --from-onnx MODEL_ONNX --tokenizer TOKENIZER_JSON"),
        (["build"], "build: nothing to build; give a SOURCE"),
        (["build", "--from-onnx", "m.onnx", "--tokenizer", "t.json"], "--from-onnx needs -o DIR"),
        (["eval", "-m", "{b}"], "eval: nothing to evaluate"),
        (["bench"], "-m/--model"),
    ],
)
def test_own_usage_errors_exit_2_with_one_line(minilm_int8: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                message: str) -> None:
    monkeypatch.delenv("EDGE_EMBED_MODEL", raising=False)
    assert main([a.replace("{b}", str(minilm_int8)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-embed: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["embed", "--format", "xml"], ["build", "x", "--method"],
                                  ["nosuchverb"], ["embed", "--no-such-flag"], []])
def test_argparse_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_user_error_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "-m", "/nonexistent/bundle", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edge-embed: error: /nonexistent/bundle: no such bundle")
    assert len(err.strip().splitlines()) == 1


NOISE = """\
import logging, sys, warnings
from edge_embed.cli import quiet_third_party
logging.basicConfig()  # a handler on the root logger, as the build stack's imports leave one
with quiet_third_party(verbose=sys.argv[1] == "verbose"):
    warnings.warn("torch.tensor results are registered as constants", UserWarning)
    warnings.warn("`torch_dtype` is deprecated", FutureWarning)
    logging.warning("Please consider to run pre-processing before quantization.")
    logging.getLogger("transformers.modeling_utils").warning("deprecated argument")
    logging.getLogger("optimum.exporters.onnx").warning("Weight deduplication check requires accelerate")
    sys.stderr.write("edge-embed build: [1/5] own progress\\n")
assert logging.root.manager.disable == logging.NOTSET  # restored afterwards
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_third_party_noise_is_hidden_unless_verbose(mode: str) -> None:
    r = subprocess.run([sys.executable, "-c", NOISE, mode], capture_output=True, text=True, cwd=REPO, check=True)
    assert "own progress" in r.stderr
    for text in ("registered as constants", "torch_dtype", "pre-processing", "deprecated argument",
                 "Weight deduplication"):
        assert (text in r.stderr) == (mode == "verbose"), r.stderr
