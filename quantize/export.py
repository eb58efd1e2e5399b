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

from . import EXTRA_HINT, BuildError

__all__ = ["fetch", "export_onnx", "save_tokenizer", "fuse"]

log = logging.getLogger("quantize")
_HUB_FILES = ["*.json", "*.txt", "*.safetensors", "*.model", "1_Pooling/*"]


HUB_TIMEOUT_ENV = "HF_HUB_ETAG_TIMEOUT"


def _offline_error(load_from: str, why: str) -> BuildError:
    return BuildError(
        f"{load_from}: {why} and the model is not in the Hugging Face cache; download it on a connected "
        "machine (huggingface-cli download ID --local-dir DIR) and pass the local directory: "
        "edge-embed build DIR -o OUT"
    )


def fetch(load_from: str, revision: str | None) -> tuple[Path, dict[str, Any]]:
    """A local model directory for load_from, plus source facts for the manifest.

    A hub id is resolved to a commit first with a bounded request ($HF_HUB_ETAG_TIMEOUT
    seconds, default 10): huggingface_hub's own repo_info call inside snapshot_download
    has no timeout and waits forever on a network that drops packets. Unreachable hub
    -> the cached snapshot of that revision, if any, else a BuildError saying what to do.
    """
    p = Path(load_from)
    if p.is_dir():
        return p, {"model_id": load_from, "revision": revision, "local_path": str(p.resolve())}
    import requests
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    timeout = float(os.environ.get(HUB_TIMEOUT_ENV) or 10)
    offline = bool(constants.HF_HUB_OFFLINE)
    why = "the Hugging Face hub is not reachable (HF_HUB_OFFLINE is set)"
    target = revision
    if not offline:
        try:
            target = HfApi().repo_info(load_from, revision=revision, timeout=timeout).sha or revision
        except (requests.ConnectionError, requests.Timeout, OfflineModeIsEnabled) as e:
            log.info("hub not reachable (%s); trying the local cache", type(e).__name__)
            why = f"the Hugging Face hub is not reachable ({type(e).__name__}, {timeout:g} s timeout)"
            offline = True
        except Exception as e:  # RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError, HTTP errors
            raise BuildError(f"{load_from}: cannot resolve on the Hugging Face hub ({type(e).__name__}: {e}); "
                             "check the id and --revision") from None
    try:
        local = snapshot_download(load_from, revision=target, allow_patterns=_HUB_FILES, etag_timeout=timeout,
                                  local_files_only=offline)
    except LocalEntryNotFoundError:
        raise _offline_error(load_from, why) from None
    except Exception as e:  # HTTP errors while downloading
        raise BuildError(f"{load_from}: cannot fetch from the Hugging Face hub ({type(e).__name__}: {e})") from None
    resolved = Path(local).name  # snapshot folders are named by commit sha
    return Path(local), {"model_id": load_from, "revision": resolved, "requested_revision": revision}


def export_onnx(model_dir: Path, out_dir: Path, opset: int | None = None) -> Path:
    """Export with optimum (feature-extraction: last_hidden_state, dynamic batch and sequence)."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as e:
        raise BuildError(f"{model_dir}: exporting from PyTorch needs torch, transformers and optimum ({e}); "
                         f"{EXTRA_HINT}, or start from an ONNX file with --from-onnx") from None

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
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level=1 is ORT's basic pass, then the fusions; the optimizer's own basic pass imports
    # torch (for a GPU check), so the pass is run here and the fusions get opt_level=0: the
    # same steps, and --from-onnx builds without torch get a fused graph too
    basic = out_path.with_name(out_path.stem + ".basic.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(basic)
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["ConstantSharing"])
        opt = optimize_model(str(basic), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                             opt_level=0)
    finally:
        basic.unlink(missing_ok=True)
    opt.save_model_to_file(str(out_path))
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    return stats


def save_tokenizer(model_dir: Path, out_path: Path, max_length: int) -> None:
    """One tokenizer.json: no fixed padding (the runtime pads per batch), truncation at max_length."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise BuildError(f"{model_dir}: reading a Hugging Face tokenizer needs transformers ({e}); "
                         f"{EXTRA_HINT}, or pass a tokenizer.json with --from-onnx --tokenizer") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as e:
        raise BuildError(f"{model_dir}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    if not getattr(tok, "is_fast", False):
        raise BuildError(f"{model_dir}: only a fast (tokenizers) tokenizer can be bundled")
    backend = tok.backend_tokenizer
    backend.no_padding()
    backend.enable_truncation(max_length)
    backend.save(str(out_path), pretty=False)  # compact JSON: a third smaller on disk and in archives


def model_facts(model_dir: Path) -> dict[str, Any]:
    cfg = json.loads((model_dir / "config.json").read_text())
    return {
        "model_type": cfg.get("model_type"),
        "hidden_size": cfg.get("hidden_size"),
        "num_heads": cfg.get("num_attention_heads"),
        "max_position_embeddings": cfg.get("max_position_embeddings"),
    }
