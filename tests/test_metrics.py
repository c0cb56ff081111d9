import numpy as np
import pytest

from hetsearch.cmpnas.metrics import pair_scores, retrieval_metrics, tar_at_far


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_identical_embeddings_retrieve_perfectly():
    rng = np.random.default_rng(0)
    centers = _unit(rng.normal(size=(5, 32)))
    labels = np.repeat(np.arange(5), 20)
    emb = _unit(centers[labels] + 0.01 * rng.normal(size=(100, 32)))
    m = retrieval_metrics(emb, emb, labels)
    assert m["recall_at_1"] == 100.0 and m["recall_at_5"] == 100.0 and m["map_at_r"] == pytest.approx(100.0)
    assert m["n_queries"] == 100


def test_hand_computed_small_case():
    # 1-D-ish embeddings on a circle; labels a a b b
    ang = np.array([0.0, 0.1, 0.15, 3.0])
    emb = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    m = retrieval_metrics(emb, emb, labels, ks=(1, 2))
    # item0 -> nn item1 (same) ok; item1 -> item2 (0.05 away) wrong; item2 -> item1 wrong; item3 -> item2 ok
    assert m["recall_at_1"] == 50.0
    # top-2: item0 [1,2] ok; item1 [2,0] ok; item2 [1,0] no; item3 [2, ...] ok
    assert m["recall_at_2"] == 75.0
    # R = 1 for everyone: AP@R = 1 if the nearest is relevant -> mean 0.5
    assert m["map_at_r"] == pytest.approx(50.0)


def _reference(q, g, labels, k):
    """A plain loop over queries: the definition, written out."""
    hits, aps = 0, []
    for i in range(len(q)):
        sims = g @ q[i]
        order = [j for j in np.argsort(-sims, kind="stable") if j != i]
        rel = [labels[j] == labels[i] for j in order]
        hits += any(rel[:k])
        r = sum(labels == labels[i]) - 1
        if r:
            prec = [sum(rel[: n + 1]) / (n + 1) for n in range(r)]
            aps.append(sum(p for p, ok in zip(prec, rel[:r]) if ok) / r)
    return 100 * hits / len(q), 100 * np.mean(aps)


def test_map_at_r_matches_the_definition_with_partial_credit():
    # query 0 ranks an impostor first, then its two relatives: R=2, top-2 = [wrong, right] -> AP@R = 0.25
    q = _unit([[1, 0], [0, 1], [0, 1], [1, 0.01]])
    g = _unit([[1, 0], [0.8, 0.6], [0.5, 0.86], [0.99, 0.1]])
    labels = np.array([0, 0, 0, 1])
    sims = g @ q[0]
    assert np.argsort(-sims)[1] == 3
    r1, mapr = _reference(q, g, labels, 1)
    m = retrieval_metrics(q, g, labels, ks=(1,), chunk=2)
    assert m["recall_at_1"] == pytest.approx(r1) and m["map_at_r"] == pytest.approx(mapr)
    rng = np.random.default_rng(1)
    qr, gr = _unit(rng.normal(size=(60, 6))), _unit(rng.normal(size=(60, 6)))
    lab = rng.integers(0, 4, 60)
    for k in (1, 5):
        r, mp = _reference(qr, gr, lab, k)
        m = retrieval_metrics(qr, gr, lab, ks=(k,), chunk=7)
        assert m[f"recall_at_{k}"] == pytest.approx(r)
        assert m["map_at_r"] == pytest.approx(mp)


def test_leave_one_out_excludes_self():
    # without leave-one-out every query would find itself; with it, a lone item of its class can't hit
    emb = _unit([[1, 0], [0, 1], [0.1, 1]])
    m = retrieval_metrics(emb, emb, np.array([0, 1, 1]), ks=(1,))
    assert m["recall_at_1"] == pytest.approx(200 / 3)


def test_shape_and_value_errors():
    e = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="same embedding space"):
        retrieval_metrics(e, np.zeros((3, 5), np.float32), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((3, 4), np.nan, np.float32), e, np.zeros(3))
    with pytest.raises(ValueError, match="same N"):
        retrieval_metrics(e, e, np.zeros(2))


def test_tar_at_far():
    genuine = np.array([0.9, 0.8, 0.7, 0.2])
    impostor = np.linspace(0, 0.75, 1000)
    out = tar_at_far(genuine, impostor, fars=(1e-2, 1e-3))
    # FAR 1e-2: threshold is the 10th highest impostor score (~0.7425): accepts 0.9, 0.8 -> 50%
    assert out["tar_at_far_0.01"] == 50.0
    assert out["threshold_at_far_0.01"] == pytest.approx(impostor[::-1][10])
    assert out["tar_at_far_0.001"] == 50.0
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(50, 8)))
    gen, imp, n = pair_scores(emb, emb, np.arange(50) % 5)
    assert n == 50 and len(gen) == 50 * 9 and len(imp) == 50 * 40
