import json

import pytest
import torch
import torch.nn as nn

from hetsearch.cmpnas.flops import count_macs, count_params
from hetsearch.cmpnas.models import PRESETS, QUERY_PRESETS, build_model, resolve_spec
from hetsearch.errors import ModelError


def test_every_preset_builds_and_embeds_unit_vectors():
    for name in PRESETS:
        m = build_model(name).eval()
        x = torch.rand(3, m.in_channels, *m.input_size) * 255
        e = m(x)
        assert e.shape == (3, m.embed_dim)
        assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)


def test_query_presets_span_20x_to_200x_fewer_macs():
    gallery = count_macs(build_model("resnet-gallery"))
    ratios = sorted(gallery / count_macs(build_model(n)) for n in QUERY_PRESETS)
    assert 12 <= ratios[0] <= 30, ratios
    assert 150 <= ratios[-1] <= 260, ratios


def test_mac_counter_on_hand_computed_model():
    class Tiny(nn.Module):
        input_shape = (1, 3, 8, 8)

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)  # 8*8*4*3*9 = 6912
            self.dw = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)  # 4*4*4*1*9 = 576
            self.fc = nn.Linear(64, 10)  # 640

        def forward(self, x):
            return self.fc(self.dw(self.conv(x)).flatten(1))

    m = Tiny()
    assert count_macs(m) == 6912 + 576 + 640
    assert count_params(m) == (3 * 4 * 9 + 4) + (4 * 9 + 4) + (64 * 10 + 10)


def test_specs_from_json_text_and_file(tmp_path):
    spec = resolve_spec("mbv3-tiny", input_size=32, in_channels=3, embed_dim=64)
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(spec))
    a, b = build_model(str(p)), build_model(json.dumps(spec))
    assert a.input_size == (32, 32) and a.in_channels == 3 and a.embed_dim == 64
    assert count_macs(a) == count_macs(b)
    assert count_macs(build_model("mbv3-tiny", input_size=56)) > count_macs(build_model("mbv3-tiny"))


def test_bad_specs_are_clear():
    with pytest.raises(ModelError, match="unknown architecture"):
        build_model("mbv3-huge")
    with pytest.raises(ModelError, match="unknown model family"):
        build_model({"family": "vit", "input_size": [28, 28], "in_channels": 1, "embed_dim": 8})
    with pytest.raises(ModelError, match="not valid JSON"):
        build_model("{oops")
    bad = resolve_spec("mbv3-tiny")
    bad["stages"][0]["blocks"] = []
    with pytest.raises(ModelError, match="no blocks"):
        build_model(bad)


def test_cli_names_match_the_registries():
    from hetsearch.cmpnas import losses, models, names

    assert tuple(names.PRESETS) == tuple(models.PRESETS)
    assert names.DEFAULT_GALLERY == models.DEFAULT_GALLERY and names.DEFAULT_QUERY == models.DEFAULT_QUERY
    assert tuple(names.LOSS_PRESETS) == tuple(losses.PRESETS) and names.DEFAULT_COMPAT == losses.DEFAULT_COMPAT
