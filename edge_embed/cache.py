"""The local bundle cache: where ``edge-embed build NAME`` (without ``-o``) puts a bundle.

A hub id (``BAAI/bge-base-en-v1.5``) or a recipe name (``bge-base-en-v1.5``) maps to one
folder, the id's last component in lower case, under ``$EDGE_EMBED_HOME`` (default: the
user cache dir, e.g. ``~/.cache/edge-embed``). The bundle's manifest records its source id,
so an id whose folder holds another organisation's model is an error, not a wrong model.
Deliberately downloads nothing and does not build: a missing bundle is an error that
prints the build command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import BundleError

__all__ = ["HOME_ENV", "cache_dir", "cache_name", "resolve_bundle"]

HOME_ENV = "EDGE_EMBED_HOME"


def cache_dir() -> Path:
    """$EDGE_EMBED_HOME, else the platform's user cache dir + edge-embed."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edge-embed"


def cache_name(model_id: str) -> str:
    """The cache folder of a hub id or recipe name: its last path component, lower case."""
    name = model_id.strip().rstrip("/").split("/")[-1].lower()
    if not name or name in (".", ".."):
        raise BundleError(f"{model_id!r}: not a model id or recipe name")
    return name


def resolve_bundle(name_or_path: str | os.PathLike[str]) -> Path:
    """A bundle directory or packed file as given, else the cached bundle of a hub id / recipe name."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.endswith(".edgeembed") or "\\" in text:
        raise BundleError(f"{text}: no such bundle; build one with 'edge-embed build' or check the path")
    cached = cache_dir() / cache_name(text)
    if not cached.exists() and path.parent != Path(".") and path.parent.is_dir():
        # a path whose folder exists (models/typo) is a missing bundle, not a hub id
        raise BundleError(f"{text}: no such bundle; build one with 'edge-embed build' or check the path")
    if not cached.exists():
        raise BundleError(f"{text}: no bundle built for it in {cache_dir()} (${HOME_ENV}); build one with "
                          f"'edge-embed build {text}' (or pass a bundle directory)")
    _check_source(cached, text)
    return cached


def _check_source(bundle: Path, model_id: str) -> None:
    """An org/name id must match the source the cached bundle was built from."""
    if "/" not in model_id:
        return  # a recipe name: the folder is the recipe's
    from .manifest import Manifest

    built_from = str(Manifest.read(bundle).source.get("model_id") or "")
    if built_from and built_from.lower() != model_id.lower():
        raise BundleError(f"{bundle}: holds a bundle of {built_from}, not {model_id}; build {model_id} with "
                          f"'edge-embed build {model_id} -o DIR' and pass DIR")
