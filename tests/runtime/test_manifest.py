"""Manifest round trip and every rejection, with the file and key named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_embed import BundleError, Manifest
from edge_embed.manifest import DIGEST_NAME, FileEntry, digest_line


def _write_bundle(root: Path) -> Manifest:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(b"not really a model")
    (root / "tokenizer.json").write_text("{}")
    m = Manifest(dim=4, max_length=16, pooling="cls", normalize=True, source={"model_id": "x/y"},
                 files=Manifest.describe_files(root, ["model.onnx", "tokenizer.json"]),
                 prompts={"query": "q: "}, quantization={"method": "dynamic"})
    m.write(root)
    return m


def _edit(root: Path, **changes: object) -> None:
    data = json.loads((root / "manifest.json").read_text())
    for k, v in changes.items():
        if v is KeyError:
            del data[k]
        else:
            data[k] = v
    raw = json.dumps(data).encode("utf-8")
    (root / "manifest.json").write_bytes(raw)
    (root / DIGEST_NAME).write_bytes(digest_line(raw))  # as a build would: only the checks below may object


def test_round_trip(tmp_path: Path) -> None:
    m = _write_bundle(tmp_path)
    back = Manifest.read(tmp_path)
    assert back.to_dict() == m.to_dict()
    assert back.files["model.onnx"] == FileEntry(18, m.files["model.onnx"].sha256)
    back.verify(tmp_path)


def test_unknown_keys_are_kept(tmp_path: Path) -> None:
    _write_bundle(tmp_path)
    _edit(tmp_path, future_key={"a": 1})
    assert Manifest.read(tmp_path).to_dict()["future_key"] == {"a": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pooling": "max"}, "'pooling' must be 'cls' or 'mean', got 'max'"),
        ({"dim": KeyError}, "missing key 'dim'"),
        ({"dim": -3}, "'dim' must be an integer from 1"),
        ({"normalize": "yes"}, "'normalize' must be true or false"),
        ({"format": "edge-embed.bundle/2"}, "newer than this runtime reads"),
        ({"format": "something/1"}, "'format' must be 'edge-embed.bundle/<major>'"),
        ({"files": {"../evil": {"bytes": 1, "sha256": "0" * 64}}}, "unsafe file name"),
        ({"files": {"model.onnx": {"bytes": 1, "sha256": "abc"}}}, "'files.model.onnx.sha256'"),
        ({"prompts": {"query": 3}}, "'prompts' must map names to prefix strings"),
        ({"model_file": "other.onnx"}, "'model_file' is 'other.onnx', which 'files' does not list"),
    ],
)
def test_rejections_name_file_and_key(tmp_path: Path, change: dict[str, object], message: str) -> None:
    _write_bundle(tmp_path)
    _edit(tmp_path, **change)
    with pytest.raises(BundleError) as exc:
        Manifest.read(tmp_path)
    assert message in str(exc.value)
    assert str(tmp_path / "manifest.json") in str(exc.value)


def test_not_json_and_missing(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle"):
        Manifest.read(tmp_path / "nope")
    tmp_path.joinpath("b").mkdir()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        Manifest.read(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Manifest.read(tmp_path / "b")


def test_verify_catches_size_and_hash(tmp_path: Path) -> None:
    m = _write_bundle(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not really a modeL")  # same size, other bytes
    m.check_present(tmp_path)
    with pytest.raises(BundleError, match=r"model.onnx: sha256 .* \(files.model.onnx.sha256\)"):
        m.verify(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"short")
    with pytest.raises(BundleError, match=r"5 bytes, the manifest says 18 \(files.model.onnx.bytes\)"):
        m.check_present(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not really a model")
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json: missing"):
        Manifest.read(tmp_path).check_present(tmp_path)


def test_real_bundle_manifest_is_complete(minilm_int8: Path, minilm_fp32: Path, tmp_path: Path) -> None:
    m = Manifest.read(minilm_int8)
    assert m.name == minilm_int8.name and Manifest.read(minilm_fp32).name == minilm_fp32.name
    assert (m.dim, m.max_length, m.pooling, m.normalize) == (384, 256, "mean", True)
    assert {"model.onnx", "tokenizer.json", "validation.json"} <= set(m.files)
    assert m.quantization["per_channel"] is True
    assert m.quantization["method"] in ("dynamic", "static", "auto")
    for dist in ("onnxruntime", "tokenizers", "numpy", "torch", "transformers", "optimum", "onnx"):
        assert dist in m.built_with
    assert m.validation["passed"] is True
    copy = tmp_path / "copy"
    shutil.copytree(minilm_int8, copy)
    copy.joinpath("validation.json").write_text("{}")
    with pytest.raises(BundleError, match="validation.json"):
        Manifest.read(copy).check_present(copy)
