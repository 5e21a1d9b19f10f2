"""Signed activation quantizers of a QDQ ONNX graph rewritten as unsigned ones with the same values.

NNCF writes a signed activation (an image, a residual sum, a projection without ReLU) as int8 with zero point
0. With int8 activations ONNX Runtime's x86 CPU build (1.32, seen on AMD EPYC) left residual sums and the
convolutions reading them float between the quantize nodes instead of fusing each Dequantize -> Conv/Add ->
Quantize group into an integer kernel: a MobileNetV2's quantization-aware ONNX artifact ran 2.2x slower than
its PTQ one, whose activations ONNX Runtime's own quantizer makes uint8. With uint8 it fuses every one.
An int8 quantizer with scale s and zero point 0 and a uint8 one with scale s and zero point 128 represent
the same 256 values (q_u8 = q_i8 + 128, both dequantize to q_i8 * s), so the rewrite changes no number the
graph computes, only which kernels ONNX Runtime can pick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def unsigned_activations(proto: onnx.ModelProto) -> int:
    """Rewrite, in place, every activation QuantizeLinear with an int8 zero point of 0 (and the
    DequantizeLinear nodes that read it) to uint8 with zero point 128; returns how many were rewritten.
    Weight quantizers (a constant input) stay int8: ONNX Runtime's kernels want signed weights."""
    from onnx import numpy_helper

    graph = proto.graph
    constants = _constant_values(graph)
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    replaced: set[str] = set()
    rewritten = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] in constants or len(node.input) < 3:
            continue
        zero_point = _value(constants.get(node.input[2]))
        dequantizers = readers.get(node.output[0], [])
        if not _signed_zero(zero_point) or not dequantizers:
            continue
        if not all(_is_signed_dequantizer(reader, constants) for reader in dequantizers):
            continue  # a quantized tensor read as int8 elsewhere: leave it
        name = f"{node.output[0]}_unsigned_zero_point"
        graph.initializer.append(numpy_helper.from_array(np.full(zero_point.shape, 128, np.uint8), name))
        for user in (node, *dequantizers):
            replaced.add(user.input[2])
            user.input[2] = name
        rewritten += 1
    _drop_unread(graph, replaced)
    return rewritten


def _drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the int8 zero points no node reads any more (ONNX Runtime warns about each one it finds)."""
    read = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    unread = names - read
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output[0] in unread:
            graph.node.remove(node)
    for tensor in list(graph.initializer):
        if tensor.name in unread:
            graph.initializer.remove(tensor)


def _is_signed_dequantizer(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> bool:
    return (
        node.op_type == "DequantizeLinear"
        and len(node.input) == 3
        and _signed_zero(_value(constants.get(node.input[2])))
    )


def _signed_zero(zero_point: np.ndarray | None) -> bool:
    return zero_point is not None and zero_point.dtype == np.int8 and not zero_point.any()


def _constant_values(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Every tensor the graph holds as a value, by name: initializers and Constant nodes' outputs (read as
    arrays only where needed: the weights are most of a model's bytes)."""
    values = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    return values


def _value(tensor: onnx.TensorProto | None) -> np.ndarray | None:
    from onnx import numpy_helper

    return None if tensor is None else numpy_helper.to_array(tensor)
