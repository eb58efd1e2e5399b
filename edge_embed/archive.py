"""Single-file bundles: pack a bundle directory into one uncompressed tar, read it back.

A packed bundle (``NAME.edgeembed``) is a POSIX tar, no compression, holding the bundle
directory: ``NAME/manifest.json`` first, then every file the manifest lists, the ONNX model
last. Tar rather than zip because it is read front to back: a truncated archive fails while
reading the member it cuts, so the error can name that member (a zip's index sits at the
end and goes first). No compression because the INT8 weights barely compress and a stored
member can be used where it lies.

The file is at once a tar and, read as a protocol buffer, the ONNX model itself, so that
onnxruntime opens the ``.edgeembed`` path directly and reads the weights straight from the
file, as it does for a directory's ``model.onnx`` (its Python API takes a model from memory
only as ``bytes``, which it copies again: loading that way cost +45-55 % over a directory).
Two pax global headers, which tar readers apply as (empty) metadata and never extract, carry
in their name field the key and length of an unknown protobuf field (number 1,000,000):

    [global header: field opens] manifest.json ... tokenizer.json ... [model.onnx header]
    [model.onnx bytes][padding + global header: field opens] [NAME/ directory entry][end blocks]

The first field spans everything before the model's bytes, the second everything after
them, to the end of the file; protobuf parsers skip unknown fields, tar readers ignore
global headers' names and the content of padding. Archives without this layout (any plain
tar of a bundle) still load, through bytes. Sizes are checked on every read, sha256 only
when asked (as for directories). This module does not load models and does not write
manifests; it uses the standard library only.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

from .errors import BundleError, InputError
from .manifest import DIGEST_NAME, MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, check_recorded, digest_line

__all__ = ["ARCHIVE_SUFFIX", "ArchiveSource", "PackedBundle", "is_archive", "pack", "read_archive"]

ARCHIVE_SUFFIX = ".edgeembed"
_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_FIELD = 1_000_000  # a protobuf field number that onnx.ModelProto does not use
_NOTE = b" edge-embed: skip to the ONNX model"
_MAX_DIGEST_BYTES = 4096  # rest of the global headers' names (never extracted)

ArchiveSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


@dataclass
class PackedBundle:
    """A bundle read from an archive: its manifest and the bytes of the files asked for."""

    label: str  # where it came from, for messages: a path, or "<bytes>" / "<file object>"
    manifest: Manifest
    members: dict[str, bytes]
    # the ONNX model when the archive file itself parses as it (see the module docstring):
    # its name and the archive's path, which onnxruntime can open in place of the model
    in_place: tuple[str, Path] | None = None

    def where(self, name: str) -> str:
        return f"{self.label}:{name}"

    def data(self, name: str) -> bytes:
        if name not in self.members:
            raise BundleError(f"{self.where(name)}: not in the archive; repack the bundle with 'edge-embed pack'")
        return self.members[name]

    def model_path(self, name: str) -> Path | None:
        """The archive's path if onnxruntime can load member ``name`` by opening the archive itself."""
        return self.in_place[1] if self.in_place and self.in_place[0] == name else None


def is_archive(source: Any) -> bool:
    """True for bytes, binary file objects and paths to a file (a bundle directory is False)."""
    if isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "read"):
        return True
    if isinstance(source, (str, os.PathLike)):
        return Path(source).is_file()
    return False


# ---------------------------------------------------------------------- writing
def _tarinfo(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    # fixed owner, mode and time: packing the same bundle twice gives the same bytes
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mtime = 0
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_TAG = _varint(_FIELD << 3 | 2)  # field _FIELD, wire type 2 (length-delimited)


def _field_opening(span: int) -> bytes:
    """Key and length of an unknown protobuf field that, with its payload, is ``span`` bytes long."""
    for width in range(1, 10):
        length = span - len(_TAG) - width
        if length >= 0 and len(_varint(length)) == width:
            return _TAG + _varint(length)
    raise ValueError(f"no field of {span} bytes")  # pragma: no cover - every span >= 5 has one


def _field_span(head: bytes) -> int | None:
    """The total length of the field whose key and length ``head`` opens with, else None."""
    if not head.startswith(_TAG):
        return None
    length, shift = 0, 0
    for i, b in enumerate(head[len(_TAG):len(_TAG) + 9]):
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return len(_TAG) + i + 1 + length
    return None


def _global_header(name: bytes) -> bytes:
    """A pax global header with no records: tar readers apply it and extract nothing."""
    info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
    info.type = tarfile.XGLTYPE
    info.size, info.mtime, info.mode = 0, 0, 0o644
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> int:
    return -size % _BLOCK


Part = bytes | tuple[str, int]


def _layout(top: str, members: list[tuple[str, int]]) -> list[Part]:
    """The archive pack writes, in order: the bytes around the members' data, and (name, size)
    where a member's data goes. ``members`` in archive order, the ONNX model last.

    The same function lays out a new archive and checks an existing one byte for byte.
    """
    headers = [_header(_tarinfo(f"{top}/{name}", size)) for name, size in members]
    before = zip(headers[:-1], members[:-1], strict=True)
    model_at = _BLOCK + sum(len(h) + size + _padding(size) for h, (_, size) in before) + len(headers[-1])
    parts: list[Part] = [_global_header(_field_opening(model_at) + _NOTE)]
    for h, (name, size) in zip(headers[:-1], members[:-1], strict=True):
        parts += [h, (name, size), bytes(_padding(size))]
    parts += [headers[-1], members[-1]]
    # the model is last: after its bytes, a field opens that runs to the end of the file
    pad = _padding(members[-1][1])
    rest = _header(_tarinfo(top, 0, directory=True)) + bytes(2 * _BLOCK)
    closing = _field_opening(pad + _BLOCK + len(rest))
    parts.append(closing[:pad] + bytes(pad - len(closing[:pad])) + _global_header(closing[pad:] + _NOTE) + rest)
    return parts


def pack(bundle_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Verify a bundle directory (every sha256) and write it as one uncompressed tar.

    The ONNX model goes last and the archive is laid out so that onnxruntime can open the
    file itself as that model (see the module docstring). The same bundle gives the same bytes.
    The archive always carries manifest.json.sha256 (computed here for bundles built without one).
    """
    root = Path(bundle_dir)
    dest = Path(out)
    if root.is_file():
        raise InputError(f"{root}: already a single file; pack takes a bundle directory")
    manifest = Manifest.read(root)
    manifest.verify(root)
    if dest.exists() and not force:
        raise InputError(f"{dest}: already exists; pass --force to replace it")
    if dest.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{dest}: inside the bundle it packs; write it somewhere else")
    top = (dest.name[: -len(ARCHIVE_SUFFIX)] if dest.name.endswith(ARCHIVE_SUFFIX) else dest.stem) or "bundle"
    model = manifest.model_file
    raw = (root / MANIFEST_NAME).read_bytes()
    inline = {MANIFEST_NAME: raw, DIGEST_NAME: digest_line(raw)}
    names = [MANIFEST_NAME, DIGEST_NAME, *sorted(n for n in manifest.files if n != model), model]
    sizes = [(n, len(inline[n]) if n in inline else (root / n).stat().st_size) for n in names]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        with open(tmp, "wb") as f:
            for part in _layout(top, sizes):
                if isinstance(part, bytes):
                    f.write(part)
                    continue
                name, size = part
                at = f.tell()
                if name in inline:
                    f.write(inline[name])
                else:
                    with open(root / name, "rb") as src:
                        shutil.copyfileobj(src, f, _CHUNK)
                if f.tell() - at != size:
                    raise BundleError(f"{root / name}: changed while it was being packed; pack again")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------------- reading
def _open(source: ArchiveSource) -> tuple[IO[bytes], str, bool]:
    """(binary stream, label, whether we opened it and must close it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source), "<bytes>", True
    if hasattr(source, "read"):
        return source, str(getattr(source, "name", "<file object>")), False  # type: ignore[return-value]
    path = Path(source)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle; build one with 'edge-embed build' or check the path")
    try:
        return open(path, "rb"), str(path), True  # noqa: SIM115 - closed by the caller
    except OSError as e:
        raise BundleError(f"{path}: cannot open ({e.strerror})") from None


def _member_name(label: str, raw: str, is_dir: bool, top: list[str]) -> str | None:
    """The bundle file name of a tar member, or None for the top directory itself.

    Members sit either at the archive's root or under one top directory (as pack writes).
    """
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts:
        return None
    if not top:
        top.append(parts[0] if len(parts) > 1 or is_dir else "")
    if top[0]:
        if parts[0] != top[0]:
            raise BundleError(f"{label}: member {raw!r} is outside the archive's directory {top[0]!r}; "
                              "repack the bundle with 'edge-embed pack'")
        parts = parts[1:]
        if not parts:
            return None
    if len(parts) != 1 or parts[0] == "..":
        raise BundleError(f"{label}: unexpected member {raw!r}; a packed bundle holds one flat directory")
    return parts[0]


def read_archive(source: ArchiveSource, *, verify: bool = False,
                 keep: Callable[[Manifest], Collection[str]] | None = None,
                 in_place: bool = False, digest: str | None = None) -> PackedBundle:
    """Read a packed bundle from a path, bytes or a binary file object.

    Every member's size is checked against the manifest; with verify=True its sha256 too.
    keep: given the manifest, which files' bytes to return (default all); the others are read through,
    so a truncation anywhere is caught. Any problem is a BundleError naming the member.
    in_place: for a path whose file also parses as its ONNX model (as ``pack`` writes it), leave
    the model's bytes unread (hashed only with verify); ``model_path`` then gives the file to open.
    digest: the pinned bundle digest (``"sha256:<hex>"`` of manifest.json); any other manifest is
    refused before another member is read. With verify, every byte of an archive laid out as
    ``pack`` writes it is checked: members by sha256, the tar structure around them against
    the layout pack writes (a plain tar's structure only by tar's own header checksums).
    """
    stream, label, owned = _open(source)
    path = Path(source) if in_place and isinstance(source, (str, os.PathLike)) else None
    try:
        return _read(stream, label, verify, keep, path, pinned=digest)
    finally:
        if owned:
            stream.close()


def _opening_span(stream: IO[bytes]) -> int | None:
    """Where the model's bytes must start if the archive opens with pack's global header."""
    head = stream.read(_BLOCK)
    stream.seek(0)
    if len(head) < _BLOCK or head[156:157] != tarfile.XGLTYPE:
        return None
    return _field_span(head[:100])


def _closes_at_end(stream: IO[bytes], at: int, size: int) -> bool:
    """True if the field opening at ``at`` (after the model's bytes) runs exactly to the end of the file."""
    stream.seek(at)
    span = _field_span(stream.read(16))
    return span is not None and at + span == size


def _read(stream: IO[bytes], label: str, verify: bool, keep: Callable[[Manifest], Collection[str]] | None,
          path: Path | None, pinned: str | None) -> PackedBundle:
    manifest: Manifest | None = None
    wanted: Collection[str] | None = None
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    sequence: list[tuple[str, int]] = []  # (name, size) in archive order, for the layout check
    top: list[str] = []
    current = "the archive header"
    opening = _opening_span(stream) if path is not None else None
    file_size = os.fstat(stream.fileno()).st_size if opening is not None else 0
    unread: tarfile.TarInfo | None = None  # the model, left in the file for onnxruntime to open
    try:
        # a seekable source is read member by member with one read() each (tarfile's stream
        # mode copies in 10 KiB blocks: 4x slower on a 23 MB model); pipes use stream mode
        seekable = stream.seekable() if hasattr(stream, "seekable") else False
        packed_layout = seekable and _opens_like_pack(stream)
        with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tf:
            for info in tf:
                name = _member_name(label, info.name, info.isdir(), top)
                if name is None:
                    continue
                current = name
                if not info.isfile():
                    raise BundleError(f"{label}:{name}: not a regular file in the archive; repack the bundle")
                if name in seen:
                    raise BundleError(f"{label}:{name}: appears twice in the archive; repack the bundle")
                seen.add(name)
                sequence.append((name, info.size))
                f = _member_reader(tf, stream, info, seekable)
                if name == MANIFEST_NAME:
                    if info.size > MAX_MANIFEST_BYTES:  # checked before reading: the header may lie
                        raise BundleError(f"{label}:{name}: declares {info.size} bytes, more than a manifest "
                                          "holds; this is not a packed edge-embed bundle")
                    raw_manifest = f(info.size)
                    if len(raw_manifest) != info.size:
                        raise tarfile.ReadError("unexpected end of data")
                    manifest = Manifest.from_bytes(raw_manifest, f"{label}:{MANIFEST_NAME}", digest=pinned)
                    wanted = keep(manifest) if keep else None
                    continue
                if manifest is None:
                    raise BundleError(f"{label}: the first member is {name!r}, expected {MANIFEST_NAME}; "
                                      "this is not a packed edge-embed bundle")
                if name == DIGEST_NAME:
                    if info.size > _MAX_DIGEST_BYTES:
                        raise BundleError(f"{label}:{name}: declares {info.size} bytes, more than a sha256 line")
                    check_recorded(manifest.digest, f(info.size), f"{label}:{MANIFEST_NAME}", f"{label}:{name}")
                    continue
                entry = manifest.files.get(name)
                if entry is None:
                    continue  # like a directory bundle, files the manifest does not list are ignored
                if info.size != entry.bytes:  # before any read: a crafted header may declare any size
                    raise BundleError(
                        f"{label}:{name}: the archive declares {info.size} bytes, the manifest says {entry.bytes} "
                        f"(files.{name}.bytes); the archive is truncated or altered"
                    )
                want = wanted is None or name in wanted
                if (want and name == manifest.model_file and info.offset_data == opening
                        and info.offset_data + info.size <= file_size):
                    unread, want = info, False
                digest = hashlib.sha256() if verify else None
                parts: list[bytes] = []
                got = 0
                if unread is info and digest is None:
                    got = info.size  # in the file, which is long enough: nothing to read
                while got < info.size and (chunk := f(info.size - got if want else min(_CHUNK, info.size - got))):
                    got += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    if want:
                        parts.append(chunk)
                if got != entry.bytes:
                    raise BundleError(
                        f"{label}:{name}: {got} bytes, the manifest says {entry.bytes} (files.{name}.bytes); "
                        "the archive is truncated or altered"
                    )
                if digest is not None and digest.hexdigest() != entry.sha256:
                    raise BundleError(
                        f"{label}:{name}: sha256 {digest.hexdigest()[:16]}... does not match the manifest's "
                        f"{entry.sha256[:16]}... (files.{name}.sha256); the archive was altered or corrupted"
                    )
                if want:
                    members[name] = b"".join(parts)
    except tarfile.ReadError as e:
        if manifest is None and not seen:
            raise BundleError(f"{label}: not a packed edge-embed bundle (an uncompressed tar): {e}; "
                              "make one with 'edge-embed pack BUNDLE -o NAME.edgeembed'") from None
        raise BundleError(f"{label}:{current}: the archive ends inside this member ({e}); "
                          "it is truncated: copy or download it again") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BundleError(f"{label}:{current}: cannot read the archive ({type(e).__name__}: {e})") from None
    if manifest is None:
        raise BundleError(f"{label}: holds no {MANIFEST_NAME}; this is not a packed edge-embed bundle")
    missing = sorted(set(manifest.files) - seen, key=lambda n: (n == manifest.model_file, n))  # pack's order
    if missing:
        raise BundleError(f"{label}:{missing[0]}: missing from the archive, the manifest lists it "
                          f"(files.{missing[0]}); the archive is truncated or incomplete")
    if verify and packed_layout:
        _check_layout(stream, label, top[0] if top else "", sequence)
    in_place = None
    if unread is not None and path is not None:
        if _closes_at_end(stream, unread.offset_data + unread.size, file_size):
            in_place = (manifest.model_file, path)
        else:  # not pack's layout after all (altered after the model): read the bytes
            stream.seek(unread.offset_data)
            members[manifest.model_file] = stream.read(unread.size)
    return PackedBundle(label, manifest, members, in_place)


def _opens_like_pack(stream: IO[bytes]) -> bool:
    """True if the archive opens with pack's global header (then verify checks every byte of its layout)."""
    head = stream.read(_BLOCK)
    stream.seek(0)
    return len(head) == _BLOCK and head[156:157] == tarfile.XGLTYPE and _NOTE in head[:100]


def _check_layout(stream: IO[bytes], label: str, top: str, sequence: list[tuple[str, int]]) -> None:
    """Every byte outside the members' data (hashed separately) must be what pack writes.

    Tar readers skip padding, trailing blocks and the text of global headers, and tar's header
    checksum ignores a byte of its own field, so without this a changed byte there would load.
    """
    where = "the archive header"
    pos = 0
    for part in _layout(top, sequence) if sequence else []:
        if isinstance(part, tuple):
            where = f"the tar structure after {part[0]}"
            pos += part[1]
            continue
        stream.seek(pos)
        got = stream.read(len(part))
        if got != part:
            diff = (i for i, (a, b) in enumerate(zip(got, part, strict=False)) if a != b)
            at = pos + next(diff, min(len(got), len(part)))
            raise BundleError(f"{label}: byte {at} ({where}) is not what 'edge-embed pack' writes; "
                              "the archive was altered or corrupted: copy it again or repack the bundle")
        pos += len(part)
    stream.seek(0, os.SEEK_END)
    end = stream.tell()
    if end != pos:
        raise BundleError(f"{label}: {end - pos} bytes follow the end of the archive 'edge-embed pack' wrote; "
                          "the archive was altered: copy it again or repack the bundle")


def _member_reader(tf: tarfile.TarFile, stream: IO[bytes], info: tarfile.TarInfo,
                   seekable: bool) -> Callable[[int], bytes]:
    """read(n) for one member's data: straight from the underlying file when it can seek."""
    if seekable:
        stream.seek(info.offset_data)
        return stream.read
    f = tf.extractfile(info)
    if f is None:  # pragma: no cover - regular members always have data
        raise tarfile.ReadError(f"{info.name} has no data")
    return f.read
