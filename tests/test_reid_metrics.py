"""natbench.analysis.reid_metrics against torchreid's own metrics (``torchreid.reid.metrics``, the Python
path of ``evaluate_rank`` with the Market-1501 protocol) on the same distance matrices, plus hand-derived
values where torchreid's Python path cannot run (a ragged CMC on a small gallery)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from natbench.analysis.reid_metrics import distance_matrix, market_rank

with warnings.catch_warnings():  # "Cython evaluation ... unavailable": the Python path is what we compare with
    warnings.simplefilter("ignore")
    rank = pytest.importorskip("torchreid.reid.metrics.rank")
    tr_distance = pytest.importorskip("torchreid.reid.metrics.distance")


def _problem(seed: int, num_q: int = 14, num_g: int = 90):
    """Queries of 7 ids on 2 cameras; a gallery with their cross- and same-camera images, distractors
    (pid 0), junk (pid -1), one query id present only under the query's own camera (not a valid query)."""
    rng = np.random.default_rng(seed)
    q_pids = np.repeat(np.arange(1, num_q // 2 + 1), 2)
    q_cams = np.tile([0, 1], num_q // 2)
    g_pids = rng.choice(np.concatenate([np.arange(1, num_q // 2), [0, 0, -1]]), size=num_g)  # no id num_q//2 yet
    g_cams = rng.integers(0, 6, size=num_g)
    g_pids[:2], g_cams[:2] = num_q // 2, 0  # the last id only in camera 0: its camera-0 query is invalid
    g_pids[2:4], g_cams[2:4] = 1, q_cams[0]  # same-camera matches of query 0 (removed)
    dist = rng.uniform(0, 4, size=(num_q, num_g))  # continuous: no ties
    same = q_pids[:, None] == g_pids[None, :]
    dist -= 1.5 * same * (rng.uniform(size=dist.shape) < 0.5)  # matches tend to be closer (a trained model)
    return dist.astype(np.float32), q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_market_rank_equals_torchreid_evaluate_rank(seed):
    dist, qp, gp, qc, gc = _problem(seed)
    cmc_ref, map_ref = rank.evaluate_rank(dist, qp, gp, qc, gc, max_rank=50, use_metric_cuhk03=False, use_cython=False)
    ours = market_rank(dist, qp, gp, qc, gc, max_rank=50)
    assert ours.cmc.shape == cmc_ref.shape == (50,)
    np.testing.assert_allclose(ours.cmc, cmc_ref, atol=1e-6, rtol=0)
    assert abs(ours.mAP - map_ref) < 1e-6
    # query 12 (the last id, camera 0) has only same-camera matches: skipped by both
    assert not ours.valid[12] and ours.valid.sum() == ours.num_valid == len(qp) - 1
    assert np.isnan(ours.ap[12]) and not ours.rank1[12]
    assert abs(ours.rank1[ours.valid].mean() - cmc_ref[0]) < 1e-6  # per-query flags agree with rank-1
    assert 0 < map_ref < 1 and 0 < cmc_ref[0] < 1  # a non-degenerate problem


def test_drop_junk_equals_torchreid_on_the_gallery_without_junk():
    dist, qp, gp, qc, gc = _problem(3)
    keep = gp != -1
    assert (~keep).sum() > 0 and keep.sum() > 50
    cmc_ref, map_ref = rank.evaluate_rank(dist[:, keep], qp, gp[keep], qc, gc[keep], max_rank=50,
                                          use_metric_cuhk03=False, use_cython=False)
    ours = market_rank(dist, qp, gp, qc, gc, max_rank=50, drop_junk=True)
    np.testing.assert_allclose(ours.cmc, cmc_ref, atol=1e-6, rtol=0)
    assert abs(ours.mAP - map_ref) < 1e-6
    plain = market_rank(dist, qp, gp, qc, gc, max_rank=50)  # junk ranked as a non-match: a different number
    assert abs(plain.mAP - ours.mAP) > 1e-9


def test_small_gallery_with_small_max_rank_equals_torchreid():
    dist, qp, gp, qc, gc = _problem(4, num_g=30)
    cmc_ref, map_ref = rank.evaluate_rank(dist, qp, gp, qc, gc, max_rank=10, use_metric_cuhk03=False, use_cython=False)
    ours = market_rank(dist, qp, gp, qc, gc, max_rank=10)
    np.testing.assert_allclose(ours.cmc, cmc_ref, atol=1e-6, rtol=0)
    assert abs(ours.mAP - map_ref) < 1e-6
    assert ours.rank(5) == pytest.approx(cmc_ref[4]) and ours.rank(10) == pytest.approx(cmc_ref[9])


def test_hand_derived_values_where_torchreid_is_ragged():
    # one query (pid 1, camera 0); gallery sorted by distance: [1/cam0 (removed), 2, 1/cam1, 0, 1/cam2]
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1]])
    g_pids, g_cams = np.array([1, 2, 1, 0, 1]), np.array([0, 3, 1, 2, 2])
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    out = market_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    # query 0 keeps [2, 1, 0, 1] -> matches [0, 1, 0, 1]: AP = (1/2 + 2/4) / 2 = 0.5; CMC [0, 1, 1, 1(, 1)]
    # query 1 (pid 2) sorted [1/cam2, 0, 1/cam1, 2, 1/cam0] -> matches [0, 0, 0, 1, 0]: AP = 1/4; CMC [0, 0, 0, 1, 1]
    assert out.ap.tolist() == [0.5, 0.25] and out.mAP == 0.375
    assert out.cmc.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0] and out.rank1.tolist() == [False, False]
    assert out.rank(1) == 0.0 and out.rank(10) == 1.0
    with pytest.raises(ValueError):  # torchreid's Python path: rows of length 4 and 5 (ragged)
        rank.evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50, use_metric_cuhk03=False, use_cython=False)


def test_no_valid_query_gives_nan_metrics():
    out = market_rank(np.array([[0.1, 0.2]]), np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 1]))
    assert out.num_valid == 0 and np.isnan(out.mAP) and np.isnan(out.cmc).all() and not out.rank1.any()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distance_matrix_equals_torchreid(metric):
    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(7, 16, generator=g), torch.randn(11, 16, generator=g)
    ours = distance_matrix(qf, gf, metric)
    torch.testing.assert_close(ours, tr_distance.compute_distance_matrix(qf, gf, metric), rtol=0, atol=1e-6)
    if metric == "euclidean":  # squared Euclidean, as torchreid
        torch.testing.assert_close(ours, torch.cdist(qf, gf) ** 2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        distance_matrix(qf, gf, "manhattan")
