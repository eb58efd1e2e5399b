"""fp32 ONNX -> INT8 ONNX with onnxruntime's quantizer.

Dynamic quantization: weights to signed INT8 per output channel (per-tensor weights
measured mean cosine 0.965 on all-MiniLM-L6-v2, per-channel 0.992), activations quantized
at run time per batch. Does not validate; validate.py judges the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import BuildError

__all__ = ["quantize_dynamic_int8"]


def quantize_dynamic_int8(src: Path, dst: Path, per_channel: bool = True, reduce_range: bool = False,
                          exclude: list[str] | None = None) -> dict[str, Any]:
    """Dynamic INT8; returns the recipe facts the manifest records."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(
            str(src), str(dst), per_channel=per_channel, reduce_range=reduce_range,
            weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude or []),
            # fused graphs carry contrib ops whose output types the quantizer cannot infer
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except Exception as e:
        raise BuildError(f"{src}: dynamic quantization failed ({type(e).__name__}: {e})") from e
    return {
        "method": "dynamic",
        "weight_type": "int8",
        "activation_type": "uint8, scales computed per batch at run time",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "excluded_nodes": sorted(exclude or []),
        "calibration": None,
    }
