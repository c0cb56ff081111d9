"""Multiply-accumulates (MACs, what NAS papers call FLOPs) and parameters at a model's input size."""

from __future__ import annotations

import torch
import torch.nn as nn


def count_macs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> int:
    """MACs of one forward pass on a batch of one, counting convolutions and linear layers."""
    if input_shape is None:
        input_shape = getattr(model, "input_shape")
    total = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        kh, kw = m.kernel_size
        total[0] += out.shape[2] * out.shape[3] * m.out_channels * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp, out):
        total[0] += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape[1:]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total[0])


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def profile(model: nn.Module) -> dict:
    macs = count_macs(model)
    return {"macs": macs, "mmacs": macs / 1e6, "params": count_params(model)}
