import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hetsearch.cmpnas import losses as L
from hetsearch.cmpnas.checkpoint import import_gallery, load_checkpoint, save_checkpoint
from hetsearch.cmpnas.models import build_head, build_model
from hetsearch.cmpnas.train import TrainConfig, train_query
from hetsearch.errors import ModelError
from hetsearch.space import parse_space_id

sys.path.insert(0, str(Path(__file__).parent))


def test_round_trip_spec_weights_head_space_and_config(tmp_path):
    m = build_model("mbv3-small").eval()
    with torch.no_grad():  # non-trivial BN statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
    head = build_head({"embed_dim": 128, "num_classes": 7, "scale": 20.0, "margin": 0.2, "margin_type": "arcface"})
    g = build_model("resnet-tiny")
    save_checkpoint(tmp_path / "g", g, kind="gallery")
    gspace = load_checkpoint(tmp_path / "g").space_id
    save_checkpoint(tmp_path / "q", m, kind="query", head=head, space_id=gspace,
                    train_config={"epochs": 3, "compat": "bct-l2"}, classes=list("abcdefg"))
    ck = load_checkpoint(tmp_path / "q")
    x = torch.rand(4, 1, 28, 28) * 255
    assert torch.equal(ck.model(x), m(x))
    assert ck.spec == m.spec and ck.kind == "query" and ck.space_id == gspace
    assert ck.head.config == head.config and torch.equal(ck.head.weight, head.weight)
    assert ck.meta["train_config"]["compat"] == "bct-l2" and ck.meta["classes"][0] == "a"
    assert json.loads((tmp_path / "q" / "meta.json").read_text())["space_id"] == gspace
    assert parse_space_id(gspace)["dim"] == 128


def test_gallery_space_id_follows_content(tmp_path):
    a = build_model("resnet-tiny")
    save_checkpoint(tmp_path / "a", a, kind="gallery")
    save_checkpoint(tmp_path / "a2", a, kind="gallery")
    torch.manual_seed(123)
    b = build_model("resnet-tiny")
    save_checkpoint(tmp_path / "b", b, kind="gallery")
    sa, sa2, sb = (load_checkpoint(tmp_path / n).space_id for n in ("a", "a2", "b"))
    assert sa == sa2 and sa != sb


def test_corrupt_and_wrong_checkpoints(tmp_path):
    with pytest.raises(ModelError, match="no hetsearch checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)
    q = build_model("mbv3-tiny")
    save_checkpoint(tmp_path / "q", q, kind="query", space_id="sp1-d128-n-" + "0" * 20)
    with pytest.raises(ModelError, match="holds a query model"):
        load_checkpoint(tmp_path / "q", expect_kind="gallery")
    # a gallery file whose weights were changed after saving no longer matches its space id
    save_checkpoint(tmp_path / "g", build_model("resnet-tiny"), kind="gallery")
    payload = torch.load(tmp_path / "g" / "checkpoint.pt", weights_only=False)
    key = next(k for k in payload["state_dict"] if k.endswith("weight"))
    payload["state_dict"][key] = payload["state_dict"][key] + 1
    torch.save(payload, tmp_path / "g" / "checkpoint.pt")
    with pytest.raises(ModelError, match="do not match the recorded embedding space"):
        load_checkpoint(tmp_path / "g")


def test_bring_your_own_gallery_torchscript_export_and_factory(tmp_path, fmnist_train):
    import byo_gallery_factory as f

    net = f.make_gallery().eval()
    ts = tmp_path / "mine.pt"
    torch.jit.script(net).save(str(ts))
    ck = import_gallery(str(ts), tmp_path / "ts", input_size=28, in_channels=1)
    x = torch.rand(3, 1, 28, 28) * 255
    ref = torch.nn.functional.normalize(net(x / 255.0), dim=1)
    assert ck.model.embed_dim == 12 and ck.head is None
    assert torch.allclose(ck.model(x), ref, atol=1e-5)
    again = load_checkpoint(tmp_path / "ts")
    assert torch.allclose(again.model(x), ref, atol=1e-5) and again.space_id == ck.space_id

    ep = tmp_path / "mine.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 1, 28, 28),)), str(ep))
    ck2 = import_gallery(str(ep), tmp_path / "ep", input_size=28, in_channels=1)
    assert torch.allclose(ck2.model(x), ref, atol=1e-5)  # exported at batch 1, run per image

    ck3 = import_gallery("byo_gallery_factory:make_gallery_with_classifier", tmp_path / "fac")
    assert ck3.head is not None and ck3.head.weight.shape == (10, 12)
    assert torch.allclose(load_checkpoint(tmp_path / "fac").model(x), ck3.model(x))

    # without a classifier bct is unavailable and says so; l2 works
    cfg = TrainConfig(epochs=1, max_train_samples=200, max_val_samples=50, compat="bct")
    with pytest.raises(ModelError, match="classifier"):
        train_query(fmnist_train, tmp_path / "ts", "mbv3-tiny", tmp_path / "q", cfg, progress=False)
    cfg.compat = "l2"
    q = train_query(fmnist_train, tmp_path / "ts", "mbv3-tiny", tmp_path / "q", cfg, progress=False)
    assert q.model.embed_dim == 12 and q.space_id == ck.space_id


def test_import_rejects_bad_models(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match="neither a TorchScript"):
        import_gallery(str(tmp_path / "junk.pt"), tmp_path / "out")
    with pytest.raises(ModelError, match="cannot import"):
        import_gallery("no_such_module_xyz:factory", tmp_path / "out")
