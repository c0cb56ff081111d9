"""bench_layout: its draws are fixed, within the budget window and of the asked layout; bad layouts are refused."""

import pytest

from benchmarks import bench_layout
from hetsearch.cmpnas.flops import count_macs
from hetsearch.cmpnas.models import build_model
from hetsearch.cmpnas.nas.space import arch_to_spec
from hetsearch.errors import HetsearchError


@pytest.mark.parametrize("layout, hires, size", [("hires0", 0, 28), ("hires1", 1, 28), ("hires1-end4", 1, 28)])
def test_draws_are_fixed_and_inside_the_window_with_the_layout_asked(layout, hires, size):
    a = bench_layout.draws(0.401, layout, 3)
    assert a == bench_layout.draws(0.401, layout, 3)  # the same subnets on every run: finished ones are reused
    assert len({str(arch) for arch, _ in a}) == 3
    for arch, mm in a:
        assert arch["hires"] == hires and arch["resolution"] == size
        assert 0.9 * 0.401 <= mm <= 0.401
        # the cost the window was judged on is the extracted model's own
        assert abs(count_macs(build_model(arch_to_spec(bench_layout.layout_space(layout), arch))) / 1e6 - mm) < 1e-6


def test_the_end4_layout_keeps_4x4_in_its_last_stage():
    arch, _ = bench_layout.draws(1.299, "hires1-end4", 1)[0]
    model = build_model(arch_to_spec(bench_layout.layout_space("hires1-end4"), arch))
    import torch

    sizes = []
    x = torch.zeros(2, 1, 28, 28)
    x = model.stem(x)
    for block in model.blocks:
        x = block(x)
        sizes.append(x.shape[-1])
    assert sizes[-1] == 4 and sizes[0] == 14  # ends at 4x4 (default space: 2x2), first block at 14x14
    default, _ = bench_layout.draws(1.299, "hires1", 1)[0]
    x = torch.zeros(2, 1, 28, 28)
    m = build_model(arch_to_spec(bench_layout.layout_space("hires1"), default))
    assert m.blocks(m.stem(x)).shape[-1] == 2


def test_a_budget_no_subnet_of_the_layout_fits_is_an_error():
    with pytest.raises(HetsearchError, match="fewer than 2 random subnets"):
        bench_layout.draws(0.12, "hires1", 2)  # the 14x14 layout's smallest subnet costs 0.150 MMACs


def test_unknown_layouts_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench_layout.parse_args(["--gallery", "g", "--layouts", "hires0,res36"])
    assert "unknown layout(s) ['res36']" in capsys.readouterr().err


def test_welch_difference_and_standard_error():
    d, se = bench_layout.welch([90.0, 90.4, 89.8], [89.0, 89.2, 89.4])
    assert d == pytest.approx(0.8666667, abs=1e-6)
    assert se == pytest.approx(((0.0933333 / 3) + (0.04 / 3)) ** 0.5, abs=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--seed-spread", "1,x"], "--seed-spread takes a comma list of integer seeds"),
    (["--seed-spread", "0,1"], "--seed-spread repeats the training seed 0"),
    (["--seed-spread", "1", "--spread-layout", "res36"], "unknown --spread-layout 'res36'"),
    (["--seed-spread", "1", "--layouts", "hires0"], "--spread-layout hires1 is not among --layouts hires0"),
])
def test_bad_seed_spread_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench_layout.parse_args(["--gallery", "g", *argv])
    assert message in capsys.readouterr().err


def test_seed_spread_is_parsed():
    assert bench_layout.parse_args(["--gallery", "g", "--seed-spread", "1, 2"]).spread_seeds == [1, 2]
    assert bench_layout.parse_args(["--gallery", "g"]).spread_seeds == []
