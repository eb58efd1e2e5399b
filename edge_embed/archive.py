"""Single-file bundles: pack a bundle directory into one uncompressed tar, read it back.

A packed bundle (``NAME.edgeembed``) is a POSIX tar, no compression, holding the bundle
directory: ``NAME/manifest.json`` first, then every file the manifest lists. Tar rather
than zip because it is read front to back: a truncated archive fails while reading the
member it cuts, so the error can name that member (a zip's index sits at the end and goes
first). No compression because the INT8 weights barely compress and a stored member is
read with one copy.

The archive is read into memory, never unpacked to disk: onnxruntime builds a session
from model bytes and tokenizers parses a JSON string. Sizes are checked on every read,
sha256 only when asked (as for directories). This module does not load models and does
not write manifests; it uses the standard library only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

from .errors import BundleError, InputError
from .manifest import MANIFEST_NAME, Manifest

__all__ = ["ARCHIVE_SUFFIX", "ArchiveSource", "PackedBundle", "is_archive", "pack", "read_archive"]

ARCHIVE_SUFFIX = ".edgeembed"
_CHUNK = 1 << 20

ArchiveSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


@dataclass
class PackedBundle:
    """A bundle read from an archive: its manifest and the bytes of the files asked for."""

    label: str  # where it came from, for messages: a path, or "<bytes>" / "<file object>"
    manifest: Manifest
    members: dict[str, bytes]

    def where(self, name: str) -> str:
        return f"{self.label}:{name}"

    def data(self, name: str) -> bytes:
        if name not in self.members:
            raise BundleError(f"{self.where(name)}: not in the archive; repack the bundle with 'edge-embed pack'")
        return self.members[name]


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


def pack(bundle_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Verify a bundle directory (every sha256) and write it as one uncompressed tar."""
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            tf.addfile(_tarinfo(top, 0, directory=True))
            names = [MANIFEST_NAME, *sorted(manifest.files)]
            for name in names:
                path = root / name
                with open(path, "rb") as f:
                    tf.addfile(_tarinfo(f"{top}/{name}", path.stat().st_size), f)
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
                 keep: Callable[[Manifest], Collection[str]] | None = None) -> PackedBundle:
    """Read a packed bundle from a path, bytes or a binary file object.

    Every member's size is checked against the manifest; with verify=True its sha256 too.
    keep: given the manifest, which files' bytes to return (default all); the others are read through,
    so a truncation anywhere is caught. Any problem is a BundleError naming the member.
    """
    stream, label, owned = _open(source)
    try:
        return _read(stream, label, verify, keep)
    finally:
        if owned:
            stream.close()


def _read(stream: IO[bytes], label: str, verify: bool,
          keep: Callable[[Manifest], Collection[str]] | None) -> PackedBundle:
    manifest: Manifest | None = None
    wanted: Collection[str] | None = None
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    top: list[str] = []
    current = "the archive header"
    try:
        # a seekable source is read member by member with one read() each (tarfile's stream
        # mode copies in 10 KiB blocks: 4x slower on a 23 MB model); pipes use stream mode
        seekable = stream.seekable() if hasattr(stream, "seekable") else False
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
                f = _member_reader(tf, stream, info, seekable)
                if name == MANIFEST_NAME:
                    manifest = _parse_manifest(f(info.size), f"{label}:{MANIFEST_NAME}")
                    wanted = keep(manifest) if keep else None
                    continue
                if manifest is None:
                    raise BundleError(f"{label}: the first member is {name!r}, expected {MANIFEST_NAME}; "
                                      "this is not a packed edge-embed bundle")
                entry = manifest.files.get(name)
                if entry is None:
                    continue  # like a directory bundle, files the manifest does not list are ignored
                want = wanted is None or name in wanted
                digest = hashlib.sha256() if verify else None
                parts: list[bytes] = []
                got = 0
                while chunk := f(info.size - got if want else min(_CHUNK, info.size - got)):
                    got += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    if want:
                        parts.append(chunk)
                if info.size != entry.bytes or got != entry.bytes:
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
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise BundleError(f"{label}:{missing[0]}: missing from the archive, the manifest lists it "
                          f"(files.{missing[0]}); the archive is truncated or incomplete")
    return PackedBundle(label, manifest, members)


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


def _parse_manifest(raw: bytes, where: str) -> Manifest:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{where}: not valid JSON ({e}); repack the bundle") from None
    return Manifest.from_dict(data, where=where)
