"""fp32 ONNX -> INT8 ONNX with onnxruntime's quantizer: dynamic, or static with calibration.

Dynamic quantization: weights to signed INT8 per output channel (per-tensor weights
measured mean cosine 0.965 on all-MiniLM-L6-v2, per-channel 0.992), activations quantized
at run time per batch. Static quantization: QDQ with activation ranges from a calibration
set (calibration.py). Both take a CPU preset (``--target``) and a list of nodes to keep in
fp32. Does not validate or choose exclusions; validate.py and tune.py do that.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

from . import BuildError, FlagError

__all__ = ["CALIBRATION_METHODS", "GATE", "PRESETS", "TARGETS", "count_activation_quantizers", "detect_target",
           "emulated_quantization_model", "per_token_model", "weighted_matmuls",
           "quantizable_nodes", "quantize_dynamic_int8", "quantize_facts", "quantize_static_int8", "split_attention",
           "with_types"]

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
        raise FlagError(f"--target: {name!r} is not one of {', '.join(TARGETS)}")
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
    # the quantizer logs generic advice through the root logger ("consider pre-processing",
    # "check if the model is already quantized", the latter for per_token_model's INT8 nodes)
    previous = logging.root.manager.disable  # a caller may have disabled logging already
    logging.disable(max(previous, logging.WARNING))
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
    finally:
        logging.disable(previous)
    return quantize_facts(name, per_channel, exclude)


def quantize_facts(target: str | None, per_channel: bool, exclude: list[str] | None) -> dict[str, Any]:
    """The manifest's facts of a dynamic INT8 model (schemes add to them)."""
    name, p = preset(target)
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
        raise FlagError(f"--calibration-method: {calibration_method!r} is not one of "
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

    q, scale = _quant_weight(w, reduce_range)
    return (q * scale).astype(np.float32)


def _quant_weight(w: Any, reduce_range: bool) -> tuple[Any, Any]:
    """(int8 codes as float64, float64 scale per output column) of per-channel symmetric weights."""
    import numpy as np

    qmax = 64.0 if reduce_range else 127.0
    w64 = w.astype(np.float64)
    absmax = np.abs(w64).max(axis=tuple(range(w.ndim - 1)), keepdims=True) if w.ndim > 1 else np.abs(w64).max()
    scale = np.where(absmax > 0, absmax / qmax, 1.0)
    return np.clip(np.round(w64 / scale), -qmax, qmax), scale


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


def weighted_matmuls(model_path: Path) -> list[str]:
    """MatMul nodes with a 2-D float initializer weight: the nodes per_token_model can convert."""
    import onnx

    return _weighted_matmuls(onnx.load(str(model_path), load_external_data=False).graph)


def _weighted_matmuls(graph: Any) -> list[str]:
    import onnx

    inits = {i.name: i for i in graph.initializer}
    return [n.name for n in graph.node
            if n.op_type == "MatMul" and n.input[1] in inits
            and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT and len(inits[n.input[1]].dims) == 2]


def per_token_model(src: Path, dst: Path, nodes: list[str], target: str | None = None,
                    asymmetric: bool = False) -> list[str]:
    """A copy of ``src`` where each listed MatMul runs in INT8 with one activation scale per token.

    onnxruntime's dynamic INT8 (DynamicQuantizeLinear) gives the whole activation tensor one
    scale. In many encoders a few tokens (separators, the first token) carry activations tens
    of times larger than the rest in a handful of channels; one shared scale then leaves the
    other tokens a few integer levels. Here each row (token) of the input gets its own
    scale, from standard ops onnxruntime runs on every CPU. Symmetric (the default):

        x2 = Reshape(x, [-1, K]); s = max(|x2|, axis=1) / 127            (per token, [M])
        q = QuantizeLinear(x2, s, 128, axis=0)                            (uint8, zero point 128)
        y = MatMulIntegerToFloat(q, Wq, 1, w_scale, 128) * s              (Wq: per-column int8)
        y = Reshape(y, shape(x)[:-1] + [N])

    Weights are then the same per-channel symmetric INT8 as the dynamic quantizer's (7-bit
    with the target's reduce_range).

    ``asymmetric``: each row's [min, max] (widened to hold 0) maps onto 0..255 with its own
    zero point z, and the weights keep all 8 bits. onnxruntime takes one zero point per
    activation tensor only, so the rows' zero points are folded out after the product:

        s = (max - min) / 255; z = round(-min / s)                       (per token)
        y = MatMulIntegerToFloat(q, Wq, 1, w_scale, 0[, 128]) * s - (s z) * colsum(Wq) w_scale

    On AVX2 without VNNI, u8 x s8 products are summed in pairs into saturating int16
    (vpmaddubsw), which full-range activations and 8-bit int8 weights overflow. So the
    weights are stored as uint8 with zero point 128 on every target: onnxruntime's u8 x u8
    kernels widen to 16 bits first (or sum in 32) and cannot saturate, so a bundle built on a
    VNNI machine gives the same vectors on an AVX2 laptop.

    Rows are quantized independently, so a token's result no longer depends on the other
    texts in its batch. Returns the converted node names; nodes not listed are left for
    quantize_dynamic.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    _, p = preset(target)
    model = onnx.load(str(src))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if opset < 13:  # per-axis QuantizeLinear
        raise BuildError(f"{src}: per-token INT8 needs ONNX opset >= 13, the model has {opset}")
    inits = {i.name: i for i in graph.initializer}
    wanted = set(nodes) & set(_weighted_matmuls(graph))
    pre = "edge_embed_pt"
    consts: dict[str, Any] = {f"{pre}_inv127": np.array(1 / 127, np.float32), f"{pre}_eps": np.array(1e-12, np.float32),
              f"{pre}_zero": np.array(0.0, np.float32), f"{pre}_128f": np.array(128.0, np.float32),
              f"{pre}_one": np.array(1.0, np.float32), f"{pre}_z": np.array(128, np.uint8),
              f"{pre}_flat": np.array([-1], np.int64), f"{pre}_axis": np.array([-1], np.int64),
              f"{pre}_zero_i": np.array([0], np.int64), f"{pre}_z0": np.array(0, np.uint8),
              f"{pre}_inv255": np.array(1 / 255, np.float32)}
    new_inits = []
    converted: list[str] = []
    replaced_weights = set()

    def reduce(op: str, x: str, out: str, name: str) -> Any:
        if opset >= 18:
            return helper.make_node(op, [x, f"{pre}_axis"], [out], keepdims=1, name=name)
        return helper.make_node(op, [x], [out], axes=[-1], keepdims=1, name=name)

    out_nodes = []
    shared: dict[str, str] = {}  # activation tensor -> the prefix of its quantized form
    for node in graph.node:
        if node.name not in wanted:
            out_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        k, n = w.shape
        q, scale = _quant_weight(w, p["reduce_range"] and not asymmetric)
        t = f"{pre}_{len(converted)}"
        converted.append(node.name)
        replaced_weights.add(node.input[1])
        codes = (q + 128).astype(np.uint8) if asymmetric else q.astype(np.int8)
        new_inits += [numpy_helper.from_array(codes, f"{t}_wq"),
                      numpy_helper.from_array(scale.reshape(-1).astype(np.float32), f"{t}_ws"),
                      numpy_helper.from_array(np.array([-1, k], np.int64), f"{t}_2d"),
                      numpy_helper.from_array(np.array([n], np.int64), f"{t}_n")]
        if asymmetric:  # each column's dequantized weight sum, to fold the rows' zero points out
            new_inits.append(numpy_helper.from_array((q.sum(axis=0) * scale.reshape(-1)).astype(np.float32),
                                                     f"{t}_cw"))
        x, y = node.input[0], node.output[0]

        def mk(op: str, ins: list[str], outs: list[str], tag: str, where: str = node.name, **kw: Any) -> Any:
            return helper.make_node(op, ins, outs, name=f"{where}/per_token/{tag}", **kw)

        if x not in shared:
            # the quantized activation and its scales, made once per input tensor (q, k and v
            # projections of an unfused graph share theirs)
            shared[x] = t
            out_nodes += [
                mk("Reshape", [x, f"{t}_2d"], [f"{t}_x2"], "flatten"),
                reduce("ReduceMax", f"{t}_x2", f"{t}_max", f"{node.name}/per_token/max"),
                reduce("ReduceMin", f"{t}_x2", f"{t}_min", f"{node.name}/per_token/min"),
            ]
            if asymmetric:
                out_nodes += [
                    mk("Max", [f"{t}_max", f"{pre}_zero"], [f"{t}_hi"], "hi"),
                    mk("Min", [f"{t}_min", f"{pre}_zero"], [f"{t}_lo"], "lo"),
                    mk("Sub", [f"{t}_hi", f"{t}_lo"], [f"{t}_span"], "span"),
                    mk("Mul", [f"{t}_span", f"{pre}_inv255"], [f"{t}_s0"], "scale"),
                    mk("Max", [f"{t}_s0", f"{pre}_eps"], [f"{t}_s"], "scale_floor"),  # an all-zero row
                    mk("Div", [f"{t}_lo", f"{t}_s"], [f"{t}_lo_s"], "lo_over_scale"),
                    mk("Neg", [f"{t}_lo_s"], [f"{t}_zf0"], "zp_float"),
                    mk("Round", [f"{t}_zf0"], [f"{t}_zf"], "zp_round"),
                    mk("Mul", [f"{t}_zf", f"{t}_s"], [f"{t}_zs"], "zp_times_scale"),
                    mk("Reshape", [f"{t}_s", f"{pre}_flat"], [f"{t}_s1"], "scale_1d"),
                    mk("Reshape", [f"{t}_zf", f"{pre}_flat"], [f"{t}_zf1"], "zp_1d"),
                    mk("Cast", [f"{t}_zf1"], [f"{t}_zp"], "zp_cast", to=onnx.TensorProto.UINT8),
                ]
            else:
                out_nodes += [
                    mk("Neg", [f"{t}_min"], [f"{t}_negmin"], "neg"),
                    mk("Max", [f"{t}_max", f"{t}_negmin"], [f"{t}_absmax"], "absmax"),
                    mk("Mul", [f"{t}_absmax", f"{pre}_inv127"], [f"{t}_s0"], "scale"),
                    mk("Max", [f"{t}_s0", f"{pre}_eps"], [f"{t}_s"], "scale_floor"),  # an all-zero row
                    mk("Reshape", [f"{t}_s", f"{pre}_flat"], [f"{t}_s1"], "scale_1d"),
                    # QuantizeLinear wants a zero point per row: 128 each, shaped like the scales
                    mk("Mul", [f"{t}_s1", f"{pre}_zero"], [f"{t}_z0"], "zp_zero"),
                    mk("Add", [f"{t}_z0", f"{pre}_128f"], [f"{t}_z1"], "zp_128"),
                    mk("Cast", [f"{t}_z1"], [f"{t}_zp"], "zp_cast", to=onnx.TensorProto.UINT8),
                ]
            out_nodes += [
                mk("QuantizeLinear", [f"{t}_x2", f"{t}_s1", f"{t}_zp"], [f"{t}_q"], "quantize", axis=0),
                mk("Shape", [x], [f"{t}_shape"], "shape"),
                mk("Slice", [f"{t}_shape", f"{pre}_zero_i", f"{pre}_flat"], [f"{t}_xshape"], "lead_dims"),
            ]
        a = shared[x]
        a_zp = f"{pre}_z0" if asymmetric else f"{pre}_z"
        out_nodes.append(helper.make_node(
            "MatMulIntegerToFloat", [f"{a}_q", f"{t}_wq", f"{pre}_one", f"{t}_ws", a_zp]
            + ([f"{pre}_z"] if asymmetric else []), [f"{t}_yw"], name=f"{node.name}/per_token/matmul",
            domain="com.microsoft"))
        if asymmetric:  # s (q - z) W = s (q W) - (s z) colsum(W)
            out_nodes += [
                mk("Mul", [f"{t}_yw", f"{a}_s"], [f"{t}_ys"], "rescale"),
                mk("Mul", [f"{a}_zs", f"{t}_cw"], [f"{t}_corr"], "zp_correction"),
                mk("Sub", [f"{t}_ys", f"{t}_corr"], [f"{t}_y2"], "zp_fold"),
            ]
        else:
            out_nodes.append(mk("Mul", [f"{t}_yw", f"{a}_s"], [f"{t}_y2"], "rescale"))
        out_nodes += [
            mk("Concat", [f"{a}_xshape", f"{t}_n"], [f"{t}_yshape"], "out_shape", axis=0),
            mk("Reshape", [f"{t}_y2", f"{t}_yshape"], [y], "unflatten"),
        ]
    if converted:
        new_inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    still_used = {i for nd in out_nodes for i in nd.input}
    keep = [i for i in graph.initializer if i.name not in replaced_weights or i.name in still_used]
    del graph.node[:]
    graph.node.extend(out_nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    onnx.save(model, str(dst))
    return converted


def smooth_model(src: Path, dst: Path, maxima: dict[str, Any], alpha: float) -> list[str]:
    """A copy of ``src`` where each MatMul in ``maxima`` divides its input's channels by
    SmoothQuant's factors and multiplies its weight's rows by them (the product is the same):

        f_j = max|x_j| ** alpha / max|W_j,:| ** (1 - alpha)
        y = (x / f) (diag(f) W)

    ``maxima``: node -> max |x_j| per input channel, measured in fp32 on texts. A few channels
    of a token carry activations far larger than the rest (the separator and first tokens in
    most encoders); one scale per token then leaves the other channels a few integer levels.
    The factors move part of that range into the weights, which are quantized per output
    column and take it well. The division is one Mul per MatMul input, before quantizing.
    Returns the changed nodes.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    out_nodes = []
    changed: list[str] = []
    for node in graph.node:
        if node.name in maxima and node.op_type == "MatMul" and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            ax = np.asarray(maxima[node.name], np.float64)
            aw = np.abs(w).max(axis=1).astype(np.float64)
            f = np.where((ax > 0) & (aw > 0), ax ** alpha / np.maximum(aw, 1e-12) ** (1 - alpha), 1.0)
            f = np.clip(f, 1e-4, 1e4)
            t = f"{node.name}/smooth"
            # a weight shared by two MatMuls gets a copy: each has its own factors
            w_name = f"{t}/weight"
            graph.initializer.extend([numpy_helper.from_array((w * f[:, None]).astype(np.float32), w_name),
                                      numpy_helper.from_array((1 / f).astype(np.float32), f"{t}/inverse")])
            out_nodes.append(helper.make_node("Mul", [node.input[0], f"{t}/inverse"], [f"{t}/x"], name=f"{t}/divide"))
            node.input[0], node.input[1] = f"{t}/x", w_name
            changed.append(node.name)
        out_nodes.append(node)
    still_used = {i for nd in out_nodes for i in nd.input}
    keep = [i for i in graph.initializer if i.name in still_used or i.name not in inits]
    del graph.node[:]
    graph.node.extend(out_nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(model, str(dst))
    return changed


def split_attention(src: Path, dst: Path) -> list[str]:
    """A copy of ``src`` where each fused Attention node becomes its QKV projection as a plain
    MatMul, a Split, and a MultiHeadAttention over the three parts; returns the new MatMuls.

    onnxruntime's dynamic quantizer turns a fused Attention into QAttention, whose input gets
    one scale per batch; once the projection is a MatMul, per_token_model or MatMulNBits can
    quantize it per token. MultiHeadAttention takes the same bias, mask index and num_heads,
    and computes the same attention core in fp32.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inits = {i.name: i for i in graph.initializer}
    out_nodes = []
    matmuls: list[str] = []
    for node in graph.node:
        w = node.input[1] if node.op_type == "Attention" and len(node.input) > 1 else ""
        # past state, attention bias or unequal q/k/v widths have no one-to-one MultiHeadAttention form
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (w not in inits or len(inits[w].dims) != 2 or inits[w].dims[1] % 3 or len(node.input) > 4
                or len(node.output) > 1 or attrs.get("qkv_hidden_sizes") or attrs.get("unidirectional")):
            out_nodes.append(node)
            continue
        d = inits[w].dims[1] // 3
        t = f"{node.name}/split_attention"
        qkv = [f"{t}/{p}" for p in ("q", "k", "v")]
        if opset >= 13:
            graph.initializer.append(numpy_helper.from_array(np.array([d, d, d], np.int64), f"{t}/sizes"))
            split = helper.make_node("Split", [f"{t}/qkv", f"{t}/sizes"], qkv, name=f"{t}/split", axis=-1)
        else:
            split = helper.make_node("Split", [f"{t}/qkv"], qkv, name=f"{t}/split", axis=-1, split=[d, d, d])
        bias = node.input[2] if len(node.input) > 2 else ""
        mask = node.input[3] if len(node.input) > 3 else ""
        out_nodes += [
            helper.make_node("MatMul", [node.input[0], w], [f"{t}/qkv"], name=f"{t}/qkv_matmul"),
            split,
            helper.make_node("MultiHeadAttention", [*qkv, bias, mask], list(node.output), name=f"{t}/mha",
                             domain="com.microsoft", **attrs),
        ]
        matmuls.append(f"{t}/qkv_matmul")
    del graph.node[:]
    graph.node.extend(out_nodes)
    onnx.save(model, str(dst))
    return matmuls
