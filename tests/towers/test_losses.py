import math

import pytest
import torch
import torch.nn.functional as F

from towers import SampledSoftmaxLoss


def _manual(users, items, ids, log_q, temperature):
    logits = users @ items.T / temperature - log_q
    for i in range(len(ids)):
        for j in range(len(ids)):
            if i != j and ids[i] == ids[j]:
                logits[i, j] = -math.inf
    return F.cross_entropy(logits, torch.arange(len(ids)))


def test_matches_a_hand_written_softmax_with_logq_and_accidental_hits():
    g = torch.Generator().manual_seed(0)
    users = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    items = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    ids = torch.tensor([1, 2, 1, 3])  # item 1 twice: an accidental hit for rows 0 and 2
    log_q = torch.log(torch.tensor([0.5, 0.2, 0.5, 0.1]) * 4)
    loss = SampledSoftmaxLoss(temperature=0.1)(users, items, ids, item_log_q=log_q)
    torch.testing.assert_close(loss, _manual(users, items, ids, log_q, 0.1))


def test_accidental_hits_are_masked():
    users = torch.eye(2)
    items = torch.eye(2)[[0, 0]]  # both rows' positive is the same item vector
    ids = torch.tensor([5, 5])
    loss = SampledSoftmaxLoss(temperature=1.0, logq_correction=False)(users, items, ids)
    # Every other candidate is masked, so each row's softmax is over its positive alone.
    torch.testing.assert_close(loss, torch.tensor(0.0))


def test_extra_negatives_add_candidates_and_mask_the_positive_among_them():
    users = torch.eye(2)
    items = torch.eye(2)
    ids = torch.tensor([0, 1])
    loss_fn = SampledSoftmaxLoss(temperature=1.0, logq_correction=False)
    base = loss_fn(users, items, ids)
    negatives = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    with_negs = loss_fn(users, items, ids, negatives, torch.tensor([7, 0]))
    assert with_negs > base  # more competition
    # Negative id 0 equals row 0's positive: it is masked for row 0 but not for row 1.
    logits = users @ torch.cat([items, negatives]).T
    logits[0, 3] = -math.inf
    torch.testing.assert_close(with_negs, F.cross_entropy(logits, torch.arange(2)))


def test_logq_correction_lowers_the_pull_of_popular_items():
    users = torch.eye(2)
    items = torch.eye(2)
    ids = torch.tensor([0, 1])
    loss_fn = SampledSoftmaxLoss(temperature=1.0)
    even = loss_fn(users, items, ids, item_log_q=torch.log(torch.tensor([1.0, 1.0])))
    skewed = loss_fn(users, items, ids, item_log_q=torch.log(torch.tensor([1.9, 0.1])))
    assert not torch.isclose(even, skewed)


def test_learned_temperature_is_a_parameter_and_reported():
    loss_fn = SampledSoftmaxLoss(temperature=0.05, learn_temperature=True)
    assert loss_fn.log_scale.requires_grad
    assert abs(loss_fn.temperature - 0.05) < 1e-6


def test_cosine_contrastive_loss_matches_its_formula():
    from towers import CosineContrastiveLoss

    users = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    items = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=1)
    negatives = F.normalize(torch.tensor([[1.0, 0.1], [-1.0, 0.0]]), dim=1)
    ids, neg_ids = torch.tensor([3, 4]), torch.tensor([8, 3])
    loss_fn = CosineContrastiveLoss(margin=0.5, negative_weight=2.0)
    got = loss_fn(users, items, ids, negatives, neg_ids, in_batch=False)
    positive = (users * items).sum(1)
    penalty = F.relu(users @ negatives.T - 0.5)
    penalty[0, 1] = 0.0  # negative 3 is row 0's own positive
    expected = (1 - positive).mean() + 2.0 * (penalty.sum(1) / 2).mean()
    torch.testing.assert_close(got, expected)
    # In-batch: the other row's positive joins the candidates; the row's own column does not count.
    with_batch = loss_fn(users, items, ids, negatives, neg_ids, in_batch=True)
    cands = torch.cat([items, negatives])
    penalty = F.relu(users @ cands.T - 0.5)
    penalty[0, 0] = penalty[1, 1] = 0.0
    penalty[0, 3] = 0.0
    torch.testing.assert_close(
        with_batch, (1 - positive).mean() + 2.0 * (penalty.sum(1) / 3).mean()
    )


def test_softmax_without_in_batch_negatives_uses_the_positive_and_the_extra_negatives():
    users = torch.eye(2)
    items = torch.eye(2)
    negatives = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss_fn = SampledSoftmaxLoss(temperature=1.0, logq_correction=False)
    got = loss_fn(
        users,
        items,
        torch.tensor([0, 1]),
        negatives,
        torch.tensor([1, 5]),
        in_batch=False,
    )
    logits = torch.tensor(
        [[1.0, 0.0, 1.0], [1.0, -math.inf, 0.0]]
    )  # row 1: negative id 1 is its positive
    torch.testing.assert_close(got, F.cross_entropy(logits, torch.zeros(2, dtype=torch.long)))


def test_logq_correction_without_the_log_q_is_named():
    loss_fn = SampledSoftmaxLoss()
    users = items = torch.eye(2)
    ids = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="logq_correction needs item_log_q"):
        loss_fn(users, items, ids)
    with pytest.raises(ValueError, match="and negative_log_q with extra negatives"):
        loss_fn(users, items, ids, items, ids, item_log_q=torch.zeros(2))
    assert loss_fn.corrects_sampling_bias
    assert not SampledSoftmaxLoss(logq_correction=False).corrects_sampling_bias
