"""A runtime-only install (pip install . without extras, fresh venv) loads a bundle and embeds."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fresh_venv_runtime_only(minilm_int8: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(REPO)], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0 and ("Could not find a version" in r.stderr or "connection" in r.stderr.lower()):
        pytest.skip(f"package index not reachable: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not names & {"torch", "transformers", "optimum", "onnx"}, names
    out = tmp_path / "v.npy"
    r = subprocess.run([str(env_dir / "bin" / "edge-embed"), "embed", "-m", str(minilm_int8), "hello", "-f",
                        "npy", "-o", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    v = np.load(out)
    assert v.shape == (1, 384) and abs(float(np.linalg.norm(v)) - 1) < 1e-5
