"""Every fenced python and bash block of README.md and docs/*.md runs, as a user would paste it.

Blocks run in a scratch folder laid out like the checkout (its folders linked in, `.venv`
linking to this interpreter's environment, `../shared` to the shared data when present),
with `models/minilm-int8` being the session's MiniLM INT8 bundle (what the README's first
command builds) and a bundle cache holding it under its hub id. A block needing the hub, a
Pi, a server left running or minutes of work carries `<!-- no-run: reason -->` on the line
before it. The README's two opening commands are what CI runs itself; they are exempt, and
their build and embed steps are checked here through the session's bundle instead.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\s*$")
NO_RUN = re.compile(r"^<!-- no-run: (.+\S) -->$")


def blocks(path: Path) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, no-run reason) of each fenced block."""
    out: list[tuple[int, str, str, str | None]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            start, lang = i, m.group(1)
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            reason = NO_RUN.match(lines[start - 1].strip()) if start else None
            out.append((start + 1, lang, "\n".join(lines[start + 1:j]) + "\n", reason.group(1) if reason else None))
            i = j + 1
        else:
            i += 1
    return out


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = [pytest.param(p, line, lang, code, id=f"{p.relative_to(REPO)}:{line}")
            for p in DOCS for line, lang, code, reason in blocks(p) if lang in ("python", "bash") and not reason]


@pytest.fixture(scope="module")
def scratch(minilm_int8: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    work = root / "project"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("models", ".venv", ".git") and not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    (work / ".venv").symlink_to(Path(sys.prefix))
    models = work / "models"
    models.mkdir()
    for f in (REPO / "models").iterdir():
        if f.suffix in (".toml", ".md"):
            (models / f.name).symlink_to(f)
    (models / "minilm-int8").symlink_to(minilm_int8)
    fp32 = minilm_int8.parent / "minilm-fp32"
    if fp32.is_dir():
        (models / "minilm-fp32").symlink_to(fp32)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (root / "shared").symlink_to(shared)
    home = root / "cache"
    home.mkdir()
    (home / "all-minilm-l6-v2").symlink_to(minilm_int8)
    return work


def _env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_EMBED_")}
    return {**env, "EDGE_EMBED_HOME": str(scratch.parent / "cache"), "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize(("path", "line", "lang", "code"), RUNNABLE)
def test_block_runs(scratch: Path, path: Path, line: int, lang: str, code: str) -> None:
    if "../shared/" in code and not (scratch.parent / "shared").is_dir():
        pytest.skip("needs ../shared (the shared models and data)")
    argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    r = subprocess.run(argv, cwd=scratch, env=_env(scratch), capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{path.name}:{line} exited {r.returncode}\n{code}\nstderr:\n{r.stderr[-3000:]}"


def test_every_exemption_gives_a_reason_and_blocks_are_labelled() -> None:
    for p in DOCS:
        text = p.read_text(encoding="utf-8")
        for m in re.finditer(r"<!-- no-run[^>]*-->", text):
            assert NO_RUN.match(m.group(0)), f"{p.name}: {m.group(0)!r} needs a reason: <!-- no-run: why -->"
        assert not re.search(r"issue [0-9]", text, re.IGNORECASE), f"{p.name} refers to an issue number"


def _opening_commands() -> list[str]:
    readme = [b for b in blocks(REPO / "README.md") if b[1] == "bash"]
    assert len(readme) >= 2 and readme[0][3] and readme[1][3], "the README opens with two exempt set-up commands"
    return [readme[0][2].strip(), readme[1][2].strip()]


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert _opening_commands()[1] == ci


def test_readme_first_command_through_the_session_bundle(scratch: Path) -> None:
    """setup.sh is what CI ran; the build is the session's (same recipe, same flags); the embed runs."""
    from edge_embed.cli import build_parser

    steps = [shlex.split(s) for s in _opening_commands()[0].split("&&")]
    assert steps[0] == ["bash", "scripts/setup.sh"]
    build, embed = steps[1], steps[2]
    assert build[0] == embed[0] == ".venv/bin/edge-embed"
    args = build_parser().parse_args(build[1:])
    assert (args.command, args.source, args.output, args.method) == ("build", "all-minilm-l6-v2",
                                                                      "models/minilm-int8", "auto")
    r = subprocess.run(embed, cwd=scratch, env=_env(scratch), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '"embedding"' in r.stdout and len(r.stdout.splitlines()) == 1
