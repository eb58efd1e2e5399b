"""Recipes: everything model-specific about a build, as data in ``models/<name>.toml``.

A recipe names the source (hub id, optional local copy), pooling, normalisation,
max_length, prompts, the quantization defaults and the fidelity thresholds. This module
only reads and resolves recipes; it does not export or quantize anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from . import BuildError

__all__ = ["DEFAULT_THRESHOLDS", "Recipe", "fill_from_model_dir", "models_dir", "recipe_named", "resolve_source"]

# model_size_ratio is a ceiling (INT8 model bytes / fp32 model bytes); the rest are floors,
# judged on the probe set's gate part. batch_independence: the least cosine between a text
# embedded alone and inside a mixed-length batch of 32 (validate.batch_independence)
DEFAULT_THRESHOLDS = {"cosine_mean": 0.998, "cosine_p1": 0.995, "cosine_min": 0.97, "top10_overlap": 0.85,
                      "batch_independence": 0.999, "model_size_ratio": 0.40}
MODELS_ENV = "EDGE_EMBED_MODELS"


def models_dir() -> Path:
    """Where recipes live: $EDGE_EMBED_MODELS, else the checkout's models/ folder, else the copy
    a pip install ships as quantize/recipes."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    checkout = here.parent / "models"
    packaged = here / "recipes"
    return checkout if any(checkout.glob("*.toml")) or not packaged.is_dir() else packaged


@dataclass
class Recipe:
    name: str
    hf_id: str = ""
    revision: str | None = None
    local_package: str | None = None
    local_subdir: str = ""
    pooling: str | None = None
    normalize: bool = True
    max_length: int | None = None
    dim: int | None = None  # the hidden size the source must have; checked against a given ONNX graph
    prompts: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    quantization: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the TOML file, when read from one

    @classmethod
    def from_file(cls, path: Path) -> Recipe:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise BuildError(f"{path}: cannot read recipe ({e})") from None
        known = {"name", "hf_id", "revision", "local_package", "local_subdir", "pooling", "normalize",
                 "max_length", "dim", "prompts", "thresholds", "quantization"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BuildError(f"{path}: unknown recipe keys {unknown}; known: {sorted(known)}")
        th = dict(DEFAULT_THRESHOLDS)
        th.update(data.get("thresholds", {}))
        r = cls(
            name=data.get("name", path.stem), hf_id=data.get("hf_id", ""), revision=data.get("revision") or None,
            local_package=data.get("local_package"), local_subdir=data.get("local_subdir", ""),
            pooling=data.get("pooling"), normalize=bool(data.get("normalize", True)),
            max_length=data.get("max_length"), dim=data.get("dim"), prompts=dict(data.get("prompts", {})),
            thresholds=th,
            quantization=dict(data.get("quantization", {})), path=path,
        )
        if r.pooling not in (None, "cls", "mean"):
            raise BuildError(f"{path}: 'pooling' must be 'cls' or 'mean', got {r.pooling!r}")
        if r.dim is not None and (not isinstance(r.dim, int) or isinstance(r.dim, bool) or r.dim <= 0):
            raise BuildError(f"{path}: 'dim' must be a positive integer, got {r.dim!r}")
        return r

    def local_dir(self) -> Path | None:
        """The weights shipped by an installed Python package, if the recipe names one."""
        if not self.local_package:
            return None
        spec = importlib.util.find_spec(self.local_package)
        if spec is None or not spec.submodule_search_locations:
            return None
        d = Path(next(iter(spec.submodule_search_locations))) / self.local_subdir
        return d if (d / "config.json").is_file() else None


def _sentence_transformers_facts(model_dir: Path) -> dict[str, Any]:
    """Pooling and max length as sentence-transformers would read them from a local dir."""
    facts: dict[str, Any] = {}
    pool_cfg = model_dir / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        if cfg.get("pooling_mode_cls_token"):
            facts["pooling"] = "cls"
        elif cfg.get("pooling_mode_mean_tokens"):
            facts["pooling"] = "mean"
    sb = model_dir / "sentence_bert_config.json"
    if sb.is_file():
        msl = json.loads(sb.read_text()).get("max_seq_length")
        if isinstance(msl, int):
            facts["max_length"] = msl
    return facts


def recipe_named(name: str) -> Recipe:
    """The recipe models/<name>.toml (or the one whose hf_id is name); a BuildError listing the known ones."""
    recipe_file = models_dir() / f"{name}.toml"
    if recipe_file.is_file():
        return Recipe.from_file(recipe_file)
    for candidate in sorted(models_dir().glob("*.toml")):
        recipe = Recipe.from_file(candidate)
        if recipe.hf_id and recipe.hf_id.lower() == name.lower():
            return recipe
    known = sorted(p.stem for p in models_dir().glob("*.toml"))
    raise BuildError(f"{name}: not a recipe in {models_dir()} (known: {', '.join(known) or 'none'}); with "
                     "--from-onnx, SOURCE names the recipe that says how the given graph pools and prompts")


def resolve_source(source: str, revision: str | None = None) -> tuple[Recipe, str]:
    """SOURCE (recipe name, local HF directory or hub id) -> (recipe, where to load from).

    The second item is a local directory or a hub id; hub ids are only fetched by the
    exporter, so an offline machine fails there with a message saying what to do.
    """
    recipe_file = models_dir() / f"{source}.toml"
    local = Path(source).expanduser()
    if not recipe_file.is_file() and not local.exists():
        # a hub id that a recipe describes gets that recipe's pooling, prompts and thresholds
        for candidate in sorted(models_dir().glob("*.toml")):
            if Recipe.from_file(candidate).hf_id.lower() == source.lower():
                recipe = Recipe.from_file(candidate)
                recipe.local_package = None  # the user asked for the hub copy
                recipe.revision = revision or recipe.revision
                return recipe, recipe.hf_id
    if recipe_file.is_file():
        recipe = Recipe.from_file(recipe_file)
        where = recipe.local_dir()
        load_from = str(where) if where else recipe.hf_id
        if not load_from:
            raise BuildError(f"{recipe_file}: names neither 'hf_id' nor an installed 'local_package'")
    elif local.is_dir():
        if not (local / "config.json").is_file():
            raise BuildError(f"{local}: not a Hugging Face model directory (no config.json)")
        recipe = Recipe(name=local.resolve().name, hf_id="")
        load_from = str(local.resolve())
    elif "/" in source and not source.startswith((".", "/")):
        recipe = Recipe(name=source.split("/")[-1], hf_id=source)
        load_from = source
    else:
        known = sorted(p.stem for p in models_dir().glob("*.toml"))
        raise BuildError(
            f"{source}: not a recipe in {models_dir()} (known: {', '.join(known) or 'none'}), "
            "not a local model directory and not a Hugging Face id like 'BAAI/bge-base-en-v1.5'"
        )
    if revision:
        recipe.revision = revision
    if Path(load_from).is_dir():
        fill_from_model_dir(recipe, Path(load_from))
    return recipe, load_from


def fill_from_model_dir(recipe: Recipe, model_dir: Path) -> None:
    """Pooling and max_length the recipe leaves open, from a sentence-transformers config."""
    facts = _sentence_transformers_facts(model_dir)
    if recipe.pooling is None:
        recipe.pooling = facts.get("pooling")
    if recipe.max_length is None:
        recipe.max_length = facts.get("max_length")
