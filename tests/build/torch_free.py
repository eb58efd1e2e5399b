"""Run the CLI the way a user with onnx + onnxruntime and no torch would (--from-onnx builds)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO


def torch_free_site(root: Path) -> Path:
    """site-packages without torch, transformers and optimum: what a user with only onnx + onnxruntime has."""
    site = Path(sysconfig.get_paths()["purelib"])
    farm = root / "site"
    farm.mkdir()
    blocked = ("torch", "functorch", "torchgen", "transformers", "optimum")
    for entry in site.iterdir():
        if entry.name.split("-")[0].split(".")[0] in blocked:
            continue
        (farm / entry.name).symlink_to(entry)
    return farm


def run_torch_free(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -S: no site-packages of the venv; PYTHONPATH gives the torch-free copy of it plus the checkout
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, "-S", "-m", "edge_embed.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
