"""Put memopt's own codes into the exported ONNX graph: each quantized Linear's MatMul becomes a
``com.microsoft.MatMulNBits`` node holding memopt's codes, fed memopt's fp16 scales through the few
constant nodes that widen them to the operator's float32 ``[N, k_blocks]`` (:mod:`matmul_nbits`).

torch.onnx (dynamo) folds each block Linear's weight into a constant stored transposed, ``[in, out]``,
fed straight to a MatMul; a weight computed in the graph (a tied ``lm_head``: Transpose of the
embedding) comes through a Transpose of an ``[out, in]`` constant. Both are recognised; the float
constant must equal memopt's de-quantized weight, so a wrong node mapping cannot go unnoticed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from memopt_core.compression.walk import effective_weight, linear_layers
from memopt_core.errors import ConfigError, MemoptError
from memopt_core.export import matmul_nbits, onnx_int8
from memopt_core.export.layer_plan import grid_of


def layer_weights(model: nn.Module, slot_bits: int) -> dict[str, matmul_nbits.NBitsWeight]:
    """Linear name -> MatMulNBits tensors of every quantized Linear of ``model`` (not changed);
    a ConfigError names the first layer MatMulNBits cannot hold exactly."""
    weights = {}
    for name, module in linear_layers(model).items():
        grid = grid_of(module)
        if grid is None and type(module) is not nn.Linear:
            raise ConfigError(f"{name} is a {type(module).__name__}, not memopt's integer codes: MatMulNBits cannot "
                              "hold it (choose the fp32 type)")
        if grid is None:
            continue  # left float by memopt (embeddings, lm_head by default): stays float in the graph
        if module.mask is not None:
            raise ConfigError(f"{name}: pruned weights need memopt's mask on this grid, and MatMulNBits has none")
        weights[name] = matmul_nbits.nbits_weight(grid, slot_bits, name)
    if not weights:
        raise ConfigError("this setting quantizes no Linear, so there are no memopt codes to ship; give --bits 4 or 8 "
                          "(or choose the fp32, int8 or int4 type)")
    return weights


def _float_weight(constants: dict[str, onnx.TensorProto], producers: dict[str, onnx.NodeProto],
                  node: onnx.NodeProto) -> tuple[onnx.TensorProto, bool]:
    """The constant a MatMul multiplies by, and whether it is stored ``[out, in]`` behind a Transpose
    (``constants``: initializers by name; ``producers``: node by each output name)."""
    if node.input[1] in constants:
        return constants[node.input[1]], False
    producer = producers.get(node.input[1])
    if producer is not None and producer.op_type == "Transpose" and producer.input[0] in constants:
        return constants[producer.input[0]], True
    raise ConfigError(f"ONNX node {node.name} multiplies by a weight computed in the graph; MatMulNBits needs a "
                      "constant weight")


def _check_same(tensor: onnx.TensorProto, transposed: bool, expected: np.ndarray, name: str) -> None:
    """The traced float weight must be memopt's de-quantized weight ``expected [K, N]``."""
    values = numpy_helper.to_array(tensor)
    values = values.T if transposed else values
    if values.shape != expected.shape or not np.allclose(values, expected, rtol=0, atol=1e-6):
        raise MemoptError(f"{name}: the traced ONNX weight is not memopt's de-quantized weight (node mapping broken)")


def replace_matmuls(source: Path, target: Path, weights: dict[str, matmul_nbits.NBitsWeight]) -> None:
    """Read the float graph ``source``, swap the MatMul of every Linear in ``weights`` for MatMulNBits
    (and the nodes widening its fp16 scales), write ``target`` (weights in ``target.name + '.data'``).
    Unused float weights are dropped, and so is the exporter's per-node debugging metadata."""
    nodes = onnx_int8.matmul_nodes(source)
    model = onnx.load(str(source))
    graph = model.graph
    by_name = {n.name: n for n in graph.node}
    # Built once, before any node is swapped: the float weights and Transposes they name are still there.
    constants = {t.name: t for t in graph.initializer}
    producers = {output: n for n in graph.node for output in n.output}
    swapped = {}  # MatMul name -> the nodes replacing it, in order
    for linear, weight in weights.items():
        old = by_name.get(nodes.get(linear, ""))
        if old is None or old.op_type != "MatMul":
            raise ConfigError(f"{linear}: no MatMul traced from it in the ONNX graph (a Gemm or fused form); "
                              "MatMulNBits replaces MatMuls")
        tensor, transposed = _float_weight(constants, producers, old)
        _check_same(tensor, transposed, matmul_nbits.decode(weight).T, linear)
        inits, swapped[old.name] = matmul_nbits.graph_parts(weight, old.input[0], linear, old.output[0])
        graph.initializer.extend(inits)
    # The widening nodes read only initializers, so putting them just before their MatMulNBits keeps
    # the node list in topological order.
    new_nodes = [new for n in graph.node for new in swapped.get(n.name, [n])]
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused(graph)
    _drop_debug_metadata(graph)
    if not any(o.domain == matmul_nbits.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(matmul_nbits.DOMAIN, 1))
    onnx.save(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{target.name}.data", size_threshold=1024)


def _drop_debug_metadata(graph: onnx.GraphProto) -> None:
    """Clear torch.onnx's per-node ``metadata_props`` (stack traces with the exporting machine's paths,
    module scopes): about 1.7 KB a node, 4 MiB of SmolLM2's graph, and nothing a runtime reads."""
    for node in graph.node:
        del node.metadata_props[:]


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove Transposes and constants nothing reads any more (the float weights replaced)."""
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Transpose" and not set(n.output) & used]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    used = {name for n in graph.node for name in n.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def weight_errors(path: Path, model: nn.Module) -> dict[str, float]:
    """Linear name -> max |weight ONNX Runtime decodes from the file at ``path`` - memopt's weight|:
    each MatMulNBits node, with the nodes that feed its scales and zero points as the file has them,
    run alone by ORT's own kernel on the identity (:func:`matmul_nbits.run_on_identity`)."""
    graph = onnx.load(str(path)).graph
    constants = {t.name: t for t in graph.initializer}
    producers = {output: n for n in graph.node for output in n.output}
    linears, errors = linear_layers(model), {}
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            continue
        feeding = _feeding_nodes(node, producers)
        read = dict.fromkeys(name for n in feeding + [node] for name in n.input if name in constants)  # once each
        inits = [constants[name] for name in read]
        attrs = {a.name: a.i for a in node.attribute}
        decoded = matmul_nbits.run_on_identity(inits, feeding + [node], node.input[0], node.output[0],
                                               attrs["K"], attrs["N"])  # W^T [K, N]
        memopt = effective_weight(linears[node.name]).detach().float().numpy()  # [N, K]
        errors[node.name] = float(np.abs(decoded.T - memopt).max())
    return errors


def _feeding_nodes(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes computing a MatMulNBits ``node``'s weight inputs (all but A), in topological order."""
    found: list[onnx.NodeProto] = []

    def visit(name: str) -> None:
        producer = producers.get(name)
        if producer is not None and producer not in found:
            for upstream in producer.input:
                visit(upstream)
            found.append(producer)

    for name in node.input[1:]:
        visit(name)
    return found
