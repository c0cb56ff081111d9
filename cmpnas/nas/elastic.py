"""Elastic layers: weights shared by slicing (first channels, centre of kernels), after Once-for-All."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hetsearch.errors import ModelError

from ..models import activation, mid_channels, se_channels

def _centre(weight: torch.Tensor, k: int) -> torch.Tensor:
    K = weight.shape[-1]
    if k == K:
        return weight
    s = (K - k) // 2
    return weight[..., s : s + k, s : s + k]


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its parameters and statistics (C from the input)."""

    def forward(self, x):
        c = x.shape[1]
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, factor, self.eps)


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, c: int) -> None:
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


class ElasticBlock(nn.Module):
    """An inverted-residual block with elastic input/output width, kernel size and expand ratio."""

    def __init__(self, cin_choices: Iterable[int], cout_max: int, kernel_max: int, expands: Sequence[float],
                 stride: int, se: bool, act: str):
        super().__init__()
        cin_choices = sorted(set(cin_choices))
        cin_max = max(cin_choices)
        mid_max = max(max(mid_channels(c, e) for c in cin_choices for e in expands), cin_max)
        self.stride, self.use_se, self.kernel_max = int(stride), bool(se), int(kernel_max)
        self.expand_conv = nn.Conv2d(cin_max, mid_max, 1, bias=False)
        self.expand_bn = DynamicBatchNorm2d(mid_max)
        self.dw_conv = nn.Conv2d(mid_max, mid_max, kernel_max, stride, kernel_max // 2, groups=mid_max, bias=False)
        self.dw_bn = DynamicBatchNorm2d(mid_max)
        if se:
            sm = se_channels(mid_max)
            self.se_fc1 = nn.Conv2d(mid_max, sm, 1)
            self.se_fc2 = nn.Conv2d(sm, mid_max, 1)
        self.project_conv = nn.Conv2d(mid_max, cout_max, 1, bias=False)
        self.project_bn = DynamicBatchNorm2d(cout_max)
        self.act = activation(act)
        # active settings
        self.cout, self.kernel, self.expand = cout_max, kernel_max, max(expands)

    def forward(self, x):
        cin, cout, k = x.shape[1], self.cout, self.kernel
        mid = mid_channels(cin, self.expand)
        y = x
        if mid != cin:
            y = self.act(self.expand_bn(F.conv2d(x, self.expand_conv.weight[:mid, :cin])))
        y = F.conv2d(y, _centre(self.dw_conv.weight[:mid], k), None, self.stride, k // 2, 1, mid)
        y = self.act(self.dw_bn(y))
        if self.use_se:
            sm = se_channels(mid)
            s = y.mean(dim=(2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, self.se_fc1.weight[:sm, :mid], self.se_fc1.bias[:sm]))
            s = F.hardsigmoid(F.conv2d(s, self.se_fc2.weight[:mid, :sm], self.se_fc2.bias[:mid]))
            y = y * s
        y = self.project_bn(F.conv2d(y, self.project_conv.weight[:cout, :mid]))
        return x + y if (self.stride == 1 and cin == cout) else y

    @torch.no_grad()
    def copy_to(self, block: nn.Module, cin: int) -> None:
        """Copy the active slice into a static ``InvertedResidual`` built with the same settings."""
        cout, k = self.cout, self.kernel
        mid = mid_channels(cin, self.expand)
        if (block.expand is None) != (mid == cin):
            raise ModelError("internal: static block and elastic block disagree on the expand layer")
        if block.expand is not None:
            block.expand[0].weight.copy_(self.expand_conv.weight[:mid, :cin])
            _copy_bn(block.expand[1], self.expand_bn, mid)
        block.dw[0].weight.copy_(_centre(self.dw_conv.weight[:mid], k))
        _copy_bn(block.dw[1], self.dw_bn, mid)
        if self.use_se:
            sm = se_channels(mid)
            block.se.fc1.weight.copy_(self.se_fc1.weight[:sm, :mid])
            block.se.fc1.bias.copy_(self.se_fc1.bias[:sm])
            block.se.fc2.weight.copy_(self.se_fc2.weight[:mid, :sm])
            block.se.fc2.bias.copy_(self.se_fc2.bias[:mid])
        block.project[0].weight.copy_(self.project_conv.weight[:cout, :mid])
        _copy_bn(block.project[1], self.project_bn, cout)
