"""An Inductor pass that packs convolution weights for oneDNN once, at export, even when the batch
dimension is dynamic.

With ``freezing``, Inductor turns each convolution into a oneDNN one and stores its weight in
oneDNN's blocked layout, but only when the input's shape is static: with a dynamic batch
dimension it keeps the plain weight, and oneDNN reorders every weight on every call (ResNet-18:
7 ms of a 25 ms forward at batch 1, 14 ms of 160 at batch 8). This pass packs each such weight
as Inductor does for static shapes, for a batch of one (Lambda's one request at a time), and the
package stores the packed tensors with their layout. The layout oneDNN picks depends on the CPU
and the convolution, and on the batch size only where the input is tiny (a 1x1 convolution on a
pooled input); wherever a call wants another layout, oneDNN reorders the packed weight as it
reordered the plain one before, with the same result. Export-time only: imports Python torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch.fx.experimental.symbolic_shapes import has_free_symbols, optimization_hint

_MKLDNN = torch.ops.mkldnn
#: oneDNN convolutions as Inductor's freezing leaves them (this pass runs before the fusion
#: passes, which carry the weight over); each names its input ``X`` and its weight ``W``.
CONVOLUTIONS = (
    _MKLDNN._convolution_pointwise.default,
    _MKLDNN._convolution_pointwise.binary,
    _MKLDNN._convolution_pointwise_.binary,
)


class PackConvolutionWeights(CustomGraphPass):
    """``post_grad_custom_pre_pass``: give each oneDNN convolution whose weight is a plain
    frozen constant and whose input shape is dynamic a weight packed for a batch of one."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        module = graph.owning_module
        if module is None:
            return
        packed: dict[tuple[Any, ...], torch.fx.Node] = {}
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in CONVOLUTIONS:
                continue
            schema = node.target._schema  # type: ignore[union-attr]
            args = {a.name: v for a, v in zip(schema.arguments, node.args, strict=False)}
            args |= node.kwargs
            weight, x = args["W"], args["X"]
            shape = x.meta.get("val").shape if "val" in x.meta else None
            if weight.op != "get_attr" or shape is None or not has_free_symbols(shape):
                continue
            tensor = _attribute(module, str(weight.target))
            if not isinstance(tensor, torch.Tensor) or tensor.is_mkldnn or tensor.dim() != 4:
                continue
            size = [1, *(optimization_hint(s) for s in shape[1:])]
            geometry = (args["padding"], args["stride"], args["dilation"], args["groups"])
            key = (weight.target, *map(tuple, geometry[:3]), geometry[3], tuple(size))
            if key not in packed:
                name = f"_lambdatorch_packed_weight{len(packed)}"
                module.register_buffer(
                    name, _MKLDNN._reorder_convolution_weight(tensor, *geometry, size)
                )
                with graph.inserting_before(node):
                    packed[key] = graph.get_attr(name)
                packed[key].meta.update(weight.meta)  # the same shape, as Inductor's own
            node.replace_input_with(weight, packed[key])
            if not weight.users:
                graph.erase_node(weight)

    def uuid(self) -> Any:
        return get_hash_for_files((__file__,))


def _attribute(module: torch.nn.Module, target: str) -> Any:
    """What a ``get_attr`` node names: an attribute of ``module`` or of one of its submodules
    (freezing leaves some constants where the model had them, e.g. ``features.1.fc1.weight``)."""
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part, None)
    return value
