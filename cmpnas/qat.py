"""Quantization-aware compatibility training (``--qat int8``): fake quantization inside the one trainer.

:func:`prepare_qat` turns a trained float query model into a :class:`QATModel` that the trainer
(:func:`hetsearch.cmpnas.train.fit`, the plain step) finetunes with the compatibility loss against the frozen
gallery model, so the model that is trained is the int8 model the exporters will produce:

* **BN folded first.** Every batch norm that follows a convolution or linear layer (found by tracing the
  graph) is folded into it: the scale goes into the weights, the shift stays as a trainable per-channel bias
  in the batch norm's place (its statistics are frozen). The exporters fold batch norm too, so the weights
  that are fake-quantized here are the weights they quantize.
* **Weights:** int8, symmetric, per output channel, range [-127, 127] (max-abs scale), as both exporters
  (ai-edge-quantizer, onnxruntime QInt8 per-channel) quantize them, for every convolution and linear layer.
* **Activations:** 8-bit asymmetric per tensor (a range that contains 0), observed as a moving average of
  each training batch's min/max and frozen in eval; a range that never varies is widened to [lo, lo + 1]
  (the exporter's rule). They sit where an int8 graph requantizes: after the input normalisation, after each
  folded batch norm (unless a ReLU follows it, which the converters fuse), after each activation, after a
  squeeze-excitation gate, after a residual add, after global pooling and after the embedding layer. The L2
  normalisation stays float, as in every int8 file. Where the two int8 recipes differ (the TFLite one keeps
  the squeeze-excitation branches and the dense head's activations float), the stricter one is simulated.

Straight-through estimators (``torch.fake_quantize_per_*_affine``) carry the gradients.

:meth:`QATModel.to_plain` gives back an ordinary float :class:`EmbeddingNet` with the same architecture and
state-dict keys (each folded batch norm is stored as weight 1, mean 0, variance ``1 - eps``: an identity
scale plus the learned bias), so checkpoints, export, evaluation and the SDK need nothing new; the checkpoint
records ``qat`` in its metadata and ``hetsearch export`` takes int8 from it with its int8 recipes.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P

from hetsearch.errors import ModelError

from .models import EmbeddingNet, InvertedResidual, SqueezeExcite

QAT_SCHEMES = ("int8",)
ACTIVATIONS = (nn.ReLU, nn.Hardswish, nn.SiLU, nn.ReLU6, nn.Hardsigmoid)


class FoldedBias(nn.Module):
    """A batch norm folded into the layer before it: only its per-channel shift is left. The buffers keep the
    batch norm's state-dict keys, as an identity scale (weight 1, mean 0, variance 1 - eps) plus the shift."""

    def __init__(self, bias: torch.Tensor, bn: nn.Module):
        super().__init__()
        self.eps = float(bn.eps)
        n = bias.numel()
        self.bias = nn.Parameter(bias.detach().clone())
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.full((n,), 1.0) - torch.tensor(self.eps))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2)))


class WeightFakeQuant(nn.Module):
    """Parametrization: a folded batch norm's per-channel scale (frozen) times the weight, then int8 symmetric
    per-output-channel fake quantization, range [-127, 127]. The weight itself stays unfolded, so SGD moves it
    as it did in float training (training the folded weights directly diverged at a tenth of the float lr)."""

    enabled = True

    def __init__(self, scale: torch.Tensor | None = None, dims: int = 4):
        super().__init__()
        self.register_buffer("fold", None if scale is None else scale.detach().reshape(-1, *([1] * (dims - 1))))

    def forward(self, w):
        if self.fold is not None:
            w = w * self.fold
        if not self.enabled:
            return w
        scale = w.detach().abs().flatten(1).amax(dim=1).clamp(min=1e-8) / 127.0
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class ActFakeQuant(nn.Module):
    """8-bit asymmetric per-tensor fake quantization with a moving-average min/max observer (training only)."""

    def __init__(self, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.enabled = True
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
        hi = torch.where(hi - lo <= 1e-8, lo + 1.0, hi)  # never varied: [lo, lo + 1], as the exporter widens it
        scale = (hi - lo) / 255.0
        zero = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32)
        return scale.reshape(1), zero.reshape(1)

    def forward(self, x):
        if not self.enabled:
            return x
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min(), x.detach().max()
                if bool(self.seen):
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
                else:
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    self.seen.fill_(True)
        scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def _bn_pairs(net: nn.Module) -> list[tuple[str, str]]:
    """(layer, batch norm) module names where a conv/linear layer's only consumer is a batch norm (fx trace)."""
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(net)
    except Exception as exc:  # a family whose forward fx cannot trace
        raise ModelError(f"--qat: cannot trace the {getattr(net, 'family', '?')} model to fold its batch norms: "
                         f"{exc}") from exc
    mods = dict(net.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if (getattr(src, "op", None) == "call_module" and isinstance(mods.get(src.target), (nn.Conv2d, nn.Linear))
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


@torch.no_grad()
def fold_batchnorms(net: nn.Module) -> dict[str, torch.Tensor]:
    """Fold every conv/linear -> batch norm pair of ``net`` in place (eval statistics): the batch norm becomes a
    :class:`FoldedBias`; returns each layer's per-channel scale, which its weight parametrization applies."""
    scales = {}
    for layer_name, bn_name in _bn_pairs(net):
        layer, bn = net.get_submodule(layer_name), net.get_submodule(bn_name)
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        scales[layer_name] = gamma / std
        shift = beta - bn.running_mean * scales[layer_name]
        if layer.bias is not None:
            shift = shift + layer.bias * scales[layer_name]
            layer.bias.zero_()
        _set(net, bn_name, FoldedBias(shift, bn))
    return scales


class QATModel(nn.Module):
    """A float query model with folded batch norms and int8 fake quantization (see the module doc)."""

    def __init__(self, net: EmbeddingNet, scheme: str = "int8"):
        super().__init__()
        if scheme not in QAT_SCHEMES:
            raise ModelError(f"--qat {scheme!r}: choose from {', '.join(QAT_SCHEMES)}")
        self.scheme = scheme
        self.net = copy.deepcopy(net).eval()
        scales = fold_batchnorms(self.net)
        self.folded = len(scales)
        self.act = nn.ModuleDict()
        self._hooks = []
        for name, m in list(self.net.named_modules()):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                P.register_parametrization(m, "weight", WeightFakeQuant(scales.get(name), m.weight.dim()))
        for name in self._act_points():
            fq = ActFakeQuant()
            self.act[name.replace(".", "__")] = fq
            self._hooks.append(self.net.get_submodule(name).register_forward_hook(
                lambda _m, _inp, out, fq=fq: fq(out)))

    def _act_points(self) -> list[str]:
        """Module names whose outputs an int8 graph requantizes."""
        points = []
        for name, m in self.net.named_modules():
            if isinstance(m, nn.Sequential):
                kids = list(m.named_children())
                for i, (kid, km) in enumerate(kids):
                    nxt = kids[i + 1][1] if i + 1 < len(kids) else None
                    if isinstance(km, FoldedBias) and not isinstance(nxt, (nn.ReLU, nn.ReLU6)):
                        points.append(f"{name}.{kid}")
            elif isinstance(m, ACTIVATIONS) or isinstance(m, SqueezeExcite):
                points.append(name)
            elif isinstance(m, InvertedResidual) and m.use_res:
                points.append(name)
        for attr in ("norm_in", "pool"):
            if isinstance(getattr(self.net, attr, None), nn.Module):
                points.append(attr)
        for name, m in self.net.named_modules():  # a folded batch norm outside a Sequential (e.g. bn_out)
            parent = name.rpartition(".")[0]
            if isinstance(m, FoldedBias) and not isinstance(self.net.get_submodule(parent) if parent else self.net,
                                                            nn.Sequential):
                points.append(name)
        return list(dict.fromkeys(p for p in points if p))

    # the EmbeddingNet interface the trainer and embed() use
    @property
    def spec(self) -> dict:
        return self.net.spec

    @property
    def input_size(self):
        return self.net.input_size

    @property
    def in_channels(self) -> int:
        return self.net.in_channels

    @property
    def embed_dim(self) -> int:
        return self.net.embed_dim

    def forward(self, x):
        return self.net(x)

    @contextlib.contextmanager
    def float_mode(self):
        """Fake quantization off (the float model with the same weights), e.g. to validate it too."""
        fqs = [m for m in self.modules() if isinstance(m, (ActFakeQuant, WeightFakeQuant))]
        for m in fqs:
            m.enabled = False
        try:
            yield self
        finally:
            for m in fqs:
                m.enabled = True

    def activation_ranges(self) -> dict:
        return {k.replace("__", "."): [round(float(m.lo), 6), round(float(m.hi), 6)] for k, m in self.act.items()}

    def to_plain(self) -> EmbeddingNet:
        """The float model with the trained weights, as an ordinary EmbeddingNet (same state-dict keys: a folded
        batch norm's buffers are already a batch norm's). Built fresh from the spec: removing a parametrization
        from a deep copy would remove it from this model too (they share the parametrized class)."""
        state = {k: v.detach().clone() for k, v in self.net.state_dict().items() if ".parametrizations." not in k}
        with self.float_mode(), torch.no_grad():  # the folded float weights
            for name, m in self.net.named_modules():
                if P.is_parametrized(m, "weight"):
                    state[f"{name}.weight"] = m.weight.detach().clone()
        plain = type(self.net)(self.net.spec)
        plain.load_state_dict(state)
        return plain.eval()

    def describe(self) -> dict:
        """What the checkpoint records under ``qat``."""
        return {"scheme": self.scheme, "batchnorms_folded": self.folded,
                "weights": "int8 symmetric per output channel, [-127, 127], max-abs scale (every conv and linear)",
                "activations": "8-bit asymmetric per tensor, moving-average min/max over training batches",
                "float": "the L2 normalisation",
                "activation_ranges": self.activation_ranges()}


def prepare_qat(model: EmbeddingNet, scheme: str = "int8") -> QATModel:
    """A :class:`QATModel` from a trained float model (a copy; ``model`` is untouched)."""
    if isinstance(model, QATModel):
        return model
    return QATModel(model, scheme)


@torch.no_grad()
def activation_points(ckpt, pixels) -> dict[str, tuple]:
    """For a ``--qat`` checkpoint: each fake-quantization point's float output over ``pixels`` (N×C×H×W, the
    folded float model with quantization off, i.e. what the exported float graph computes there) and the
    range QAT learned for it, clamped to contain 0 as the fake quantization does: ``{point: (values, (lo,
    hi))}``. The exporters find the graph tensors holding those values and quantize them with those ranges."""
    q = simulated(ckpt)
    seen: dict[str, list] = {}
    hooks = []
    for key in q.act:
        name = key.replace("__", ".")
        hooks.append(q.net.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.setdefault(name, []).append(out.detach().numpy().copy())))
    try:
        with q.float_mode():
            for i in range(len(pixels)):
                q(torch.as_tensor(pixels[i : i + 1], dtype=torch.float32))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for key, fq in q.act.items():
        name = key.replace("__", ".")
        scale, zero = fq.qparams()  # the range the fake quantization used: [-zero * scale, (255 - zero) * scale]
        lo = float(-zero.item() * scale.item())
        out[name] = (np.concatenate(seen[name]), (lo, lo + 255.0 * float(scale.item())))
    return out


def simulated(ckpt) -> QATModel:
    """The fake-quantized model a ``--qat`` checkpoint was trained as (its recorded activation ranges), e.g. to
    measure how closely the exported int8 files reproduce it."""
    info = ckpt.meta.get("qat")
    if not info:
        raise ModelError(f"{ckpt.path}: not a quantization-aware (--qat) checkpoint")
    q = QATModel(ckpt.model, info["scheme"])
    ranges = info.get("activation_ranges") or {}
    with torch.no_grad():
        for key, fq in q.act.items():
            lo, hi = ranges[key.replace("__", ".")]
            fq.lo.fill_(lo)
            fq.hi.fill_(hi)
            fq.seen.fill_(True)
    return q.eval()
