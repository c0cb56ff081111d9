"""An importable gallery model factory for the bring-your-own-gallery tests."""

import torch
import torch.nn as nn


def make_gallery():
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 12))


def make_gallery_with_classifier():
    torch.manual_seed(6)
    return make_gallery(), nn.Linear(12, 10, bias=False)
