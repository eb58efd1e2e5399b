"""Hugging Face model -> fp32 ONNX (optimum's exporter) + one configured tokenizer.json.

Does not quantize and does not validate. Hub ids are fetched with huggingface_hub into
its cache first, so the resolved commit can be recorded; everything after that works
from a local directory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from . import BuildError

__all__ = ["fetch", "export_onnx", "save_tokenizer", "fuse"]

log = logging.getLogger("quantize")
_HUB_FILES = ["*.json", "*.txt", "*.safetensors", "*.model", "1_Pooling/*"]


def fetch(load_from: str, revision: str | None) -> tuple[Path, dict[str, Any]]:
    """A local model directory for load_from, plus source facts for the manifest."""
    p = Path(load_from)
    if p.is_dir():
        return p, {"model_id": load_from, "revision": revision, "local_path": str(p.resolve())}
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        local = snapshot_download(load_from, revision=revision, allow_patterns=_HUB_FILES, etag_timeout=15)
    except LocalEntryNotFoundError:
        raise BuildError(
            f"{load_from}: the Hugging Face hub is not reachable and the model is not cached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}); download it on a connected "
            "machine and pass the local directory: edge-embed build /path/to/model -o OUT"
        ) from None
    except Exception as e:  # RepositoryNotFoundError, RevisionNotFoundError, HTTP errors
        raise BuildError(f"{load_from}: cannot fetch from the Hugging Face hub ({type(e).__name__}: {e})") from None
    resolved = Path(local).name  # snapshot folders are named by commit sha
    return Path(local), {"model_id": load_from, "revision": resolved, "requested_revision": revision}


def export_onnx(model_dir: Path, out_dir: Path, opset: int | None = None) -> Path:
    """Export with optimum (feature-extraction: last_hidden_state, dynamic batch and sequence)."""
    from optimum.exporters.onnx import main_export

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        main_export(
            str(model_dir), str(out_dir), task="feature-extraction", opset=opset,
            do_validation=False, library_name="transformers", local_files_only=True,
        )
    except Exception as e:
        raise BuildError(f"{model_dir}: ONNX export failed ({type(e).__name__}: {e})") from e
    path = out_dir / "model.onnx"
    if not path.is_file():
        raise BuildError(f"{out_dir}: the exporter wrote no model.onnx")
    return path


def fuse(model_path: Path, out_path: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """ORT's BERT graph fusion (Attention, SkipLayerNorm, BiasGelu) before quantization."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(model_path), model_type="bert", num_heads=num_heads,
                         hidden_size=hidden_size, opt_level=1)
    opt.save_model_to_file(str(out_path))
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    return stats


def save_tokenizer(model_dir: Path, out_path: Path, max_length: int) -> None:
    """One tokenizer.json: no fixed padding (the runtime pads per batch), truncation at max_length."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as e:
        raise BuildError(f"{model_dir}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    if not getattr(tok, "is_fast", False):
        raise BuildError(f"{model_dir}: only a fast (tokenizers) tokenizer can be bundled")
    backend = tok.backend_tokenizer
    backend.no_padding()
    backend.enable_truncation(max_length)
    backend.save(str(out_path))


def model_facts(model_dir: Path) -> dict[str, Any]:
    cfg = json.loads((model_dir / "config.json").read_text())
    return {
        "model_type": cfg.get("model_type"),
        "hidden_size": cfg.get("hidden_size"),
        "num_heads": cfg.get("num_attention_heads"),
        "max_position_embeddings": cfg.get("max_position_embeddings"),
    }
