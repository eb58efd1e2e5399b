"""Quantization schemes: each one small object saying how it rewrites the fp32 graph.

A scheme takes the fp32 model, the nodes to keep in fp32, and writes an INT8 model; it
returns the facts the manifest records about it. The search (search.py) tries schemes and
fp32-node sets and keeps what passes; a scheme never validates or chooses anything itself.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .calibration import CalibrationSet, TextCalibrationReader
from .int8 import (
    per_token_model,
    quantize_dynamic_int8,
    quantize_facts,
    quantize_static_int8,
    smooth_model,
    split_attention,
    weighted_matmuls,
    with_types,
)

__all__ = ["BATCH_INDEPENDENT", "SCHEMES", "Dynamic", "NBits", "PerToken", "Scheme", "Smoothed", "Static", "bind"]


class Scheme(Protocol):
    """How one family of INT8 models is made from the fp32 graph."""

    @property
    def name(self) -> str:
        """What trial logs and messages call it."""
        ...

    @property
    def batch_independent(self) -> bool:
        """Whether a text's vector is the same alone and inside any batch, by construction."""
        ...

    def quantize(self, fp32: Path, dst: Path, work: Path, target: str, per_channel: bool,
                 fp32_nodes: list[str], only: list[str] | None = None) -> dict[str, Any]:
        """Write the INT8 model to dst (``only``: quantize just these nodes, for sensitivity
        measurements); return the facts the manifest records."""
        ...


@dataclass(frozen=True)
class Dynamic:
    """onnxruntime's dynamic INT8: per-channel weights, one activation scale per tensor and batch."""

    name: str = "dynamic"
    batch_independent: bool = False

    def quantize(self, fp32: Path, dst: Path, work: Path, target: str, per_channel: bool,
                 fp32_nodes: list[str], only: list[str] | None = None) -> dict[str, Any]:
        return quantize_dynamic_int8(fp32, dst, target, per_channel, fp32_nodes, only)


def _split_names(fp32_nodes: list[str]) -> set[str]:
    """fp32 node names, plus the QKV MatMul that split_attention makes of a listed Attention."""
    return set(fp32_nodes) | {f"{n}/split_attention/qkv_matmul" for n in fp32_nodes}


VOCAB_ROWS = 1024  # an embedding table with at least this many rows is a vocabulary


def _weight_only_rest(src: Path, dst: Path, target: str, per_channel: bool, fp32_nodes: list[str]) -> dict[str, Any]:
    """Dynamic INT8 for the nodes a batch-independent scheme leaves: the weight-only ones
    (EmbedLayerNormalization's tables in a fused graph, the embedding Gathers of an unfused one
    such as MPNet's), never an activation that would get a per-batch scale."""
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    # vocabulary-sized tables only: a position table or a relative-attention bias (MPNet's is
    # 32 x 12) saves next to nothing as INT8 and one per-tensor scale blurs it
    tables = {i.name for i in graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and i.dims[0] >= VOCAB_ROWS}
    only = [n.name for n in graph.node if n.name not in fp32_nodes and (
        n.op_type == "EmbedLayerNormalization" or (n.op_type == "Gather" and n.input[0] in tables))]
    if not only:
        shutil.copyfile(src, dst)
        return quantize_facts(target, per_channel, fp32_nodes)
    return quantize_dynamic_int8(src, dst, target, per_channel, fp32_nodes, only)


@dataclass(frozen=True)
class PerToken:
    """Dynamic INT8 where MatMuls get one activation scale per token (int8.per_token_model).

    ratios: node -> the outlier ratio that earned it per-token scales; the other nodes keep
    onnxruntime's per-batch scales. everywhere: every weighted MatMul instead, attention
    projections split out of fused Attention first (int8.split_attention), so no activation
    keeps a per-batch scale and vectors do not depend on their batch. asymmetric (with
    everywhere): each token's own [min, max] and zero point, and 8-bit weights stored as
    uint8 (onnxruntime's u8 x s8 kernel on AVX2 would saturate 8-bit int8 ones).
    """

    ratios: dict[str, float] = field(default_factory=dict)
    everywhere: bool = False
    asymmetric: bool = False

    @property
    def name(self) -> str:
        if self.asymmetric:
            return "per-token-asym"
        return "per-token-all" if self.everywhere else "per-token"

    @property
    def batch_independent(self) -> bool:
        return self.everywhere

    def __post_init__(self) -> None:
        if self.asymmetric and not self.everywhere:
            raise ValueError("PerToken: asymmetric scales are made for every MatMul (everywhere=True)")

    def quantize(self, fp32: Path, dst: Path, work: Path, target: str, per_channel: bool,
                 fp32_nodes: list[str], only: list[str] | None = None, split: bool = False) -> dict[str, Any]:
        """``split``: fp32's Attention is already split (int8.split_attention), as Smoothed's is."""
        if only is not None:  # a sensitivity measurement: that node alone, per batch
            return quantize_dynamic_int8(fp32, dst, target, per_channel, fp32_nodes, only)
        src = fp32
        if self.everywhere:
            if not split:
                src = work / "split-attention.onnx"
                split_attention(fp32, src)
            keep = _split_names(fp32_nodes)
            nodes = [n for n in weighted_matmuls(src) if n not in keep]
        else:
            nodes = [n for n in self.ratios if n not in fp32_nodes]
        pt = work / "per-token.onnx"
        per_token_model(src, pt, nodes, target, asymmetric=self.asymmetric)
        if self.everywhere:
            facts = _weight_only_rest(pt, dst, target, per_channel, fp32_nodes)
            facts["activation_type"] = ("uint8, one scale per token computed at run time, every MatMul "
                                        "(attention projections split out of Attention)")
            if self.asymmetric:
                facts["activation_type"] = ("uint8, one scale and zero point per token (its own min and max) "
                                            "computed at run time, every MatMul (attention projections split out "
                                            "of Attention)")
                facts["weight_type"] = ("uint8 per output channel, 8 bits, zero point 128 (onnxruntime's u8 x u8 "
                                        "kernel)")
                facts["matmul_weight_bits"] = 8
        else:
            facts = quantize_dynamic_int8(pt, dst, target, per_channel, fp32_nodes, None)
            facts["activation_type"] = ("uint8, scales computed at run time: one per token for per_token_nodes, "
                                        "one per batch elsewhere")
        facts["scheme"] = self.name
        facts["per_token_nodes"] = [{"node": n, "outlier_ratio": self.ratios.get(n)} for n in nodes]
        return facts


@dataclass(frozen=True)
class Smoothed:
    """``per-token-asym`` after SmoothQuant-style factors are folded into each MatMul
    (int8.smooth_model, alpha 0.5): per-channel activation ranges measured in fp32 on the
    build's search texts move partly into the weights, then every MatMul gets per-token
    asymmetric scales. Batch-independent like per-token-asym; one more Mul per MatMul.

    texts and reference (the fp32 bundle's Embedder) are bound by the search (``bind``)."""

    alpha: float = 0.5
    texts: tuple[str, ...] = ()
    reference: Any = field(default=None, compare=False, repr=False)
    _maxima: dict[Path, dict[str, Any]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return "per-token-asym-smooth"

    @property
    def batch_independent(self) -> bool:
        return True

    def quantize(self, fp32: Path, dst: Path, work: Path, target: str, per_channel: bool,
                 fp32_nodes: list[str], only: list[str] | None = None) -> dict[str, Any]:
        from . import BuildError
        from .tune import channel_maxima

        if only is not None:  # a sensitivity measurement: that node alone, per batch
            return quantize_dynamic_int8(fp32, dst, target, per_channel, fp32_nodes, only)
        if self.reference is None or not self.texts:
            raise BuildError(f"{self.name}: needs texts to measure activation ranges on (schemes.bind)")
        split = work / "split-attention.onnx"
        split_attention(fp32, split)
        if fp32 not in self._maxima:  # once per graph: every trial's factors come from the same texts
            self._maxima[fp32] = channel_maxima(split, work / "channel-maxima.onnx", weighted_matmuls(split),
                                                self.reference, list(self.texts))
        keep = _split_names(fp32_nodes)
        maxima = {n: m for n, m in self._maxima[fp32].items() if n not in keep}
        smoothed = work / "smoothed.onnx"
        changed = smooth_model(split, smoothed, maxima, self.alpha)
        facts = PerToken(everywhere=True, asymmetric=True).quantize(smoothed, dst, work, target, per_channel,
                                                                   fp32_nodes, split=True)
        facts["scheme"] = self.name
        facts["smoothing"] = {"alpha": self.alpha, "matmuls": len(changed),
                              "ranges_from": f"fp32 activations of the build's search texts ({len(self.texts)})"}
        return facts


def bind(scheme: Scheme, texts: list[str], reference: Any) -> Scheme:
    """The scheme ready to quantize: one that measures activation ranges gets its texts and
    the fp32 Embedder to run them through; the others are returned as they are."""
    if isinstance(scheme, Smoothed) and not scheme.texts:
        return Smoothed(scheme.alpha, tuple(texts), reference)
    return scheme


@dataclass(frozen=True)
class NBits:
    """onnxruntime's MatMulNBits at 8 bits with accuracy_level 4: weights in blocks of
    block_size along K (one scale each), activations quantized to int8 per block of each row
    at run time, so vectors do not depend on their batch. Attention projections are split
    out of fused Attention first; the attention core stays fp32."""

    block_size: int = 32

    @property
    def name(self) -> str:
        return f"nbits8-b{self.block_size}"

    @property
    def batch_independent(self) -> bool:
        return True

    @staticmethod
    def available() -> bool:
        """onnxruntime's MatMulNBits quantizer imports onnx-ir (the build extra installs it)."""
        import importlib.util

        return importlib.util.find_spec("onnx_ir") is not None

    def quantize(self, fp32: Path, dst: Path, work: Path, target: str, per_channel: bool,
                 fp32_nodes: list[str], only: list[str] | None = None) -> dict[str, Any]:
        import onnx

        from . import BuildError

        if only is not None:
            return quantize_dynamic_int8(fp32, dst, target, per_channel, fp32_nodes, only)
        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                DefaultWeightOnlyQuantConfig,
                MatMulNBitsQuantizer,
            )
        except ImportError as e:
            raise BuildError(f"{self.name}: onnxruntime's MatMulNBits quantizer needs onnx-ir ({e}); "
                             "pip install 'edge-embed[build]'") from None
        split = work / "split-attention.onnx"
        split_attention(fp32, split)
        keep = sorted(_split_names(fp32_nodes))
        cfg = DefaultWeightOnlyQuantConfig(block_size=self.block_size, is_symmetric=True, accuracy_level=4, bits=8,
                                           op_types_to_quantize=("MatMul",))
        previous = logging.root.manager.disable  # a caller may have disabled logging already
        logging.disable(max(previous, logging.INFO))  # one line per node otherwise
        try:
            q = MatMulNBitsQuantizer(onnx.load(str(split)), bits=8, block_size=self.block_size, is_symmetric=True,
                                     accuracy_level=4, nodes_to_exclude=keep, op_types_to_quantize=("MatMul",),
                                     algo_config=cfg)
            q.process()
        finally:
            logging.disable(previous)
        nb = work / "nbits.onnx"
        q.model.save_model_to_file(str(nb), use_external_data_format=False)
        facts = _weight_only_rest(nb, dst, target, per_channel, fp32_nodes)
        facts.update(scheme=self.name, weight_type="int8, symmetric, one scale per block of "
                     f"{self.block_size} along K (MatMulNBits)", weight_bits=8, block_size=self.block_size,
                     accuracy_level=4, activation_type="int8, one scale per block of each row computed at run time "
                     "(MatMulNBits accuracy_level 4)")
        facts["nbits_nodes"] = sorted(n.name for n in q.model.model.graph.node if n.op_type == "MatMulNBits")
        return facts


@dataclass(frozen=True)
class Static:
    """QDQ INT8 with activation ranges calibrated once on the user's texts."""

    calibration: CalibrationSet
    calibration_method: str
    tokenizer: Path
    name: str = "static"
    batch_independent: bool = True  # ranges fixed at build time
    _typed: dict[Path, Path] = field(default_factory=dict, compare=False, repr=False)

    def quantize(self, fp32: Path, dst: Path, work: Path, target: str, per_channel: bool,
                 fp32_nodes: list[str], only: list[str] | None = None) -> dict[str, Any]:
        import onnx

        if fp32 not in self._typed:
            self._typed[fp32] = with_types(fp32, work / "fp32-typed.onnx")
        typed = self._typed[fp32]
        inputs = [i.name for i in onnx.load(str(typed), load_external_data=False).graph.input]
        reader = TextCalibrationReader(self.calibration.texts, self.tokenizer, inputs,
                                       fixed_length=self.calibration_method != "minmax")
        facts = quantize_static_int8(typed, dst, reader, work / "calibration-ranges.json", self.calibration_method,
                                     target, per_channel, fp32_nodes, only)
        facts["calibration"] = self.calibration.describe()
        return facts


# the batch-independent schemes auto tries when a per-batch scheme misses the thresholds, in
# order of measured speed on each target (docs/fidelity.md): the first that passes is kept.
# MatMulNBits falls back to fp32 arithmetic on ARM cores without the dot-product extension
# (Cortex-A72, a Raspberry Pi 4), so per-token scales come first everywhere.
BATCH_INDEPENDENT: dict[str, tuple[Scheme, ...]] = {
    target: (PerToken(everywhere=True), PerToken(everywhere=True, asymmetric=True), Smoothed(), NBits(128),
             NBits(32))
    for target in ("avx2", "avx512-vnni", "arm64")
}
# what --scheme may name: one scheme tried alone (still judged and, with auto, given fp32 nodes)
SCHEMES: dict[str, Scheme] = {s.name: s for s in (Dynamic(), PerToken(everywhere=True),
                                                    PerToken(everywhere=True, asymmetric=True), Smoothed(), NBits(32),
                                                    NBits(64), NBits(128))}
