"""Fold each BatchNorm into the convolution before it, in the student's own module tree.

Quantization-aware training of a network with BatchNorm after its convolutions quantizes the convolution's
weights before the BatchNorm scales them: the exported graph then keeps Conv -> BatchNorm, which ONNX
Runtime cannot fuse into an integer convolution, and the INT8 artifact runs slower than the PTQ one (whose
ONNX export folded them). Folding first gives the quantization-aware student the graph the FP32 export has.
It also freezes the BatchNorm statistics, which is what fine-tuning a trained student on small batches wants.

The pairs are found with torch.fx (a convolution whose only user is a BatchNorm); the model stays a plain
nn.Module (NNCF's PyTorch quantizer takes a torch.fx GraphModule down another path): the convolution is
replaced by its folded copy and the BatchNorm by an Identity. A model torch.fx cannot trace keeps its
BatchNorms (the caller holds them in eval mode) and the reason is returned.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorms(model: nn.Module) -> tuple[int, str | None]:
    """Fold in place every Conv2d -> BatchNorm2d pair of ``model`` (in eval mode); returns (pairs folded,
    why none could be looked for or None)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as error:  # any tracing failure means: leave the model as it is
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return 0, f"not traceable by torch.fx ({type(error).__name__}: {first_line})"
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d)
            and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            folded = fuse_conv_bn_eval(modules[conv_name], modules[bn_name])
            model.set_submodule(conv_name, folded)
            model.set_submodule(bn_name, nn.Identity())
    model.train(was_training)
    return len(pairs), None
