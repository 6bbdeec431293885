"""CPU inference with every linear weight reordered once, at load, into oneDNN's blocked layout.

A dense `nn.Linear` on CPU hands its row-major weight to the GEMM library at every call. At the
receiver's prompt lengths (one to a few hundred positions) that costs far more than the
arithmetic: on 2 cores, Qwen2.5-0.5B's vocabulary projection of one position takes 44 ms dense
and 18-25 ms reordered, a 55-position MLP matmul 4.3 ms against 3.1 ms; Qwen's latent prefill
at batch 1 555 -> 339 ms (bench/results/latency{,_dense}.md). `pack(model)` swaps each `nn.Linear` for a `PackedLinear` that holds
the weight reordered once and calls the kernel torch.compile's CPU freezing pass selects for a
linear (`torch.ops.mkldnn._linear_pointwise`), without compiling the model.

The arithmetic is the same float32 (or bfloat16) math in another summation order: logits differ
from dense by at most 5e-5 on Qwen's (of magnitude ~10), so a greedy answer changes only on a
near tie: none of the 1,800 eval answers did (bench/results/prepack_paired.md). Inference
only: the op has no backward, so training keeps the dense model. A tied output projection gets
its own reordered copy (Qwen2.5-0.5B: +545 MB); the input embedding keeps the dense weight.
The parameters left dense (embeddings, norms) are copied out of the checkpoint's memory map, so
the map is released: otherwise the whole file's pages (2 GB for Qwen) stay resident beside the
reordered copy.
"""
from __future__ import annotations

import torch
from torch import nn

PACKABLE = (torch.float32, torch.bfloat16)


class PackedLinear(nn.Module):
    """y = x W^T + b with W reordered once (oneDNN layout); dense input and output."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(w, None), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().clone()  # off the checkpoint map
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("PackedLinear is for inference (it has no backward): train the dense model")
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def packable(linear: nn.Linear) -> bool:
    return linear.weight.device.type == "cpu" and linear.weight.dtype in PACKABLE


def pack(model: nn.Module) -> int:
    """Replace, in place, every CPU float32/bfloat16 `nn.Linear` of `model` by a `PackedLinear`;
    return how many were replaced (0 on GPU, for float16, or where torch has no oneDNN). The
    parameters left dense are copied into the process's own memory, releasing a checkpoint that
    from_pretrained memory-mapped (tied parameters stay tied: one Parameter, one copy)."""
    if not torch.backends.mkldnn.is_available():
        return 0
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, nn.Linear) and packable(child)]
    with torch.no_grad():
        for parent, name, child in swaps:
            setattr(parent, name, PackedLinear(child))
        if swaps:
            for p in model.parameters():
                if p.device.type == "cpu":
                    p.data = p.data.clone()
    return len(swaps)
