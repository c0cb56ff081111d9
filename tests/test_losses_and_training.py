import numpy as np
import pytest
import torch

from hetsearch.cmpnas import losses as L
from hetsearch.cmpnas.checkpoint import load_checkpoint, save_checkpoint
from hetsearch.cmpnas.models import build_head, build_model
from hetsearch.cmpnas.train import GallerySide, TrainConfig, augment_batch, train_query
from hetsearch.errors import ModelError


def _gallery(tmp_path, with_head=True):
    g = build_model("resnet-tiny")
    head = build_head({"embed_dim": 128, "num_classes": 10}) if with_head else None
    save_checkpoint(tmp_path / "g", g, kind="gallery", head=head)
    return load_checkpoint(tmp_path / "g")


@pytest.mark.parametrize("compat", ["independent", "bct", "l2", "contrastive", "bct-l2", "own+contrastive"])
def test_no_gradient_reaches_the_frozen_gallery(tmp_path, compat):
    ck = _gallery(tmp_path)
    side = GallerySide.from_checkpoint(ck)
    before = {k: v.clone() for k, v in side.model.state_dict().items()}
    head_before = side.head.weight.detach().clone()
    q = build_model("mbv3-tiny").train()
    own = build_head({"embed_dim": 128, "num_classes": 10})
    loss = L.build_loss(compat)
    x = torch.rand(16, 1, 28, 28) * 255
    y = torch.arange(16) % 10
    with torch.no_grad():
        g_emb = side.model(x)
    total, parts = loss(q(x), y, own_head=own, gallery_head=side.head, g_emb=g_emb)
    total.backward()
    assert set(parts) == set(loss.terms)
    assert all(p.grad is None for p in side.model.parameters())
    assert side.head.weight.grad is None
    assert not side.model.training and not side.head.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in q.parameters())
    # frozen BatchNorm statistics are untouched by the forward passes
    for k, v in side.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(side.head.weight, head_before)


def test_bct_without_gallery_classifier_says_so(tmp_path):
    with pytest.raises(ModelError, match="classifier"):
        L.build_loss("bct", gallery_has_head=False)
    assert L.build_loss("l2", gallery_has_head=False).terms == ("l2",)
    with pytest.raises(ModelError, match="unknown --compat"):
        L.build_loss("bct+nope")
    with pytest.raises(ModelError, match="unknown loss term"):
        L.parse_weights("gamma=2")


def test_loss_values_on_hand_computed_cases():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    l2 = L.build_loss("l2")
    total, parts = l2(e, torch.tensor([0, 1]), g_emb=e)
    assert parts["l2"] == 0.0
    total, parts = l2(e, torch.tensor([0, 1]), g_emb=e.flip(0))
    assert parts["l2"] == pytest.approx(2.0 * 10.0 / 10.0)  # ||e1-e2||^2 = 2, mean over batch
    assert float(total) == pytest.approx(60.0)  # default weight 30


def test_augment_keeps_shape_and_content(tmp_path):
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=1)
    assert out.shape == x.shape
    # every output pixel is either padding (0) or an input pixel of the same image (maybe flipped)
    for i in range(2):
        assert set(out[i].unique().tolist()) - {0.0} <= set(x[i].unique().tolist())


def test_training_reaches_compatibility_on_real_data(tiny_runs, fmnist_test):
    """Even a tiny, short run trains a query model that retrieves from the gallery model's embeddings far
    better than chance, and lands in the gallery's embedding space."""
    from hetsearch.cmpnas.data import stratified_sample
    from hetsearch.cmpnas.evaluate import evaluate_pair

    g, q = tiny_runs["gallery"], tiny_runs["query"]
    assert q.space_id == g.space_id and q.kind == "query"
    data = fmnist_test.subset(stratified_sample(fmnist_test.labels, 1000, 0))
    het = evaluate_pair(q, g, data, verification=False)
    assert het["recall_at_1"] > 30.0  # chance is ~10
    hist = q.meta["metrics"]["history"]
    assert len(hist) == 3 and "val_heterogeneous_r1" in hist[-1]


def test_embed_dim_mismatch_is_refused(tiny_runs, fmnist_train, tmp_path):
    with pytest.raises(ModelError, match="embedding dim"):
        train_query(fmnist_train, tiny_runs["gallery"], "mbv3-tiny", tmp_path / "q", TrainConfig(epochs=1, max_train_samples=100),
                    progress=False, embed_dim=64)


def test_resume_continues_from_last_epoch(tmp_path, fmnist_train):
    from hetsearch.cmpnas.train import train_gallery

    cfg = TrainConfig(epochs=1, max_train_samples=500, max_val_samples=100)
    train_gallery(fmnist_train, "resnet-tiny", tmp_path / "g", cfg, progress=False)
    cfg2 = TrainConfig(epochs=2, max_train_samples=500, max_val_samples=100)
    ck = train_gallery(fmnist_train, "resnet-tiny", tmp_path / "g", cfg2, resume=True, progress=False)
    hist = ck.meta["metrics"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
