"""The bundle manifest: read, validate, write and verify ``manifest.json``.

A bundle is a directory holding the ONNX model, ``tokenizer.json``, ``validation.json``
and ``manifest.json``. The manifest names every other file with its size and sha256 and
carries everything model-specific as data (pooling, prompts, dim, max_length, ...), so
the runtime never guesses. This module uses the standard library only; it does not load
models and does not know how a bundle was built.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError, InputError

__all__ = [
    "DIGEST_NAME", "FORMAT", "FORMAT_MAJOR", "MANIFEST_NAME", "RANGES_KEY", "FileEntry", "Manifest", "check_digest",
    "check_ranges", "check_recorded", "digest_line", "manifest_digest", "sha256_file",
]

FORMAT_NAME = "edge-embed.bundle"
FORMAT_MAJOR = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_MAJOR}"
MANIFEST_NAME = "manifest.json"
# sha256 of manifest.json's bytes, in sha256sum's format ("<hex>  manifest.json"): with it a
# changed byte anywhere in the manifest is refused like one in any file the manifest lists
DIGEST_NAME = "manifest.json.sha256"
POOLINGS = ("cls", "mean")
# optional: per-dimension [min, max] of the bundle's vectors, for encode(precision="int8"/"uint8")
RANGES_KEY = "int8_ranges"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; more is not a manifest (read no further)
_MAX_DIM = 1 << 16
_MAX_LENGTH = 1 << 20
_MAX_FILE_BYTES = 1 << 40
_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")


def manifest_digest(raw: bytes) -> str:
    """The bundle digest users pin: ``"sha256:<hex>"`` of manifest.json's bytes."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def check_digest(digest: Any, where: str = "digest") -> str:
    """Validate a digest given by a user: ``sha256:`` and 64 lowercase hex digits."""
    if (not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71
            or not set(digest[7:]) <= _HEX):
        raise InputError(f"{where}: expected 'sha256:' and 64 hex digits (as 'edge-embed info' prints), "
                         f"got {digest!r}")
    return digest


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _safe_name(name: Any) -> bool:
    """A file name that stays inside the bundle: no separators, no '..', no drive, no control characters."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..")
            and not any(c in name for c in "/\\:") and all(ord(c) >= 32 and c != "\x7f" for c in name)
            and name.strip() == name)


def _positive_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _parse_json(raw: bytes, where: str, hint: str) -> Any:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: {len(raw)} bytes, more than a manifest holds ({MAX_MANIFEST_BYTES}); {hint}")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: bad JSON, huge integers
        raise BundleError(f"{where}: not valid JSON ({type(e).__name__}: {str(e)[:200]}); {hint}") from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_ranges(value: Any, dim: int, where: str) -> None:
    """Validate a manifest's ``int8_ranges``: {"min": [dim floats], "max": [dim floats], ...}, min < max."""
    if not isinstance(value, dict):
        raise BundleError(f"{where}: '{RANGES_KEY}' must be an object with 'min' and 'max', got {type(value).__name__}")
    for key in ("min", "max"):
        seq = value.get(key)
        if not isinstance(seq, list) or len(seq) != dim:
            got = len(seq) if isinstance(seq, list) else type(seq).__name__
            raise BundleError(f"{where}: '{RANGES_KEY}.{key}' must be a list of dim={dim} numbers, got {got}")
        bad = next((i for i, x in enumerate(seq) if isinstance(x, bool) or not isinstance(x, (int, float))
                    or not math.isfinite(x)), None)
        if bad is not None:
            raise BundleError(f"{where}: '{RANGES_KEY}.{key}[{bad}]' must be a finite number, got {seq[bad]!r}")
    lo, hi = value["min"], value["max"]
    bad = next((i for i in range(dim) if not lo[i] < hi[i]), None)
    if bad is not None:
        raise BundleError(f"{where}: '{RANGES_KEY}' dimension {bad} has min {lo[bad]} >= max {hi[bad]}; "
                          "rebuild the bundle")
def digest_line(raw: bytes) -> bytes:
    """manifest.json.sha256's content for manifest bytes ``raw`` (``sha256sum -c`` reads it)."""
    return f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST_NAME}\n".encode("ascii")


def check_recorded(digest: str, recorded: bytes, where: str, recorded_where: str) -> None:
    if recorded != f"{digest[7:]}  {MANIFEST_NAME}\n".encode("ascii"):
        raise BundleError(
            f"{where}: its sha256 does not match {recorded_where} (the digest recorded at build time); "
            "manifest.json or its checksum file was altered or corrupted: rebuild or copy the bundle again"
        )


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "sha256": self.sha256}


@dataclass
class Manifest:
    """Everything a runtime needs to know about a bundle, as data."""

    dim: int
    max_length: int
    pooling: str
    normalize: bool
    source: dict[str, Any]
    files: dict[str, FileEntry]
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    # the same graph in ONNX Runtime's ORT format (for mobile / minimal builds), when converted
    ort_model_file: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    built_with: dict[str, str] = field(default_factory=dict)
    name: str = ""
    format: str = FORMAT
    # keys written by a newer minor version of the format: kept, written back, not used
    extra: dict[str, Any] = field(default_factory=dict)
    # "sha256:<hex>" of the manifest.json bytes this was read from ("" when built in memory)
    digest: str = field(default="", compare=False)

    _KNOWN = (
        "format", "name", "dim", "max_length", "pooling", "normalize", "source", "files",
        "model_file", "tokenizer_file", "ort_model_file", "prompts", "quantization", "validation", "built_with",
    )

    # ---------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> Manifest:
        """Validate a parsed manifest; every problem is a BundleError naming the key."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: must hold a JSON object, got {type(data).__name__}")

        def need(key: str) -> Any:
            if key not in data:
                raise BundleError(f"{where}: missing key {key!r}; rebuild the bundle with 'edge-embed build'")
            return data[key]

        fmt = need("format")
        if not isinstance(fmt, str) or "/" not in fmt or fmt.split("/")[0] != FORMAT_NAME:
            raise BundleError(f"{where}: 'format' must be '{FORMAT_NAME}/<major>', got {fmt!r}")
        major_s = fmt.split("/", 1)[1].split(".")[0]
        if not major_s.isdigit() or not major_s.isascii() or len(major_s) > 6:
            raise BundleError(f"{where}: 'format' has no numeric major version: {fmt!r}")
        if int(major_s) > FORMAT_MAJOR:
            raise BundleError(
                f"{where}: 'format' is {fmt!r}, newer than this runtime reads ({FORMAT}); "
                "upgrade edge-embed"
            )

        dim = need("dim")
        if not _positive_int(dim, 1, _MAX_DIM):
            raise BundleError(f"{where}: 'dim' must be an integer from 1 to {_MAX_DIM}, got {dim!r}")
        max_length = need("max_length")
        if not _positive_int(max_length, 2, _MAX_LENGTH):
            raise BundleError(f"{where}: 'max_length' must be an integer from 2 to {_MAX_LENGTH}, got {max_length!r}")
        pooling = need("pooling")
        if not isinstance(pooling, str) or pooling not in POOLINGS:
            raise BundleError(f"{where}: 'pooling' must be 'cls' or 'mean', got {pooling!r}")
        normalize = need("normalize")
        if not isinstance(normalize, bool):
            raise BundleError(f"{where}: 'normalize' must be true or false, got {normalize!r}")
        source = need("source")
        if not isinstance(source, dict):
            raise BundleError(f"{where}: 'source' must be an object, got {source!r}")

        files_raw = need("files")
        if not isinstance(files_raw, dict) or not files_raw:
            raise BundleError(f"{where}: 'files' must be a non-empty object of name -> {{bytes, sha256}}")
        files: dict[str, FileEntry] = {}
        for name, entry in files_raw.items():
            if not _safe_name(name) or name == DIGEST_NAME:
                raise BundleError(f"{where}: 'files' has an unsafe file name {name!r}; a bundle's files are "
                                  "plain names inside its directory")
            if not isinstance(entry, dict):
                raise BundleError(f"{where}: 'files.{name}' must be an object with 'bytes' and 'sha256'")
            size: Any = entry.get("bytes")
            digest: Any = entry.get("sha256")
            if not _positive_int(size, 0, _MAX_FILE_BYTES):
                raise BundleError(f"{where}: 'files.{name}.bytes' must be an integer from 0 to {_MAX_FILE_BYTES}, "
                                  f"got {size!r}")
            if not _is_hex64(digest):
                raise BundleError(f"{where}: 'files.{name}.sha256' must be 64 lowercase hex digits, got {digest!r}")
            files[name] = FileEntry(size, digest)

        model_file = data.get("model_file", "model.onnx")
        tokenizer_file = data.get("tokenizer_file", "tokenizer.json")
        ort_model_file = data.get("ort_model_file")
        for key, value in (("model_file", model_file), ("tokenizer_file", tokenizer_file),
                           ("ort_model_file", ort_model_file)):
            if value is None and key == "ort_model_file":
                continue
            if not isinstance(value, str) or value not in files:
                raise BundleError(f"{where}: '{key}' is {value!r}, which 'files' does not list")

        prompts = data.get("prompts", {})
        if not isinstance(prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
        ):
            raise BundleError(f"{where}: 'prompts' must map names to prefix strings, got {prompts!r}")
        for k, v in prompts.items():
            try:
                (k + v).encode("utf-8")
            except UnicodeEncodeError:
                raise BundleError(f"{where}: 'prompts.{k!r}' holds a lone surrogate, not text; "
                                  "rebuild the bundle") from None
        dicts = {}
        for key in ("quantization", "validation", "built_with"):
            value = data.get(key, {})
            if not isinstance(value, dict):
                raise BundleError(f"{where}: '{key}' must be an object, got {type(value).__name__}")
            dicts[key] = value
        if not all(isinstance(v, str) for v in dicts["built_with"].values()):
            raise BundleError(f"{where}: 'built_with' must map package names to version strings")
        name = data.get("name", "")
        if not isinstance(name, str):
            raise BundleError(f"{where}: 'name' must be a string, got {name!r}")
        if RANGES_KEY in data:
            check_ranges(data[RANGES_KEY], dim, where)

        return cls(
            dim=dim, max_length=max_length, pooling=pooling, normalize=normalize, source=source,
            files=files, model_file=model_file, tokenizer_file=tokenizer_file,
            ort_model_file=ort_model_file, prompts=dict(prompts),
            quantization=dicts["quantization"], validation=dicts["validation"],
            built_with=dicts["built_with"], name=name, format=fmt,
            extra={k: v for k, v in data.items() if k not in cls._KNOWN},
        )

    @classmethod
    def from_bytes(cls, raw: bytes, where: str = MANIFEST_NAME, recorded: bytes | None = None,
                   recorded_where: str = DIGEST_NAME, digest: str | None = None) -> Manifest:
        """Parse and validate manifest.json's bytes.

        recorded: the bundle's manifest.json.sha256, if it has one. digest: a pinned bundle digest;
        other bytes are refused before they are parsed.
        """
        actual = manifest_digest(raw)
        if digest is not None and actual != check_digest(digest):
            raise BundleError(f"{where}: bundle digest {actual} is not the pinned {digest}; this is not the "
                              "bundle you pinned: check where it came from, or pin its new digest")
        digest = actual
        if recorded is not None:
            check_recorded(digest, recorded, where, recorded_where)
        m = cls.from_dict(_parse_json(raw, where, "rebuild the bundle"), where=where)
        m.digest = digest
        return m

    @classmethod
    def read(cls, bundle_dir: str | os.PathLike[str], digest: str | None = None) -> Manifest:
        """Read and validate ``<bundle_dir>/manifest.json`` (and its recorded sha256, when the bundle has one).

        digest: a pinned bundle digest (see :meth:`from_bytes`).
        """
        root = Path(bundle_dir)
        if not root.exists():
            raise BundleError(f"{root}: no such bundle; build one with 'edge-embed build' or check the path")
        if not root.is_dir():
            raise BundleError(f"{root}: a bundle is a directory holding {MANIFEST_NAME}")
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise BundleError(f"{path}: missing; this directory is not an edge-embed bundle")
        recorded_path = root / DIGEST_NAME
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{path}: {path.stat().st_size} bytes, more than a manifest holds; "
                                  "rebuild the bundle")
            raw = path.read_bytes()
            recorded = recorded_path.read_bytes()[:4096] if recorded_path.is_file() else None
        except OSError as e:
            raise BundleError(f"{path}: cannot read ({e.strerror})") from None
        return cls.from_bytes(raw, where=str(path), recorded=recorded, recorded_where=str(recorded_path),
                              digest=digest)

    # ---------------------------------------------------------------- writing
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "name": self.name,
            "source": self.source,
            "dim": self.dim,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "prompts": self.prompts,
            "model_file": self.model_file,
            "tokenizer_file": self.tokenizer_file,
            **({"ort_model_file": self.ort_model_file} if self.ort_model_file else {}),
            "files": {k: self.files[k].to_dict() for k in sorted(self.files)},
            "quantization": self.quantization,
            "validation": self.validation,
            "built_with": self.built_with,
        }
        out.update(self.extra)
        return out

    def write(self, bundle_dir: str | os.PathLike[str]) -> Path:
        """Write manifest.json and manifest.json.sha256 (its sha256); sets ``digest``."""
        path = Path(bundle_dir) / MANIFEST_NAME
        raw = (json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n").encode("utf-8")
        path.write_bytes(raw)
        self.digest = manifest_digest(raw)
        (path.parent / DIGEST_NAME).write_bytes(digest_line(raw))
        return path

    @staticmethod
    def describe_files(bundle_dir: str | os.PathLike[str], names: list[str]) -> dict[str, FileEntry]:
        """Size and sha256 of each named file, for a manifest being written."""
        root = Path(bundle_dir)
        return {n: FileEntry((root / n).stat().st_size, sha256_file(root / n)) for n in sorted(names)}

    # ---------------------------------------------------------------- checking
    def check_present(self, bundle_dir: str | os.PathLike[str]) -> None:
        """Cheap check done on every load: each listed file exists with the listed size."""
        root = Path(bundle_dir)
        for name, entry in self.files.items():
            p = root / name
            if not p.is_file():
                raise BundleError(f"{p}: missing; the manifest lists it (files.{name})")
            size = p.stat().st_size
            if size != entry.bytes:
                raise BundleError(
                    f"{p}: {size} bytes, the manifest says {entry.bytes} (files.{name}.bytes); "
                    "the file is truncated or altered"
                )

    def verify(self, bundle_dir: str | os.PathLike[str]) -> None:
        """Full check: sizes and sha256 of every listed file."""
        self.check_present(bundle_dir)
        root = Path(bundle_dir)
        for name, entry in self.files.items():
            digest = sha256_file(root / name)
            if digest != entry.sha256:
                raise BundleError(
                    f"{root / name}: sha256 {digest[:16]}... does not match the manifest's "
                    f"{entry.sha256[:16]}... (files.{name}.sha256); the file was altered or corrupted"
                )
