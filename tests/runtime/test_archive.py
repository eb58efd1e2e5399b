"""Packed single-file bundles: pack, load from a path / bytes / file object, verify, catch damage."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_embed import BundleError, Embedder, InputError
from edge_embed.archive import _global_header, pack, read_archive
from tests.conftest import REPO, run_cli

TEXTS = ["hello world", "Packed bundles travel inside someone else's product.", "what is onnx?"]


@pytest.fixture(scope="module")
def packed(minilm_int8: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "minilm-int8.edgeembed"
    r = run_cli("pack", str(minilm_int8), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    return out


@pytest.fixture(scope="module")
def reference(minilm_int8: Path) -> np.ndarray:
    return Embedder.load(minilm_int8).embed(TEXTS)


class _Pipe(io.RawIOBase):
    """A read-only, non-seekable binary stream (a socket or pipe, as far as the reader can tell)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        return self._buf.readinto(b)


def test_archive_layout_is_a_plain_tar_of_the_bundle_directory(packed: Path, minilm_int8: Path) -> None:
    with tarfile.open(packed, "r:") as tf:  # "r:" refuses compressed archives
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[0] == "minilm-int8/manifest.json"
    assert names[-2] == "minilm-int8/model.onnx"  # last, so that the file parses as the model
    assert names[-1] == "minilm-int8" and members[-1].isdir()
    assert names[1] == "minilm-int8/manifest.json.sha256"  # the manifest's own sha256, next
    listed = json.loads((minilm_int8 / "manifest.json").read_text())["files"]
    assert sorted(n.split("/", 1)[1] for n in names[2:-1]) == sorted(listed)
    for m in members[:-1]:
        assert m.size == (minilm_int8 / m.name.split("/", 1)[1]).stat().st_size
        assert (m.mtime, m.uid, m.gid, m.uname) == (0, 0, 0, "")


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar program")
def test_tar_extracts_the_bundle_directory_byte_for_byte(packed: Path, minilm_int8: Path, tmp_path: Path) -> None:
    r = subprocess.run(["tar", "-xf", str(packed), "-C", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["minilm-int8"]  # nothing else, no header files
    out = tmp_path / "minilm-int8"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in minilm_int8.iterdir())
    for f in out.iterdir():
        assert f.read_bytes() == (minilm_int8 / f.name).read_bytes(), f.name


def _feeds(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    ids = np.array([[101, 7592, 2088, 2003, 2204, 102]], dtype=np.int64)
    every = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {i.name: every[i.name] for i in session.get_inputs()}


def test_onnxruntime_opens_the_packed_file_as_the_model(packed: Path, minilm_int8: Path) -> None:
    """The archive parses as the ONNX model itself, so it is loaded without copying it into Python."""
    direct = ort.InferenceSession(str(packed), providers=["CPUExecutionProvider"])
    model = ort.InferenceSession(str(minilm_int8 / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = _feeds(model)
    np.testing.assert_array_equal(direct.run(None, feeds)[0], model.run(None, feeds)[0])
    got = read_archive(packed, keep=lambda m: {m.model_file, m.tokenizer_file}, in_place=True)
    assert got.model_path("model.onnx") == packed and "model.onnx" not in got.members
    assert "tokenizer.json" in got.members
    assert read_archive(packed, in_place=False).model_path("model.onnx") is None
    assert read_archive(packed.read_bytes(), in_place=True).model_path("model.onnx") is None


def test_plain_tar_of_a_bundle_loads_through_bytes(minilm_int8: Path, reference: np.ndarray, tmp_path: Path) -> None:
    plain = tmp_path / "plain.edgeembed"
    with tarfile.open(plain, "w") as tf:
        tf.add(minilm_int8 / "manifest.json", arcname="b/manifest.json")
        for f in sorted(minilm_int8.iterdir()):
            if f.name != "manifest.json":
                tf.add(f, arcname=f"b/{f.name}")
    assert read_archive(plain, in_place=True).model_path("model.onnx") is None
    np.testing.assert_array_equal(Embedder.load(plain).embed(TEXTS), reference)


@pytest.mark.parametrize("where", ["opening", "closing"])
def test_damaged_layout_falls_back_to_bytes(packed: Path, reference: np.ndarray, tmp_path: Path, where: str) -> None:
    """A tar whose global headers no longer frame the model (rewritten by some tool) loads through bytes."""
    data = bytearray(packed.read_bytes())
    start, size = _member_span(packed, "model.onnx")
    at = 0 if where == "opening" else start + size
    end = 512 if where == "opening" else (start + size + 511) // 512 * 512 + 512
    data[at:end] = bytes(end - at - 512) + _global_header(b"rewritten")
    bad = tmp_path / "relaid.edgeembed"
    bad.write_bytes(bytes(data))
    if where == "closing":  # still opens as pack writes: verify checks its layout byte for byte
        with pytest.raises(BundleError, match=r"relaid\.edgeembed: byte \d+ \(the tar structure after model\.onnx\)"):
            Embedder.load(bad)
    got = read_archive(bad, verify=where == "opening", in_place=True)
    assert got.model_path("model.onnx") is None and "model.onnx" in got.members
    np.testing.assert_array_equal(Embedder.load(bad, verify=where == "opening").embed(TEXTS), reference)


@pytest.mark.parametrize("how", ["path", "str", "bytes", "bytearray", "file", "pipe"])
def test_load_packed_equals_directory(packed: Path, reference: np.ndarray, how: str) -> None:
    data = packed.read_bytes()
    source: object = {
        "path": packed, "str": str(packed), "bytes": data, "bytearray": bytearray(data),
        "file": open(packed, "rb"), "pipe": io.BufferedReader(_Pipe(data)),
    }[how]
    try:
        emb = Embedder.load(source, verify=how in ("file", "pipe"))  # type: ignore[arg-type]
    finally:
        if hasattr(source, "close"):
            source.close()
    np.testing.assert_array_equal(emb.embed(TEXTS), reference)
    assert emb.dim == 384 and emb.manifest.pooling == "mean"


def test_pack_is_byte_reproducible(minilm_int8: Path, packed: Path, tmp_path: Path) -> None:
    again = pack(minilm_int8, tmp_path / "minilm-int8.edgeembed")
    assert again.read_bytes() == packed.read_bytes()


def test_packed_int8_is_under_30_percent_of_fp32_model(packed: Path, minilm_fp32: Path) -> None:
    fp32_model = (minilm_fp32 / "model.onnx").stat().st_size
    assert packed.stat().st_size <= 0.30 * fp32_model, (packed.stat().st_size, fp32_model)


def test_info_verify_on_archive_and_directory(packed: Path, minilm_int8: Path) -> None:
    for target in (packed, minilm_int8):
        r = run_cli("info", str(target), "--verify")
        assert r.returncode == 0, r.stderr
        # model, tokenizer, validation report, self-check probes
        assert f"verified: {len(json.loads((minilm_int8 / 'manifest.json').read_text())['files'])} files match" \
            in r.stdout
        assert "pooling" in r.stdout and "mean" in r.stdout
    r = run_cli("info", str(packed), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["dim"] == 384


def test_embed_cli_with_packed_model(packed: Path, reference: np.ndarray) -> None:
    r = run_cli("embed", "-m", str(packed), *TEXTS)
    assert r.returncode == 0, r.stderr
    got = np.array([json.loads(line)["embedding"] for line in r.stdout.splitlines()], dtype=np.float32)
    np.testing.assert_allclose(got, reference, atol=1e-6)


def _member_span(archive: Path, name: str) -> tuple[int, int]:
    with tarfile.open(archive, "r:") as tf:
        m = next(m for m in tf.getmembers() if m.name.endswith("/" + name))
        return m.offset_data, m.size


@pytest.mark.parametrize("member", ["model.onnx", "tokenizer.json", "validation.json"])
def test_flipped_byte_inside_a_member_is_caught_by_verify(packed: Path, tmp_path: Path, member: str) -> None:
    start, size = _member_span(packed, member)
    data = bytearray(packed.read_bytes())
    data[start + size // 2] ^= 0x01
    bad = tmp_path / "bad.edgeembed"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"bad\.edgeembed:{member}: sha256 .*\(files\.{member}\.sha256\)"):
        read_archive(bad, verify=True)
    with pytest.raises(BundleError, match=rf"<bytes>:{member}: sha256"):
        Embedder.load(bytes(data), verify=True)
    r = run_cli("info", str(bad), "--verify")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and f"bad.edgeembed:{member}: sha256" in r.stderr


@pytest.mark.parametrize("cut_in", ["model.onnx", "tokenizer.json", "validation.json"])
def test_truncated_archive_names_the_member_it_cuts(packed: Path, tmp_path: Path, cut_in: str) -> None:
    start, size = _member_span(packed, cut_in)
    data = packed.read_bytes()[: start + size // 3]
    bad = tmp_path / "cut.edgeembed"
    bad.write_bytes(data)
    # without verify too: sizes are always checked
    for source in (bad, data, io.BufferedReader(_Pipe(data))):
        with pytest.raises(BundleError, match=rf":{cut_in}: .*(truncated)"):
            Embedder.load(source)  # type: ignore[arg-type]
    r = run_cli("info", str(bad))
    assert r.returncode == 1 and f"cut.edgeembed:{cut_in}" in r.stderr and "Traceback" not in r.stderr


def test_archive_cut_between_members_names_the_missing_one(packed: Path, tmp_path: Path) -> None:
    start, _ = _member_span(packed, "tokenizer.json")
    bad = tmp_path / "short.edgeembed"
    bad.write_bytes(packed.read_bytes()[: start - 512])  # drop tokenizer.json's header and everything after
    with pytest.raises(BundleError, match=r"short\.edgeembed:tokenizer\.json: missing from the archive"):
        Embedder.load(bad)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a packed edge-embed bundle"),
        (b"definitely not a tar file" * 100, "not a packed edge-embed bundle"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 600, "not a packed edge-embed bundle"),  # gzip magic: compressed
    ],
)
def test_not_an_archive(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "x.edgeembed"
    f.write_bytes(content)
    with pytest.raises(BundleError, match=message):
        Embedder.load(f)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_hostile_or_foreign_archives(minilm_int8: Path) -> None:
    manifest = (minilm_int8 / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="the first member is 'model.onnx', expected manifest.json"):
        read_archive(_tar([("b/model.onnx", b"x"), ("b/manifest.json", manifest)]))
    with pytest.raises(BundleError, match="outside the archive's directory"):
        read_archive(_tar([("b/manifest.json", manifest), ("../evil/model.onnx", b"x")]))
    with pytest.raises(BundleError, match="appears twice"):
        read_archive(_tar([("manifest.json", manifest), ("manifest.json", manifest)]))
    with pytest.raises(BundleError, match=r"<bytes>:selfcheck\.json: missing from the archive"):
        read_archive(_tar([("manifest.json", manifest)]))
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        read_archive(_tar([("manifest.json", b"{nope")]))


def test_pack_refuses_bad_input(minilm_int8: Path, packed: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="already exists; pass --force"):
        pack(minilm_int8, packed)
    with pytest.raises(InputError, match="pack takes a bundle directory"):
        pack(packed, tmp_path / "again.edgeembed")
    with pytest.raises(BundleError, match="no such bundle"):
        pack(tmp_path / "nope", tmp_path / "x.edgeembed")
    r = run_cli("pack", str(tmp_path / "nope"), "-o", str(tmp_path / "x.edgeembed"))
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_pack_verifies_the_directory_first(minilm_int8: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(minilm_int8, bundle)
    data = bytearray((bundle / "tokenizer.json").read_bytes())
    data[100] ^= 0x01
    (bundle / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"tokenizer\.json: sha256"):
        pack(bundle, tmp_path / "b.edgeembed")
    assert not (tmp_path / "b.edgeembed").exists()
    assert not list(tmp_path.glob(".*partial"))


_NO_NET = r"""
import socket, sys

class Blocked(OSError):
    pass

def audit(event, args):
    if event.startswith("socket."):  # __new__, connect, bind, getaddrinfo, ...
        raise Blocked(f"network use during the test: {event} {args!r:.80}")

sys.addaudithook(audit)

from edge_embed import Embedder

for source in sys.argv[1:]:
    emb = Embedder.load(source)
    v = emb.embed(["no network here", "none at all"])
    assert v.shape == (2, emb.dim), v.shape
    print(source, v.shape)
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
except Blocked:
    print("block active")
"""


def test_runtime_never_opens_a_network_connection(minilm_int8: Path, packed: Path) -> None:
    """Load + embed with every Python-level socket operation turned into an error."""
    r = subprocess.run([sys.executable, "-c", _NO_NET, str(minilm_int8), str(packed)], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("(2, 384)") == 2
    assert r.stdout.strip().endswith("block active")  # the block really was in force
