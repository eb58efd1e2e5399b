"""fp32 ONNX -> INT8 ONNX with onnxruntime's quantizer: dynamic, or static with calibration.

Dynamic quantization: weights to signed INT8 per output channel (per-tensor weights
measured mean cosine 0.965 on all-MiniLM-L6-v2, per-channel 0.992), activations quantized
at run time per batch. Static quantization: QDQ with activation ranges from a calibration
set (calibration.py). Both take a CPU preset (``--target``) and a list of nodes to keep in
fp32. Does not validate or choose exclusions; validate.py and tune.py do that.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from . import BuildError

__all__ = ["CALIBRATION_METHODS", "GATE", "PRESETS", "TARGETS", "count_activation_quantizers", "detect_target",
           "emulated_quantization_model",
           "quantizable_nodes", "quantize_dynamic_int8", "quantize_static_int8", "with_types"]

# onnxruntime's own guidance for CPU inference (quantize_static docstring, ORT >= 1.20):
# without VNNI, 8-bit x 8-bit products can saturate the 16-bit intermediate of vpmaddubsw,
# so weights get 7 bits (reduce_range); VNNI accumulates in 32 bits; ARM's sdot kernels
# prefer symmetric signed activations. Dynamic quantization always has uint8 activations
# (DynamicQuantizeLinear), so activation_type only applies to static.
PRESETS: dict[str, dict[str, Any]] = {
    "avx2": {"weight_type": "int8", "activation_type": "uint8", "reduce_range": True},
    "avx512-vnni": {"weight_type": "int8", "activation_type": "uint8", "reduce_range": False},
    "arm64": {"weight_type": "int8", "activation_type": "int8", "reduce_range": False},
}
TARGETS = tuple(PRESETS)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# the ops whose weights dominate a BERT-family graph after fusion
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Attention", "EmbedLayerNormalization")


def detect_target() -> str:
    """The build machine's preset: arm64 on ARM, avx512-vnni when the CPU has VNNI, else avx2."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "avx2"
    return "avx512-vnni" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "avx2"


def preset(target: str | None) -> tuple[str, dict[str, Any]]:
    name = target or detect_target()
    if name not in PRESETS:
        raise BuildError(f"--target: {name!r} is not one of {', '.join(TARGETS)}")
    return name, dict(PRESETS[name])


def quantizable_nodes(model_path: Path) -> list[dict[str, Any]]:
    """Nodes the quantizer would convert, with their float weight count (what fp32 costs)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    sizes = {}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            n = 1
            for d in init.dims:
                n *= d
            sizes[init.name] = n
    out = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE_OPS:
            continue
        params = sum(sizes.get(i, 0) for i in node.input)
        if params:
            # fp32 costs 4 bytes per weight where INT8 costs 1
            out.append({"node": node.name, "op": node.op_type, "params": params, "fp32_extra_bytes": 3 * params})
    return out


def with_types(src: Path, dst: Path) -> Path:
    """Copy of ``src`` with every tensor's type recorded.

    onnx's own inference stops at contrib ops (Attention, BiasGelu, SkipLayerNormalization),
    and the static calibrator silently skips tensors of unknown type: the result is a
    weight-only model with fp32 activations. onnxruntime's symbolic inference knows them.
    """
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        typed = SymbolicShapeInference.infer_shapes(onnx.load(str(src)), auto_merge=True)
    except Exception as e:
        raise BuildError(f"{src}: shape inference for static quantization failed ({type(e).__name__}: {e}); "
                         "try --method auto or dynamic") from e
    onnx.save(typed, str(dst))
    return dst


def count_activation_quantizers(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(n.op_type == "QuantizeLinear" for n in model.graph.node)


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]


def quantize_dynamic_int8(src: Path, dst: Path, target: str | None = None, per_channel: bool = True,
                          exclude: list[str] | None = None, only: list[str] | None = None) -> dict[str, Any]:
    """Dynamic INT8; returns the recipe facts the manifest records."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    name, p = preset(target)
    try:
        quantize_dynamic(
            str(src), str(dst), per_channel=per_channel, reduce_range=p["reduce_range"],
            weight_type=_qtype(p["weight_type"]), nodes_to_exclude=list(exclude or []),
            nodes_to_quantize=list(only) if only else None,
            # fused graphs carry contrib ops whose output types the quantizer cannot infer
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except Exception as e:
        raise BuildError(f"{src}: dynamic quantization failed ({type(e).__name__}: {e})") from e
    return {
        "method": "dynamic",
        "target": name,
        "weight_type": p["weight_type"],
        "activation_type": "uint8, scales computed per batch at run time",
        "per_channel": per_channel,
        "reduce_range": p["reduce_range"],
        "excluded_nodes": sorted(exclude or []),
        "calibration": None,
    }


def quantize_static_int8(src: Path, dst: Path, reader: Any, cache: Path, calibration_method: str = "minmax",
                         target: str | None = None, per_channel: bool = True, exclude: list[str] | None = None,
                         only: list[str] | None = None) -> dict[str, Any]:
    """Static QDQ INT8 with activation ranges from ``reader``; ranges are computed once into
    ``cache`` and reused, so trial quantizations with other exclusions cost no recalibration."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if calibration_method not in CALIBRATION_METHODS:
        raise BuildError(f"--calibration-method: {calibration_method!r} is not one of "
                         f"{', '.join(CALIBRATION_METHODS)}")
    name, p = preset(target)
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[calibration_method]
    try:
        quantize_static(
            str(src), str(dst), calibration_data_reader=reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZABLE_OPS), per_channel=per_channel,
            reduce_range=p["reduce_range"], activation_type=_qtype(p["activation_type"]),
            weight_type=_qtype(p["weight_type"]), nodes_to_exclude=list(exclude or []),
            nodes_to_quantize=list(only) if only else None, calibrate_method=calib,
            calibration_cache_path=str(cache),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                           # symmetric activations only where the preset asks for signed ones
                           "ActivationSymmetric": p["activation_type"] == "int8"},
        )
    except BuildError:
        raise
    except Exception as e:
        raise BuildError(f"{src}: static quantization failed ({type(e).__name__}: {e}); "
                         "try --method dynamic") from e
    if not only and not exclude and count_activation_quantizers(dst) == 0:
        raise BuildError(f"{src}: static quantization quantized no activations (tensor types unknown to the "
                         "calibrator); try --method auto")
    return {
        "method": "static",
        "format": "QDQ",
        "target": name,
        "weight_type": p["weight_type"],
        "activation_type": p["activation_type"],
        "per_channel": per_channel,
        "reduce_range": p["reduce_range"],
        "calibration_method": calibration_method,
        "excluded_nodes": sorted(exclude or []),
    }


GATE = "edge_embed_sensitivity_gate"


def _fake_quant_weight(w: Any, reduce_range: bool) -> Any:
    """Dequantized per-channel symmetric INT8 weights, as the dynamic quantizer computes them.

    Symmetric int8 range (-127, 127), or (-64, 64) with reduce_range; one scale per output
    column (axis 1 of a MatMul's [K, N] weight).
    """
    import numpy as np

    qmax = 64.0 if reduce_range else 127.0
    w64 = w.astype(np.float64)
    absmax = np.abs(w64).max(axis=tuple(range(w.ndim - 1)), keepdims=True) if w.ndim > 1 else np.abs(w64).max()
    scale = np.where(absmax > 0, absmax / qmax, 1.0)
    return (np.clip(np.round(w64 / scale), -qmax, qmax) * scale).astype(np.float32)


def emulated_quantization_model(src: Path, dst: Path, nodes: list[str], target: str | None = None) -> list[str]:
    """A copy of ``src`` where each listed node's INT8 error can be switched on at run time.

    Node i's weight becomes ``W + g[i] * (dq(q(W)) - W)`` and its activation input
    ``X + g[i] * (dq(q(X)) - X)`` (DynamicQuantizeLinear, the uint8 per-batch scheme ORT's
    dynamic INT8 uses), where ``g`` is the float input GATE of length len(emulated). One
    session then measures every node's isolated cost by feeding a one-hot gate, instead of
    quantizing, saving and loading one model per node. Only MatMul and Attention nodes with
    an initializer weight are emulated; returns their names in gate order (the others need
    the exact, slower path).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    _, p = preset(target)
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(nodes)
    emulated: list[str] = []
    new_nodes = []
    new_inits = []
    for node in graph.node:
        w_name = node.input[1] if len(node.input) > 1 else ""
        if (node.name in wanted and node.op_type in ("MatMul", "Attention") and w_name in inits
                and inits[w_name].data_type == onnx.TensorProto.FLOAT and len(inits[w_name].dims) == 2):
            i = len(emulated)
            emulated.append(node.name)
            tag = f"edge_embed_emu_{i}"
            w = numpy_helper.to_array(inits[w_name])
            new_inits += [numpy_helper.from_array(_fake_quant_weight(w, p["reduce_range"]) - w, f"{tag}_dw"),
                          numpy_helper.from_array(np.array(i, dtype=np.int64), f"{tag}_idx")]
            x = node.input[0]
            new_nodes += [
                helper.make_node("Gather", [GATE, f"{tag}_idx"], [f"{tag}_g"], name=f"{tag}_gate"),
                helper.make_node("Mul", [f"{tag}_g", f"{tag}_dw"], [f"{tag}_gdw"], name=f"{tag}_wmul"),
                helper.make_node("Add", [w_name, f"{tag}_gdw"], [f"{tag}_w"], name=f"{tag}_wadd"),
                helper.make_node("DynamicQuantizeLinear", [x], [f"{tag}_xq", f"{tag}_xs", f"{tag}_xz"],
                                 name=f"{tag}_xquant"),
                helper.make_node("DequantizeLinear", [f"{tag}_xq", f"{tag}_xs", f"{tag}_xz"], [f"{tag}_xdq"],
                                 name=f"{tag}_xdequant"),
                helper.make_node("Sub", [f"{tag}_xdq", x], [f"{tag}_dx"], name=f"{tag}_xsub"),
                helper.make_node("Mul", [f"{tag}_g", f"{tag}_dx"], [f"{tag}_gdx"], name=f"{tag}_xmul"),
                helper.make_node("Add", [x, f"{tag}_gdx"], [f"{tag}_x"], name=f"{tag}_xadd"),
            ]
            node.input[0] = f"{tag}_x"
            node.input[1] = f"{tag}_w"
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    graph.input.append(helper.make_tensor_value_info(GATE, onnx.TensorProto.FLOAT, [len(emulated)]))
    onnx.save(model, str(dst))
    return emulated
