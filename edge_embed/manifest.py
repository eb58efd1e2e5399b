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

from .errors import BundleError

__all__ = ["FORMAT", "FORMAT_MAJOR", "MANIFEST_NAME", "RANGES_KEY", "FileEntry", "Manifest", "check_ranges",
           "sha256_file"]

FORMAT_NAME = "edge-embed.bundle"
FORMAT_MAJOR = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_MAJOR}"
MANIFEST_NAME = "manifest.json"
POOLINGS = ("cls", "mean")
# optional: per-dimension [min, max] of the bundle's vectors, for encode(precision="int8"/"uint8")
RANGES_KEY = "int8_ranges"
_CHUNK = 1 << 20


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
        if not major_s.isdigit():
            raise BundleError(f"{where}: 'format' has no numeric major version: {fmt!r}")
        if int(major_s) > FORMAT_MAJOR:
            raise BundleError(
                f"{where}: 'format' is {fmt!r}, newer than this runtime reads ({FORMAT}); "
                "upgrade edge-embed"
            )

        dim = need("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise BundleError(f"{where}: 'dim' must be a positive integer, got {dim!r}")
        max_length = need("max_length")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise BundleError(f"{where}: 'max_length' must be an integer >= 2, got {max_length!r}")
        pooling = need("pooling")
        if pooling not in POOLINGS:
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
            if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
                raise BundleError(f"{where}: 'files' has an unsafe file name {name!r}")
            if not isinstance(entry, dict):
                raise BundleError(f"{where}: 'files.{name}' must be an object with 'bytes' and 'sha256'")
            size, digest = entry.get("bytes"), entry.get("sha256")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BundleError(f"{where}: 'files.{name}.bytes' must be a non-negative integer, got {size!r}")
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise BundleError(f"{where}: 'files.{name}.sha256' must be 64 lowercase hex digits, got {digest!r}")
            files[name] = FileEntry(size, digest)

        model_file = data.get("model_file", "model.onnx")
        tokenizer_file = data.get("tokenizer_file", "tokenizer.json")
        ort_model_file = data.get("ort_model_file")
        for key, value in (("model_file", model_file), ("tokenizer_file", tokenizer_file),
                           ("ort_model_file", ort_model_file)):
            if value is None and key == "ort_model_file":
                continue
            if value not in files:
                raise BundleError(f"{where}: '{key}' is {value!r}, which 'files' does not list")

        prompts = data.get("prompts", {})
        if not isinstance(prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
        ):
            raise BundleError(f"{where}: 'prompts' must map names to prefix strings, got {prompts!r}")
        dicts = {}
        for key in ("quantization", "validation", "built_with"):
            value = data.get(key, {})
            if not isinstance(value, dict):
                raise BundleError(f"{where}: '{key}' must be an object, got {type(value).__name__}")
            dicts[key] = value
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
    def read(cls, bundle_dir: str | os.PathLike[str]) -> Manifest:
        """Read and validate ``<bundle_dir>/manifest.json``."""
        root = Path(bundle_dir)
        if not root.exists():
            raise BundleError(f"{root}: no such bundle; build one with 'edge-embed build' or check the path")
        if not root.is_dir():
            raise BundleError(f"{root}: a bundle is a directory holding {MANIFEST_NAME}")
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise BundleError(f"{path}: missing; this directory is not an edge-embed bundle")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{path}: not valid JSON ({e}); rebuild the bundle") from None
        return cls.from_dict(data, where=str(path))

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
        path = Path(bundle_dir) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
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
