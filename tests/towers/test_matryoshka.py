"""towers/matryoshka.py: the Matryoshka loss against the loss computed by hand on each prefix,
a planted case where only the prefix tells two representations apart, and the settings'
errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from towers import ConfigError, CosineContrastiveLoss, SampledSoftmaxLoss, Similarity
from towers.matryoshka import Matryoshka, MatryoshkaError, check_dim, prefix

B, M, D = 6, 5, 16


def _raw(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unnormalised tower outputs: users (B, D), their positives (B, D), extra negatives (M, D)."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, D, generator=generator) for n in (B, B, M))


ITEMS = torch.tensor([0, 1, 2, 3, 1, 5])  # item 1 twice: an accidental hit in the batch
NEGATIVES = torch.tensor([7, 2, 8, 9, 10])  # item 2 among the extra negatives
LOG_Q = torch.linspace(-2.0, 0.5, B)
NEGATIVE_LOG_Q = torch.full((M,), math.log(M / 20))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("loss_name", ["sampled_softmax", "cosine_contrastive"])
def test_the_loss_is_the_weighted_sum_of_the_loss_on_each_renormalised_prefix(
    similarity, loss_name
):
    """The towers' outputs (unit vectors for cosine) into the Matryoshka loss; by hand, the
    loss on the first d coordinates of the UNnormalised outputs, renormalised for cosine."""
    sim = Similarity.parse(similarity)
    users, items, negatives = _raw(0)
    if loss_name == "sampled_softmax":
        loss = SampledSoftmaxLoss(temperature=0.2)
        extra = {"negatives": NEGATIVES, "item_log_q": LOG_Q, "negative_log_q": NEGATIVE_LOG_Q}
    else:
        loss = CosineContrastiveLoss(margin=0.3, negative_weight=2.0)
        extra = {"negatives": NEGATIVES}
    matryoshka = Matryoshka.parse([4, 8], [0.5, 2.0, 1.0], D, similarity)
    assert matryoshka.dims == (4, 8, 16) and matryoshka.prefixes == (4, 8)
    got = matryoshka.loss(
        matryoshka.losses(loss),
        sim.prepare(users),
        sim.prepare(items),
        ITEMS,
        sim.prepare(negatives),
        **extra,
    )

    def cut(x: torch.Tensor, d: int) -> torch.Tensor:
        return F.normalize(x[:, :d], dim=1) if similarity == "cosine" else x[:, :d]

    expected = sum(
        weight
        * loss(cut(users, d), cut(items, d), ITEMS, negative_vectors=cut(negatives, d), **extra)
        for d, weight in ((4, 0.5), (8, 2.0), (16, 1.0))
    )
    torch.testing.assert_close(got, expected)


def test_listing_the_full_dimension_trains_it_once_and_equal_weights_are_the_default():
    users, items, _ = _raw(1)
    users, items = F.normalize(users, dim=1), F.normalize(items, dim=1)
    loss = SampledSoftmaxLoss(logq_correction=False)
    listed = Matryoshka.parse([8, 16], None, D, "cosine")
    assert listed == Matryoshka.parse([8], [1.0, 1.0], D, "cosine")
    expected = loss(prefix(users, 8, Similarity.COSINE), prefix(items, 8, Similarity.COSINE), ITEMS)
    expected = expected + loss(users, items, ITEMS)
    torch.testing.assert_close(listed.loss(listed.losses(loss), users, items, ITEMS), expected)


def test_only_the_matryoshka_loss_sees_a_signal_carried_by_the_prefix():
    """Planted: each user's positive agrees with it on the first 8 coordinates (a one-hot of the
    user), the other 8 are noise. Rotating every vector by one orthogonal matrix keeps every
    full-vector inner product, so the plain loss cannot tell the two apart; the Matryoshka
    loss, whose 8-dim term reads the prefix that carries the signal, is lower on the planted
    vectors than on the rotated ones."""
    generator = torch.Generator().manual_seed(0)
    signal = 3.0 * torch.eye(8)[:B]  # (B, 8)
    items = torch.arange(B)
    users = torch.cat([signal, torch.randn(B, D - 8, generator=generator)], 1)  # (B, D)
    positives = torch.cat([signal, torch.randn(B, D - 8, generator=generator)], 1)
    rotation, _ = torch.linalg.qr(torch.randn(D, D, generator=generator))  # (D, D) orthogonal
    loss = SampledSoftmaxLoss(temperature=0.1, logq_correction=False)
    matryoshka = Matryoshka.parse([8], None, D, "cosine")

    def both(u: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = F.normalize(u, dim=1), F.normalize(i, dim=1)
        return loss(u, i, items), matryoshka.loss(matryoshka.losses(loss), u, i, items)

    plain, nested = both(users, positives)
    plain_rotated, nested_rotated = both(users @ rotation, positives @ rotation)
    torch.testing.assert_close(plain, plain_rotated)
    assert nested < nested_rotated - 0.5
    cosine = Similarity.COSINE
    prefix_term = loss(prefix(users, 8, cosine), prefix(positives, 8, cosine), items)
    torch.testing.assert_close(nested, prefix_term + plain)
    assert prefix_term < 0.01  # the prefix alone ranks every positive far ahead


@pytest.mark.parametrize(
    ("prefixes", "weights", "setting", "reason"),
    [
        ([8, 4], None, "model.matryoshka", "increasing"),
        ([0, 4], None, "model.matryoshka", "positive"),
        ([4, 32], None, "model.matryoshka", "embedding_dim=16"),
        ([4.5], None, "model.matryoshka", "whole numbers"),
        ([4, 8], [1.0, 1.0], "model.matryoshka_weights", "expected 3 weights"),
        ([4], [1.0, -1.0], "model.matryoshka_weights", "non-negative"),
        ([4], [0.0, 0.0], "model.matryoshka_weights", "not all zero"),
        ([4], 2.0, "model.matryoshka_weights", "expected 2 weights"),  # one number
        ([4], ["a", 1.0], "model.matryoshka_weights", "finite non-negative"),
        ([], [1.0], "model.matryoshka_weights", "without model.matryoshka"),
    ],
)
def test_bad_settings_name_the_setting_and_what_is_wrong(prefixes, weights, setting, reason):
    with pytest.raises(MatryoshkaError, match=reason) as raised:
        Matryoshka.parse(prefixes, weights, D, "cosine")
    assert raised.value.setting == setting


def test_a_prefix_with_loss_settings_trains_with_a_loss_of_the_same_class_changed():
    """model.matryoshka_loss=[{negative_weight: 5}, null]: the 4-dim term is CCL with weight 5,
    the others the run's loss itself (the same object), summed by hand."""
    users, items, negatives = (F.normalize(x, dim=1) for x in _raw(2))
    loss = CosineContrastiveLoss(margin=0.3, negative_weight=2.0)
    matryoshka = Matryoshka.parse([4, 8], None, D, "cosine", 0, [{"negative_weight": 5.0}, None])
    assert matryoshka.loss_settings == ({"negative_weight": 5.0}, {})
    four, eight, full = matryoshka.losses(loss)
    assert isinstance(four, CosineContrastiveLoss) and four.settings == {
        "margin": 0.3, "negative_weight": 5.0}  # fmt: skip
    assert eight is loss and full is loss
    extra = {"negatives": NEGATIVES}
    got = matryoshka.loss([four, eight, full], users, items, ITEMS, negatives, **extra)
    cosine = Similarity.COSINE
    by_hand = CosineContrastiveLoss(margin=0.3, negative_weight=5.0)
    expected = by_hand(
        prefix(users, 4, cosine), prefix(items, 4, cosine), ITEMS,
        negative_vectors=prefix(negatives, 4, cosine), **extra,
    ) + loss(
        prefix(users, 8, cosine), prefix(items, 8, cosine), ITEMS,
        negative_vectors=prefix(negatives, 8, cosine), **extra,
    ) + loss(users, items, ITEMS, negative_vectors=negatives, **extra)  # fmt: skip
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, matryoshka.loss([loss] * 3, users, items, ITEMS, negatives,
                                                   **extra))  # fmt: skip


@pytest.mark.parametrize(
    ("prefixes", "changes", "setting"),
    [
        ([4], [{"temperature": 0.5}, {}], "model.matryoshka_loss"),  # two for one prefix
        ([4], {"temperature": 0.5}, "model.matryoshka_loss"),  # not a list
        ([4], [0.5], "model.matryoshka_loss"),
        ([4], 0.5, "model.matryoshka_loss"),  # one number
        ([], [{"temperature": 0.5}], "model.matryoshka_loss"),  # without model.matryoshka
    ],
)
def test_bad_loss_settings_are_named(prefixes, changes, setting):
    with pytest.raises(MatryoshkaError) as raised:
        Matryoshka.parse(prefixes, None, D, "cosine", 0, changes)
    assert raised.value.setting == setting


@pytest.mark.parametrize(
    ("changes", "setting", "value"),
    [
        ({"margin": 0.5}, "model.matryoshka_loss[0].margin", 0.5),  # softmax has no margin
        ({"temperature": 0.0}, "model.matryoshka_loss[0].temperature", 0.0),
    ],
)
def test_a_loss_setting_the_class_refuses_names_the_prefix(changes, setting, value):
    matryoshka = Matryoshka.parse([4], None, D, "cosine", 0, [changes])
    with pytest.raises(ConfigError) as raised:
        matryoshka.losses(SampledSoftmaxLoss())
    assert raised.value.setting == setting and raised.value.value == value


def test_a_prefix_serves_with_its_own_prior_or_the_models():
    """model.matryoshka_prior=[0.002, null]: the 4-dim prefix's own prior; the 8-dim prefix,
    the full vector and a dimension that is no prefix keep the model's."""
    matryoshka = Matryoshka.parse([4, 8], None, D, "cosine", 0, None, [0.002, None])
    assert matryoshka.priors == (0.002, None)
    assert [matryoshka.prior(d, 0.0005) for d in (4, 8, None, D, 5)] == [
        0.002, 0.0005, 0.0005, 0.0005, 0.0005]  # fmt: skip
    assert Matryoshka.parse([4], None, D, "cosine").prior(4, 0.0005) == 0.0005


@pytest.mark.parametrize(
    ("prefixes", "priors"),
    [
        ([4, 8], [0.002]),  # one for two prefixes
        ([4], 0.002),  # not a list
        ([4], {"prior": 0.002}),
        ([4], [float("nan")]),
        ([4], [True]),
        ([4], ["0.002"]),
        ([], [0.002]),  # without model.matryoshka
    ],
)
def test_bad_priors_are_named(prefixes, priors):
    with pytest.raises(MatryoshkaError) as raised:
        Matryoshka.parse(prefixes, None, D, "cosine", 0, None, priors)
    assert raised.value.setting == "model.matryoshka_prior"


@pytest.mark.parametrize(("prefixes", "warmup"), [([4], -1), ([4], 1.5), ([4], True), ([], 2)])
def test_a_bad_warmup_names_its_setting(prefixes, warmup):
    with pytest.raises(MatryoshkaError) as raised:
        Matryoshka.parse(prefixes, None, D, "cosine", warmup)
    assert raised.value.setting == "model.matryoshka_warmup" and raised.value.value == warmup


def test_the_prefixes_train_from_the_end_of_the_warmup():
    matryoshka = Matryoshka.parse([4], None, D, "cosine", warmup=2)
    assert [matryoshka.trains_prefixes(epoch) for epoch in range(4)] == [False, False, True, True]
    assert Matryoshka.parse([4], None, D, "cosine").trains_prefixes(0)


def test_no_prefixes_is_no_matryoshka_loss_and_a_served_dim_is_checked():
    assert Matryoshka.parse([], None, D, "cosine") is None
    assert check_dim(None, D) is None and check_dim(D, D) == D
    for bad in (0, D + 1, 2.5, True):
        with pytest.raises(MatryoshkaError, match=r"export\.dim") as raised:
            check_dim(bad, D)
        assert raised.value.value == bad
