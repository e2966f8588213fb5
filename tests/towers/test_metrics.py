import math

import pytest
import torch

from towers.metrics import RankingMetrics, hits, metric_name, metric_sums
from towers.ranking import exact_top_k


def test_metric_names_are_made_in_one_place():
    assert metric_name("recall", 20, "val") == "val/recall@20"
    assert metric_name("ndcg", 10) == "ndcg@10"


def test_hand_computed_values():
    top = torch.tensor([[3, 1, 4, 5], [9, 8, 7, 6]])
    relevant = torch.tensor([[1, 5, 2], [0, -1, -1]])
    h = hits(top, relevant)
    assert h.tolist() == [[False, True, False, True], [False, False, False, False]]
    sums = metric_sums(h, torch.tensor([3, 1]), ks=(2, 4))
    assert sums["recall@2"] == pytest.approx(1 / 3)
    assert sums["recall@4"] == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert sums["ndcg@4"] == pytest.approx(dcg / idcg)
    assert sums["hit_rate@2"] == 1.0
    assert sums["mrr@4"] == pytest.approx(0.5)


def test_unknown_held_out_items_count_in_the_denominator():
    metrics = RankingMetrics(ks=(2,))
    # The user has 2 held-out items; one is unknown to the model (-1), the other is ranked first.
    metrics.update(torch.tensor([[4, 5]]), torch.tensor([[4, -1]]), torch.tensor([2]))
    out = metrics.compute("test")
    assert out["test/recall@2"] == pytest.approx(0.5)
    assert out["test/ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_means_over_chunks_equal_the_mean_over_all_users():
    metrics = RankingMetrics(ks=(1,))
    metrics.update(torch.tensor([[1]]), torch.tensor([[1]]), torch.tensor([1]))
    metrics.update(torch.tensor([[2], [3]]), torch.tensor([[9], [3]]), torch.tensor([1, 1]))
    assert metrics.compute()["recall@1"] == pytest.approx(2 / 3)


def test_exact_top_k_excludes_seen_items():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    seen = torch.tensor([[0, -1], [2, 3]])
    scores, top = exact_top_k(users, items, k=2, seen=seen)
    assert top.tolist() == [[1, 3], [1, 0]]
    assert torch.isfinite(scores).all()
    _, unmasked = exact_top_k(users, items, k=1)
    assert unmasked.tolist() == [[0], [2]]
