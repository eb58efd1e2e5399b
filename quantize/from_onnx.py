"""Start a build from an existing fp32 ONNX export + tokenizer.json instead of PyTorch weights.

Many users have such files and no torch: the hub's ONNX layout (``onnx/model.onnx`` beside
``tokenizer.json``, as BAAI/bge-base-en-v1.5 and the Xenova/* repositories ship it) or a
single exported file. Needs onnx and onnxruntime only. The graph is checked against what
the runtime feeds and what the recipe says (inputs, a ``last_hidden_state`` output, hidden
size, vocabulary, position table) before any slow work; then it is fused with onnxruntime's
transformer optimizer when it is a BERT graph, and the fused fp32 graph is the validation
reference. Does not export, download or guess pooling: the recipe or the caller says it.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_embed.manifest import sha256_file

from . import BuildError

__all__ = ["GraphFacts", "check_graph", "locate", "prepare_from_onnx"]

DEFAULT_MAX_LENGTH = 512
FED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what edge_embed.Embedder feeds
HIDDEN_STATE = "last_hidden_state"
# per-token activation scales (int8.per_token_model) need opset 13; hub exports are often 11
MIN_OPSET, CONVERT_TO_OPSET = 13, 14
# where the hub's ONNX layout keeps the fp32 graph, in the order they are tried
HUB_ONNX_FILES = ("onnx/model.onnx", "model.onnx")

def locate(path: Path, tokenizer: Path | None) -> tuple[Path, Path]:
    """--from-onnx PATH [--tokenizer T] -> (the .onnx file, the tokenizer.json)."""
    if path.is_dir():
        found = next((path / f for f in HUB_ONNX_FILES if (path / f).is_file()), None)
        if found is None:
            raise BuildError(f"{path}: no {' or '.join(HUB_ONNX_FILES)} in this folder; give the .onnx file "
                             "itself with --tokenizer TOKENIZER_JSON")
        tok = tokenizer or path / "tokenizer.json"
        if not tok.is_file():
            raise BuildError(f"{path}: no tokenizer.json beside {found.relative_to(path)}; pass --tokenizer "
                             "TOKENIZER_JSON")
        return found, tok
    if not path.is_file():
        raise BuildError(f"{path}: --from-onnx needs an ONNX file or a folder with onnx/model.onnx; no such "
                         "file or folder")
    if tokenizer is None:
        raise BuildError(f"{path}: --from-onnx needs --tokenizer TOKENIZER_JSON (or give the model's folder, "
                         "with onnx/model.onnx and tokenizer.json)")
    if not tokenizer.is_file():
        raise BuildError(f"{tokenizer}: --tokenizer needs the model's tokenizer.json; no such file")
    return path, tokenizer


@dataclass(frozen=True)
class GraphFacts:
    """What the build needs to know about a given graph, read without running it."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    hidden_size: int | None  # last dim of last_hidden_state, when declared
    vocab_rows: int | None  # rows of the embedding table input_ids index
    positions: int | None  # rows of the position embedding table, when the graph names one


def _graph_facts(model: Path) -> GraphFacts:
    import onnx

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception as e:
        raise BuildError(f"{model}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    inits = {i.name: list(i.dims) for i in graph.initializer}
    # older exporters list initializers among the graph inputs: those are weights, not feeds
    inputs = tuple(i.name for i in graph.input if i.name not in inits)
    outputs = tuple(o.name for o in graph.output)
    hidden = None
    for o in graph.output:
        dims = o.type.tensor_type.shape.dim
        if o.name == HIDDEN_STATE and dims and dims[-1].dim_value > 0:
            hidden = int(dims[-1].dim_value)
    # input_ids may pass through a Cast before the word-embedding Gather
    id_names = {"input_ids"} | {n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] == "input_ids"}
    vocab = positions = None
    for n in graph.node:
        if n.op_type != "Gather" or n.input[0] not in inits:
            continue
        rows = inits[n.input[0]][0] if inits[n.input[0]] else None
        if n.input[1] in id_names:
            vocab = rows
        elif "position" in n.input[0]:
            positions = rows
    return GraphFacts(inputs, outputs, hidden, vocab, positions)


def _run_width(model: Path, output: str) -> int:
    """Width of output by running the graph once on two tokens (its shape was not declared)."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        feed = {i.name: np.ones((1, 2), dtype=np.int32 if "int32" in i.type else np.int64)
                for i in sess.get_inputs()}
        return int(sess.run([output], feed)[0].shape[-1])
    except Exception as e:
        raise BuildError(f"{model}: cannot tell the embedding width ({type(e).__name__}: {e})") from None


def check_graph(model: Path, vocab_size: int, max_length: int, dim: int | None, recipe: str | None) -> int:
    """The graph's hidden size, after checking it fits the runtime and the recipe; BuildError otherwise.

    vocab_size: tokens the tokenizer can emit; dim: the recipe's hidden size, if it states one;
    recipe: the recipe's name, for the messages (None when the caller gave --pooling by hand).
    """
    facts = _graph_facts(model)
    against = f"recipe {recipe!r}" if recipe else "the build"
    unknown = [i for i in facts.inputs if i not in FED_INPUTS]
    if unknown:
        raise BuildError(f"{model}: graph inputs {unknown} are not ones edge-embed feeds {list(FED_INPUTS)}; "
                         "export the encoder with input_ids / attention_mask / token_type_ids only")
    missing = [i for i in ("input_ids", "attention_mask") if i not in facts.inputs]
    if missing:
        raise BuildError(f"{model}: the graph has no {' and no '.join(repr(m) for m in missing)} input "
                         f"(inputs: {list(facts.inputs)}); {against} batches padded texts, which needs both")
    if HIDDEN_STATE not in facts.outputs:
        raise BuildError(f"{model}: no {HIDDEN_STATE!r} output (outputs: {list(facts.outputs)}); {against} pools "
                         "the token states itself: export with the feature-extraction task (optimum-cli export "
                         "onnx --task feature-extraction)")
    width = facts.hidden_size or _run_width(model, HIDDEN_STATE)
    if dim is not None and width != dim:
        raise BuildError(f"{model}: {HIDDEN_STATE} is {width}-d but {against} is for a {dim}-d model; this ONNX "
                         "file is another model: pick the recipe that matches it, or build without one "
                         "(--pooling ...)")
    if facts.vocab_rows is not None and vocab_size > facts.vocab_rows:
        raise BuildError(f"{model}: the tokenizer emits {vocab_size} token ids but the graph's word embedding has "
                         f"{facts.vocab_rows} rows; this tokenizer.json belongs to another model")
    if facts.positions is not None and max_length > facts.positions:
        raise BuildError(f"{model}: max_length {max_length} is more than the graph's {facts.positions} positions; "
                         f"pass --max-length {facts.positions} or less")
    return width


def heads_from_graph(model: Path, hidden: int) -> int | None:
    """Attention heads as the graph's own Reshape to (batch, seq, heads, head_size) states them."""
    import collections

    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model), load_external_data=False).graph
    consts = {i.name: numpy_helper.to_array(i).ravel().tolist() for i in graph.initializer if i.data_location == 0}
    for n in graph.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                consts[n.output[0]] = numpy_helper.to_array(value).ravel().tolist()
    producer = {o: n for n in graph.node for o in n.output}
    seen: collections.Counter[int] = collections.Counter()
    for n in graph.node:
        if n.op_type != "Reshape":
            continue
        shape: list[int | None] | None = consts.get(n.input[1])
        concat = producer.get(n.input[1])
        if shape is None and concat is not None and concat.op_type == "Concat":
            parts = [consts.get(i) for i in concat.input]
            shape = [p[0] if p is not None and len(p) == 1 else None for p in parts]
        if shape and len(shape) == 4 and shape[2] and shape[3] and shape[2] * shape[3] == hidden:
            seen[int(shape[2])] += 1
    return seen.most_common(1)[0][0] if seen else None


def _attention_heads(model: Path) -> int | None:
    import onnx

    for n in onnx.load(str(model), load_external_data=False).graph.node:
        if n.op_type == "Attention":
            return next((int(a.i) for a in n.attribute if a.name == "num_heads"), None)
    return None


def raise_opset(model: Path) -> int | None:
    """Convert model in place to CONVERT_TO_OPSET when its default-domain opset is below MIN_OPSET
    (onnx's version converter; run after fusion, so only standard ops are left to convert);
    returns the opset it had, or None when it needed nothing or could not be converted."""
    import onnx
    from onnx import version_converter

    m = onnx.load(str(model))
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= MIN_OPSET:
        return None
    try:
        converted = version_converter.convert_version(m, CONVERT_TO_OPSET)
    except Exception as e:  # the converter raises plain RuntimeError/ValueError per op
        sys.stderr.write(f"edge-embed build: {model.name}: opset {opset} kept ({type(e).__name__}: {e}); "
                         "per-token quantization needs opset 13\n")
        return None
    onnx.save(converted, str(model))
    return opset


def prepare_from_onnx(onnx_path: Path, tokenizer_path: Path, work: Path, max_length: int | None,
                      fuse: bool = True, dim: int | None = None, recipe: str | None = None) -> dict[str, Any]:
    """Check, copy/fuse the fp32 graph and configure the tokenizer in work/; return what the build needs.

    dim / recipe: the recipe's hidden size and name, checked against the graph (see check_graph).
    """
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise BuildError(f"{tokenizer_path}: not a tokenizers JSON file ({e})") from None
    trunc = tok.truncation or {}
    max_len = int(max_length or trunc.get("max_length") or DEFAULT_MAX_LENGTH)
    width = check_graph(onnx_path, tok.get_vocab_size(with_added_tokens=True), max_len, dim, recipe)
    tok.no_padding()  # the runtime pads per batch
    tok.enable_truncation(max_len)
    tok.save(str(work / "tokenizer.json"), pretty=False)

    fp32 = work / "fp32.onnx"
    fused: dict[str, int] = {}
    if fuse:
        try:
            from .export import fuse as fuse_bert

            # heads and hidden size as the graph states them; neither found: 0, 0 lets the optimizer guess
            heads = heads_from_graph(onnx_path, width)
            fused = fuse_bert(onnx_path, fp32, heads or 0, width if heads else 0)
        except Exception as e:  # not a BERT graph the fuser understands: ship it unfused
            fused = {}
            fp32.unlink(missing_ok=True)
            # written, not logged: the CLI silences library logging below errors, and an unfused
            # graph is markedly slower, which the user should know
            sys.stderr.write(f"edge-embed build: graph fusion skipped ({type(e).__name__}: {e}); the graph is "
                             "quantized unfused\n")
        if fused.get("Attention"):
            fused = {**fused, "attention_heads": _attention_heads(fp32) or 0}
    if not fp32.is_file():
        shutil.copyfile(onnx_path, fp32)
    was = raise_opset(fp32)
    if was is not None:
        fused = {**fused, "opset_converted_from": was, "opset": CONVERT_TO_OPSET}
    return {
        "fp32_model": fp32,
        "tokenizer": work / "tokenizer.json",
        "dim": width,
        "max_length": max_len,
        "fused": fused,
        "source": {
            "onnx_file": onnx_path.name,
            "onnx_sha256": sha256_file(onnx_path),
            "tokenizer_sha256": sha256_file(tokenizer_path),
        },
    }
