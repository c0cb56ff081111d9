"""The elastic supernet: extraction equivalence, MACs, BN recalibration, config and arch validation."""

import copy
import json
import random

import pytest
import torch
import torch.nn as nn

from hetsearch.cmpnas.flops import count_macs
from hetsearch.cmpnas.models import MobileNetV3Embed, build_model
from hetsearch.cmpnas.nas import (ElasticMobileNetV3, SupernetConfig, arch_macs, arch_to_spec, canonical_arch,
                                       largest_arch, load_supernet, random_arch, recalibrate_bn, save_supernet,
                                       smallest_arch)
from hetsearch.errors import ModelError

TINY = {"stages": [{"out": 16, "stride": 1, "se": False, "act": "relu"},
                   {"out": 24, "stride": 2, "se": True, "act": "hswish"}],
        "head": {"channels": 64, "act": "hswish"}, "depths": [1, 2], "kernels": [3, 5], "expands": [2, 3],
        "widths": [0.5, 1.0], "resolutions": [20, 28]}
HIRES = {"hires": [0, 1]}  # the default space with both layouts


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _scramble_bn(net):
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


@pytest.mark.parametrize("space", [None, TINY, {**TINY, **HIRES}, HIRES],
                         ids=["default", "tiny-with-resolutions", "tiny-hires", "default-hires"])
def test_extracted_subnet_equals_supernet(space):
    torch.manual_seed(0)
    net = ElasticMobileNetV3(SupernetConfig.load(space) if space else SupernetConfig())
    with torch.no_grad():
        _scramble_bn(net)
    net.eval()
    rng = random.Random(0)
    x = torch.rand(3, 1, 28, 28) * 255
    archs = [largest_arch(net.config), smallest_arch(net.config)] + [random_arch(net.config, rng) for _ in range(6)]
    for arch in archs:
        a = net.set_active_subnet(arch)
        assert net.active_arch() == a
        sub = net.extract_subnet().eval()
        assert isinstance(sub, MobileNetV3Embed)
        xi = torch.nn.functional.interpolate(x, size=sub.input_size, mode="bilinear", antialias=True)
        with torch.no_grad():
            ref, got = net(xi), sub(xi)
        assert torch.allclose(ref, got, atol=1e-5), (a, (ref - got).abs().max())
        # the static model is rebuilt from its spec in the foundation's format
        again = build_model(arch_to_spec(net.config, a))
        again.load_state_dict(sub.state_dict())


@pytest.mark.parametrize("space", [None, TINY, HIRES], ids=["default", "tiny", "default-hires"])
def test_arch_macs_equals_count_macs(space):
    cfg = SupernetConfig.load(space) if space else SupernetConfig()
    net = ElasticMobileNetV3(cfg)
    rng = random.Random(3)
    for arch in [largest_arch(cfg), smallest_arch(cfg)] + [random_arch(cfg, rng) for _ in range(8)]:
        net.set_active_subnet(arch)
        assert arch_macs(cfg, arch) == count_macs(net.extract_subnet())


def test_default_space_spans_the_budgets():
    cfg = SupernetConfig()
    lo, hi = arch_macs(cfg, smallest_arch(cfg)) / 1e6, arch_macs(cfg, largest_arch(cfg)) / 1e6
    mbv3_large = count_macs(build_model("mbv3-large")) / 1e6
    assert lo <= 0.11 and hi >= 1.5 and hi > mbv3_large


def test_macs_monotone_in_every_dimension():
    cfg = SupernetConfig(resolutions=[20, 24, 28])
    base = canonical_arch(cfg, {"resolution": 24, "width": 0.5, "depths": [2, 2, 2],
                                "kernels": [[5, 5], [5, 5], [5, 5]], "expands": [[4, 4], [4, 4], [4, 4]]})
    m0 = arch_macs(cfg, base)

    def bumped(fn):
        a = copy.deepcopy(base)
        fn(a)
        return arch_macs(cfg, a)

    for s in range(3):
        assert bumped(lambda a: (a["depths"].__setitem__(s, 3), a["kernels"][s].append(5),
                                 a["expands"][s].append(4))) > m0
        assert bumped(lambda a: (a["depths"].__setitem__(s, 1), a["kernels"][s].pop(), a["expands"][s].pop())) < m0
        for b in range(2):
            assert bumped(lambda a: a["expands"][s].__setitem__(b, 6)) > m0
            assert bumped(lambda a: a["expands"][s].__setitem__(b, 3)) < m0
            assert bumped(lambda a: a["kernels"][s].__setitem__(b, 7)) > m0
            assert bumped(lambda a: a["kernels"][s].__setitem__(b, 3)) < m0
    assert bumped(lambda a: a.__setitem__("resolution", 28)) > m0 > bumped(lambda a: a.__setitem__("resolution", 20))
    assert bumped(lambda a: a.__setitem__("width", 1.0)) > m0 > bumped(lambda a: a.__setitem__("width", 0.35))
    with pytest.raises(ModelError, match="hires 1 is not a choice"):
        bumped(lambda a: a.__setitem__("hires", 1))
    hcfg = SupernetConfig(resolutions=[20, 24, 28], hires=[0, 1])
    assert arch_macs(hcfg, {**base, "hires": 1}) > arch_macs(hcfg, base) == m0


def test_hires_layout_moves_the_downsampling_into_stage_0():
    cfg = SupernetConfig(hires=[0, 1])
    arch = canonical_arch(cfg, {"depths": [1, 1, 1], "kernels": [[3], [3], [3]], "expands": [[3], [3], [3]]})
    assert arch["hires"] == 0  # absent: the layout of spaces without the choice
    lo = arch_to_spec(cfg, arch)["stages"]
    hi = arch_to_spec(cfg, {**arch, "hires": 1})["stages"]
    assert [s["stride"] for s in lo] == [2, 1, 2, 2] and [s["stride"] for s in hi] == [1, 2, 2, 2]
    net = ElasticMobileNetV3(cfg).eval()
    for h, side in ((0, 7), (1, 14)):
        net.set_active_subnet({**arch, "hires": h})
        feats = net.stem_act(net.stem_bn(net.stem_conv(torch.zeros(1, 1, 28, 28))))
        assert net.first(feats).shape[-1] == side
    assert largest_arch(cfg)["hires"] == 1 and smallest_arch(cfg)["hires"] == 0
    with pytest.raises(ModelError, match="needs a first block of stride 2 and a stage 0 of stride 1"):
        SupernetConfig(hires=[0, 1], first_block=None)
    with pytest.raises(ModelError, match="hires choices are 0 and 1"):
        SupernetConfig(hires=[2])


def test_bn_recalibration_on_supernet_matches_extracted():
    torch.manual_seed(0)
    net = ElasticMobileNetV3(SupernetConfig.load(TINY))
    net.set_active_subnet(random_arch(net.config, random.Random(5)))
    sub = net.extract_subnet()
    imgs = (torch.rand(300, 1, *net.input_size) * 255).to(torch.uint8).numpy()
    assert recalibrate_bn(net, imgs, batch_size=100) == 300
    recalibrate_bn(sub, imgs, batch_size=100)
    assert not net.training and not sub.training
    assert int(sub.stem[1].num_batches_tracked) == 3
    x = torch.rand(4, 1, *net.input_size) * 255
    with torch.no_grad():
        assert torch.allclose(net(x), sub(x), atol=1e-4)
    # the statistics are the cumulative average over the images (momentum None), restored afterwards
    assert sub.stem[1].momentum == nn.BatchNorm2d(1).momentum


def test_config_roundtrip_and_errors(tmp_path):
    cfg = SupernetConfig.load(TINY)
    again = SupernetConfig.load(cfg.to_json())
    assert again == cfg
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert SupernetConfig.load(tmp_path) == cfg
    with pytest.raises(ModelError, match="unknown keys"):
        SupernetConfig.from_dict({"depth": [1]})
    with pytest.raises(ModelError, match="odd"):
        SupernetConfig(kernels=[3, 4])
    with pytest.raises(ModelError, match="stage 1 block 0 kernel 9"):
        canonical_arch(cfg, {"depths": [1, 1], "kernels": [[3], [9]], "expands": [[2], [2]]})
    with pytest.raises(ModelError, match="one entry per stage"):
        canonical_arch(cfg, {"depths": [1], "kernels": [[3]], "expands": [[2]]})
    with pytest.raises(ModelError, match="resolution 24"):
        canonical_arch(cfg, {"resolution": 24, "depths": [1, 1], "kernels": [[3], [3]], "expands": [[2], [2]]})
    # a full genome is trimmed to the active blocks
    a = canonical_arch(cfg, {"depths": [1, 1], "kernels": [[3, 5], [5, 3]], "expands": [[2, 3], [3, 2]]})
    assert a["kernels"] == [[3], [5]] and a["resolution"] == 28 and a["width"] == 1


def test_save_load_supernet(tmp_path):
    net = ElasticMobileNetV3(SupernetConfig.load(TINY))
    save_supernet(tmp_path / "sn", net, {"space_id": "x"})
    assert json.loads((tmp_path / "sn" / "config.json").read_text())["depths"] == [1, 2]
    net2, meta = load_supernet(tmp_path / "sn")
    assert meta["space_id"] == "x"
    x = torch.rand(2, 1, 28, 28) * 255
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net2(x))
    with pytest.raises(ModelError, match="no supernet"):
        load_supernet(tmp_path / "missing")


def test_progressive_shrinking_phases_follow_once_for_all():
    from hetsearch.cmpnas.nas.train import phase_of, restricted_space

    phases = [phase_of(e, 10, "progressive")[0] for e in range(10)]
    assert phases == ["full", "kernel", "kernel", "depth", "depth", "all", "all", "all", "all", "all"]
    assert {phase_of(e, 10, "sandwich")[0] for e in range(10)} == {"all"}
    cfg = SupernetConfig.load(TINY)
    k = restricted_space(cfg, phase_of(1, 10, "progressive")[1])
    assert k.kernels == cfg.kernels and k.depths == [2] and k.expands == [3] and k.widths == [1.0]
    assert k.resolutions == [28]
    rng = random.Random(0)
    for _ in range(20):  # every subnet sampled in the kernel phase is the largest but for its kernels
        a = random_arch(k, rng)
        assert a["depths"] == [2, 2] and a["width"] == 1 and all(e == 3 for s in a["expands"] for e in s)
    d = restricted_space(cfg, phase_of(3, 10, "progressive")[1])
    assert d.depths == cfg.depths and d.expands == [3]
