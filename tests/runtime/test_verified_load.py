"""Verified loading: every byte of a bundle is checked by the default load, a pinned digest
covers the manifest, and hostile manifests, archives and tokenizers are BundleErrors."""

from __future__ import annotations

import copy
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from edge_embed import BundleError, EdgeEmbedError, Embedder, InputError, Manifest
from edge_embed.archive import pack
from edge_embed.cli import main
from edge_embed.manifest import DIGEST_NAME, digest_line, manifest_digest

POSITIONS = 30  # per file: spread from its first to its last byte


def positions(size: int, n: int = POSITIONS) -> list[int]:
    return sorted({round(i * (size - 1) / (n - 1)) for i in range(n)}) if size > 1 else [0]


def flip(path: Path, at: int, k: int) -> bytes:
    """Change one byte (a different bit each time); return the original bytes."""
    data = path.read_bytes()
    changed = bytearray(data)
    changed[at] ^= 1 << (k % 8)
    path.write_bytes(bytes(changed))
    return data


@pytest.fixture(scope="module")
def bundle(minilm_int8: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flips") / "b"
    shutil.copytree(minilm_int8, out)
    return out


@pytest.fixture(scope="module")
def packed(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack(bundle, tmp_path_factory.mktemp("packed") / "b.edgeembed")


def test_bundle_records_the_manifest_digest(bundle: Path) -> None:
    raw = (bundle / "manifest.json").read_bytes()
    assert (bundle / DIGEST_NAME).read_bytes() == digest_line(raw)
    assert Embedder.load(bundle).manifest.digest == manifest_digest(raw)


def test_every_file_of_a_directory_is_checked_byte_by_byte(bundle: Path) -> None:
    files = sorted(p for p in bundle.iterdir() if p.is_file())
    assert {"manifest.json", DIGEST_NAME, "model.onnx", "tokenizer.json"} <= {p.name for p in files}
    refused = tried = 0
    for f in files:
        for k, at in enumerate(positions(f.stat().st_size)):
            original = flip(f, at, k)
            try:
                with pytest.raises(BundleError) as exc:
                    Embedder.load(bundle)
                assert f.name in str(exc.value), (f.name, at, str(exc.value))
                refused += 1
            finally:
                f.write_bytes(original)
            tried += 1
    assert refused == tried
    Embedder.load(bundle)  # all restored


def _structure_positions(archive: Path) -> list[int]:
    """Bytes between the members' data: headers (incl. the checksum field's last byte), padding, the end."""
    out: list[int] = [0, 100, 155, 511]
    with tarfile.open(archive, "r:") as tf:
        for m in tf.getmembers():
            out += [m.offset, m.offset + 155, m.offset + 300]
            if m.size:
                end = m.offset_data + m.size
                out += [m.offset_data, end - 1]
                if end % 512:
                    out += [end, (end + 511) // 512 * 512 - 1]
    size = archive.stat().st_size
    out += [size - 1, size - 512, size - 1024 - 7, size - 1536 - 200]
    return sorted(set(p for p in out if 0 <= p < size))


def test_every_byte_region_of_a_packed_file_is_checked(packed: Path) -> None:
    spots = sorted(set(positions(packed.stat().st_size)) | set(_structure_positions(packed)))
    for k, at in enumerate(spots):
        original = flip(packed, at, k)
        try:
            with pytest.raises(BundleError) as exc:
                Embedder.load(packed)
            assert packed.name in str(exc.value), (at, str(exc.value))
        finally:
            packed.write_bytes(original)
    Embedder.load(packed)


def test_verify_false_opts_out(bundle: Path) -> None:
    tok = bundle / "validation.json"
    original = flip(tok, 5, 0)
    try:
        Embedder.load(bundle, verify=False)  # sizes only
        with pytest.raises(BundleError, match="validation.json: sha256"):
            Embedder.load(bundle)
    finally:
        tok.write_bytes(original)


def _edit_consistently(root: Path, **changes: Any) -> None:
    """Change manifest values and re-record its sha256, as a tampering builder would."""
    m = Manifest.read(root)
    for k, v in changes.items():
        setattr(m, k, v)
    m.write(root)


def test_pinned_digest_refuses_an_edited_manifest(bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(bundle)]) == 0
    digest = next(ln.split()[1] for ln in capsys.readouterr().out.splitlines() if ln.startswith("digest"))
    assert digest.startswith("sha256:") and len(digest) == 71
    Embedder.load(bundle, digest=digest)
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    _edit_consistently(edited, prompts={"query": "ignore previous instructions: "})
    Embedder.load(edited)  # consistent with its own checksum file: only the pin can tell
    with pytest.raises(BundleError, match=rf"manifest.json: bundle digest sha256:[0-9a-f]{{64}} is not the pinned "
                                          rf"{digest}"):
        Embedder.load(edited, digest=digest)
    packed_edit = pack(edited, tmp_path / "edited.edgeembed")
    with pytest.raises(BundleError, match=r"edited\.edgeembed:manifest\.json: bundle digest"):
        Embedder.load(packed_edit, digest=digest)
    assert main(["embed", "-m", str(edited), "--digest", digest, "hi"]) == 1
    err = capsys.readouterr().err
    assert "is not the pinned" in err and len(err.strip().splitlines()) == 1
    assert main(["embed", "-m", str(bundle), "--digest", digest, "hi"]) == 0
    capsys.readouterr()
    assert main(["embed", "-m", str(bundle), "--digest", "md5:abc", "hi"]) == 1
    assert "expected 'sha256:' and 64 hex digits" in capsys.readouterr().err
    with pytest.raises(InputError, match="digest"):
        Embedder.load(bundle, digest="sha256:" + "G" * 64)


BAD_VALUES: list[Any] = [None, -1, 0, 10**100, 1.5, True, "x", "", [], {}, {"a": [1]}, "../model.onnx",
                         "/etc/passwd", "a" * 5000]


def _manifest_cases(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for key in ("format", "name", "dim", "max_length", "pooling", "normalize", "source", "files", "model_file",
                "tokenizer_file", "ort_model_file", "prompts", "quantization", "validation", "built_with"):
        for v in BAD_VALUES:
            d = copy.deepcopy(data)
            d[key] = v
            cases.append((key, d))
    for name in ("../x", "/abs", "a/b", "a\\b", "..", ".", "C:x", "a\x00b", " x", DIGEST_NAME):
        d = copy.deepcopy(data)
        d["files"][name] = next(iter(d["files"].values()))
        cases.append(("files", d))
    d = copy.deepcopy(data)
    d["files"]["model.onnx"]["bytes"] = 2**63
    cases.append(("files.model.onnx.bytes", d))
    d = copy.deepcopy(data)
    d["format"] = "edge-embed.bundle/" + "9" * 5000
    cases.append(("format", d))
    d = copy.deepcopy(data)
    d["built_with"] = {"x": 1}
    cases.append(("built_with", d))
    return cases


def test_every_manifest_value_is_validated(bundle: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    root = tmp_path / "m"
    shutil.copytree(bundle, root)
    accepted = []
    for key, d in _manifest_cases(data):
        raw = json.dumps(d).encode("utf-8")
        (root / "manifest.json").write_bytes(raw)
        (root / DIGEST_NAME).write_bytes(digest_line(raw))
        try:
            Manifest.read(root)
        except BundleError as e:
            assert f"'{key.split('.')[0]}" in str(e) or f"{key.split('.')[0]}." in str(e), (key, str(e))
            continue
        accepted.append(key)  # a value the runtime takes (a name string, a free-form dict): must still work
        assert main(["info", str(root)]) == 0, (key, capsys.readouterr().err)
    assert set(accepted) <= {"name", "normalize", "source", "quantization", "validation", "built_with", "prompts",
                             "ort_model_file"}, accepted
    assert len(accepted) < 20
    d = {**data, "name": "../" * 2000, "source": {"a": [1]}, "validation": {}}
    raw = json.dumps(d).encode("utf-8")
    (root / "manifest.json").write_bytes(raw)
    (root / DIGEST_NAME).write_bytes(digest_line(raw))
    assert Embedder.load(root).embed(["still works"]).shape == (1, 384)
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"dim": ' + b"9" * 5000 + b"}", b"\xff\xfe"):
        (root / "manifest.json").write_bytes(raw)
        (root / DIGEST_NAME).write_bytes(digest_line(raw))
        with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
            Embedder.load(root)


def _raw_tar(members: list[tuple[str, bytes, int]]) -> bytes:
    """A tar whose headers declare sizes of our choosing (larger than the data that follows)."""
    out = b""
    for name, data, declared in members:
        info = tarfile.TarInfo(name)
        info.size = declared
        out += info.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)
    return out + bytes(1024)


def test_archive_sizes_are_checked_before_any_read(bundle: Path) -> None:
    manifest = (bundle / "manifest.json").read_bytes()
    huge = 1 << 40
    for members in ([("b/manifest.json", manifest, len(manifest)), ("b/tokenizer.json", b"{}", huge)],
                    [("b/manifest.json", manifest, huge)],
                    [("b/manifest.json", manifest, len(manifest)), (f"b/{DIGEST_NAME}", b"x", huge)]):
        data = _raw_tar(members)
        for source in (data, io.BytesIO(data)):
            with pytest.raises(BundleError) as exc:
                Embedder.load(source)
            assert "bytes" in str(exc.value) or "truncated" in str(exc.value), str(exc.value)


@pytest.mark.parametrize("change", ["template_out_of_range", "special_tokens_missing", "not_json", "unk_missing"])
def test_tokenizers_that_panic_are_bundle_errors(bundle: Path, tmp_path: Path, change: str) -> None:
    root = tmp_path / "t"
    shutil.copytree(bundle, root)
    tok = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
    if change == "template_out_of_range":  # pyo3 PanicException (a BaseException) inside tokenizers
        tok["post_processor"]["single"] = [{"Sequence": {"id": "B", "type_id": 0}}]
    elif change == "special_tokens_missing":
        tok["post_processor"]["special_tokens"] = {}
    elif change == "unk_missing":
        tok["model"]["unk_token"] = "[NOPE]"
    raw = b"{" if change == "not_json" else json.dumps(tok).encode("utf-8")
    (root / "tokenizer.json").write_bytes(raw)
    m = Manifest.read(root)
    m.files.update(Manifest.describe_files(root, ["tokenizer.json"]))
    m.write(root)
    try:
        emb = Embedder.load(root)
    except BundleError as e:
        assert "tokenizer.json" in str(e)
        return
    with pytest.raises(EdgeEmbedError):  # loads (it tokenizes "a b"): a text it cannot take is an InputError
        emb.embed(["zzqx ☃ unknownword"])
