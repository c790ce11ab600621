"""ONNX export of the serving graphs: dynamic batch/height/width, checked and shape-inferred.

The graphs are traced with ``torch.export`` (the dynamo exporter), which keeps the stride
padding symbolic, so one graph serves any resolution. The FP16 variant runs the network in half
precision between the same uint8 inputs and outputs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

from cycada.atomic import atomic_path
from cycada.errors import ExportError
from cycada.export import graph_cache
from cycada.models.endpoints import Endpoint
from cycada.models.graphs import serving_graph

OPSET = 18
MAX_SIDE = 8192  # largest height/width the exported graphs accept

INPUT_NAME = "images"
OUTPUT_NAMES = {
    "segment": ["labels", "confidence"],
    "translate": ["translated"],
    "classify": ["class_ids", "probabilities"],
}


def output_names(endpoint: Endpoint, logits: bool = False) -> list[str]:
    names = list(OUTPUT_NAMES[endpoint.kind])
    return [*names, "logits"] if logits and endpoint.kind != "translate" else names


def example_input(endpoint: Endpoint) -> torch.Tensor:
    """A batch-2 example (batch 1 would let torch.export specialise the batch dimension)."""
    side = 32 if endpoint.kind == "classify" else 64
    return torch.zeros(2, side, side + endpoint.multiple, endpoint.in_channels, dtype=torch.uint8)


def export_onnx(
    endpoint: Endpoint,
    path: Path,
    half: bool = False,
    logits: bool = False,
    simplify: bool = False,
    cache: bool = True,
    blocks: bool = False,
) -> Path:
    """Write the endpoint's graph to ``path`` (atomically), then check and shape-infer it.

    ``simplify`` runs onnxscript's optimizer once more (constant folding, dead-code removal,
    function inlining) on top of the one the exporter applies. With ``cache``, a graph exported
    before from the same weights, code and options is copied instead (:mod:`.graph_cache`).
    A segmentation's ``blocks`` upsamples two classes a block (the served fp32 graph: CPU
    engines, :mod:`cycada.models.block_labels`); without, every class is upsampled, laid last
    (:func:`resize_channels_last`; the static shapes GPU engines want).
    """
    key = graph_cache.graph_key(
        endpoint.network,
        {
            "kind": endpoint.kind,
            "multiple": endpoint.multiple,
            "in_channels": endpoint.in_channels,
            "half": half,
            "logits": logits,
            "simplify": simplify,
            "opset": OPSET,
            "max_side": MAX_SIDE,
            "outputs": tuple(output_names(endpoint, logits)),
            "blocks": blocks,
        },
    )
    if cache and graph_cache.fetch(key, path, wait=half):
        return path
    _export_checked(endpoint, path, half, logits, simplify, blocks)
    if cache:
        graph_cache.store(key, path)
    return path


def _export_checked(
    endpoint: Endpoint,
    path: Path,
    half: bool,
    logits: bool,
    simplify: bool,
    blocks: bool,
):
    graph = serving_graph(endpoint, half, logits, blocks)
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=1, max=MAX_SIDE)
    width = torch.export.Dim("width", min=1, max=MAX_SIDE)
    dynamic = {INPUT_NAME: {0: batch, 1: height, 2: width}}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            # the exporter prints its own progress lines; keep the command's output readable
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(
                    graph,
                    (example_input(endpoint),),
                    input_names=[INPUT_NAME],
                    output_names=output_names(endpoint, logits),
                    opset_version=OPSET,
                    dynamo=True,
                    dynamic_shapes=dynamic,
                    verbose=False,
                )
        except Exception as exc:  # the exporter raises many types; keep the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{endpoint.name}: ONNX export failed ({first})") from exc
        program.save(str(tmp))
        model = onnx.load(str(tmp))
        model = _checked(resize_channels_last(model), endpoint, simplify)
        onnx.save(model, str(tmp))
    return path


CHANNELS_LAST = [0, 2, 3, 1]


def resize_channels_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every Resize whose only reader moves the channels last rewritten to move
    them first: Transpose → Resize (its scales or sizes permuted alike). The result is the
    same tensor; ONNX Runtime resizes (N, H, W, C) along contiguous channels, about twice as
    fast as (N, C, H, W) for the 19 class channels of a segmentation graph."""
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        users = readers.get(node.output[0], []) if node.output else []
        if (
            node.op_type != "Resize"
            or node.output[0] in graph_outputs
            or len(users) != 1
            or users[0].op_type != "Transpose"
            or list(onnx.helper.get_attribute_value(users[0].attribute[0])) != CHANNELS_LAST
        ):
            nodes.append(node)
            continue
        transpose, moved = users[0], f"{node.output[0]}_channels_last"
        inputs = [moved, *node.input[1:]]
        order = f"{node.output[0]}_channels_last_order"
        nodes.append(onnx.helper.make_node("Constant", [], [order], value_ints=CHANNELS_LAST))
        for index in (2, 3):  # scales, sizes: whichever is given follows the channels
            if len(inputs) > index and inputs[index]:
                permuted = f"{inputs[index]}_channels_last"
                nodes.append(onnx.helper.make_node("Gather", [inputs[index], order], [permuted]))
                inputs[index] = permuted
        make = onnx.helper.make_node
        nodes.append(make("Transpose", [node.input[0]], [moved], perm=CHANNELS_LAST))
        resize = onnx.helper.make_node("Resize", inputs, list(transpose.output), name=node.name)
        resize.attribute.extend(node.attribute)
        nodes.append(resize)
        transpose.op_type = ""  # dropped below: the Resize now writes its output
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.op_type)
    return model


def _checked(model: onnx.ModelProto, endpoint: Endpoint, simplify: bool) -> onnx.ModelProto:
    """``model`` (optimized once more with ``simplify``) checked and shape-inferred."""
    if simplify:
        # only with --simplify
        import onnxscript.optimizer

        model = onnxscript.optimizer.optimize(model)
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{endpoint.name}: exported ONNX graph is invalid ({exc})") from exc


def drop_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto | None:
    """``model`` without output ``name`` and the nodes and initializers only it needed; None
    when a node holds a subgraph (its outer-scope inputs are not tracked here)."""
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return None
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = pruned.graph
    kept_outputs = [o for o in graph.output if o.name != name]
    needed = {o.name for o in kept_outputs}
    kept_nodes = []
    for node in reversed(graph.node):  # nodes are in topological order
        if any(out in needed for out in node.output):
            kept_nodes.append(node)
            needed.update(i for i in node.input if i)
    del graph.output[:]
    graph.output.extend(kept_outputs)
    nodes = list(reversed(kept_nodes))
    del graph.node[:]
    graph.node.extend(nodes)
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    values = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(values)
    return pruned


def export_served(
    endpoint: Endpoint, path: Path, checked: Path | None, simplify: bool, cache: bool
) -> Path:
    """The served graph (a segmentation's in blocks): ``checked`` (the same graph with a
    ``logits`` output, exported for the parity checks) without that output, which saves a
    trace; else exported on its own."""
    served = None if checked is None else drop_output(onnx.load(str(checked)), "logits")
    if served is None:
        return export_onnx(endpoint, path, simplify=simplify, cache=cache, blocks=True)
    served = _checked(served, endpoint, simplify)
    with atomic_path(path) as tmp:
        onnx.save(served, str(tmp))
    return path
