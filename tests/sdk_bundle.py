"""Small real bundles for the SDK and profiling tests and the SDK benchmark.

Uses the export toolchain (``hetsearch.export.exporter.export_bundle``) when it is
installed; otherwise exports with torch and litert-torch directly and writes the
manifest through ``hetsearch.manifest.save``. Either way the files are real ONNX and
TFLite models of a tiny random-weight query network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _space_id(seed: int) -> str:
    from hetsearch.space import space_id_from_digest

    return space_id_from_digest(hashlib.sha256(f"sdk-test-gallery-{seed}".encode()).hexdigest(), 128, True)


def _model(arch: str, channels: int, size: int, seed: int):
    import torch

    from hetsearch.cmpnas.models import build_model

    torch.manual_seed(seed)
    return build_model(arch, in_channels=channels, input_size=size).eval()


def _channels_last(model):
    """``model`` behind a permute, so the exported graph takes N×H×W×C pixels."""
    import torch.nn as nn

    class ChannelsLast(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    return ChannelsLast(model)


def _export_directly(model, out: Path, formats, space_id: str, layout: str = "NCHW") -> dict:
    import torch

    from hetsearch import manifest as manifest_mod
    from hetsearch.cmpnas.flops import count_macs, count_params

    h, w = model.input_size
    c = model.in_channels
    x = torch.rand(1, c, h, w) * 255
    files = []
    out.mkdir(parents=True, exist_ok=True)
    if "onnx" in formats:
        path = out / "model-fp32.onnx"
        graph, example = model, x
        if layout == "NHWC":  # a file that takes channels-last pixels, as some converters emit
            graph, example = _channels_last(model), x.permute(0, 2, 3, 1).contiguous()
        torch.onnx.export(graph, (example,), str(path), input_names=["pixels"], output_names=["embedding"],
                          dynamo=False, opset_version=17)
        files.append(("onnx", path))
    if "tflite" in formats:
        import litert_torch

        path = out / "model-fp32.tflite"
        litert_torch.convert(model, (x,)).export(str(path))
        files.append(("tflite", path))
    manifest = {
        "schema_version": manifest_mod.SCHEMA_VERSION,
        "model_id": out.name,
        "space_id": space_id,
        "architecture": model.spec,
        "macs": int(count_macs(model)),
        "params": int(count_params(model)),
        "input": {"height": h, "width": w, "channels": c, "layout": "NCHW", "dtype": "float32",
                  "value_range": [0, 255], "resize": "bilinear", "color": "grayscale" if c == 1 else "rgb"},
        "output": {"dim": model.embed_dim, "l2_normalized": True, "name": "embedding"},
        "files": [{"path": p.name, "format": fmt, "precision": "fp32", "sha256": manifest_mod.sha256_path(p),
                   "bytes": manifest_mod.size_path(p), **({"layout": layout} if fmt == "onnx" else {})}
                  for fmt, p in files],
        "checks": {},
        "latency": {},
        "tools": {"torch": torch.__version__},
    }
    manifest_mod.save(out, manifest)
    return manifest


def build_bundle(out: str | Path, *, arch: str = "mbv3-tiny", channels: int = 1, size: int = 28,
                 formats=("onnx", "tflite"), seed: int = 0, exporter: bool = True, layout: str = "NCHW") -> Path:
    """Export a tiny random query model into ``out`` and return the bundle directory.

    ``exporter=False`` skips the export toolchain (torch's TorchScript ONNX exporter, a fraction of a
    second) for bundles whose tests are about preprocessing rather than the exported files;
    ``layout="NHWC"`` (implies ``exporter=False``) writes an ONNX file taking channels-last input.
    """
    if layout != "NCHW":
        exporter = False
    out = Path(out)
    model = _model(arch, channels, size, seed)
    space_id = _space_id(seed)
    export_bundle = None
    if exporter:
        try:
            from hetsearch.export.exporter import export_bundle
        except ImportError:
            pass
    if export_bundle is None:
        _export_directly(model, out, tuple(formats), space_id, layout)
        return out
    from hetsearch.cmpnas.checkpoint import save_checkpoint

    ckpt = out.parent / "checkpoints" / out.name  # the folder name becomes the bundle's model_id
    save_checkpoint(ckpt, model, kind="query", space_id=space_id)
    export_bundle(ckpt, out, formats=tuple(formats), precisions=("fp32",), progress=False)
    return out


def reference_embedding(arch: str, channels: int, size: int, seed: int, pixels):
    """The PyTorch model's embedding of preprocessed inputs (float32 [N, C, H, W] in 0..255)."""
    import torch

    model = _model(arch, channels, size, seed)
    with torch.no_grad():
        return model(torch.from_numpy(pixels)).numpy()


_BUILT: dict[tuple, Path] = {}


def cached_bundle(tmp_path_factory, **kwargs) -> Path:
    """``build_bundle`` once per test session for each set of arguments (shared by the SDK test modules)."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kwargs.items()))
    if key not in _BUILT:
        name = "bundle-" + "-".join(str(v if not isinstance(v, tuple) else "+".join(v)) for _, v in key)
        _BUILT[key] = build_bundle(tmp_path_factory.mktemp("sdk") / name, **kwargs)
    return _BUILT[key]
