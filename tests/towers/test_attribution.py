"""towers.attribution: a query vector split over the history positions, for every pooling,
both combinations, both similarities, an ensemble with a popularity prior; an MLP refused."""

import pytest
import torch
import torch.nn.functional as F

from towers import FeatureSpec, ItemTower, Scorer, TowerConfig, UserTower
from towers.attribution import NotExplainable, history_terms
from towers.inputs import TowerInput

NUM_ITEMS, NUM_USERS, DIM, LENGTH = 9, 4, 6, 5
USER_ID = TowerInput("user_id", "id", "index", rows=NUM_USERS)
ITEM_ID = TowerInput("item_id", "id", "index", rows=NUM_ITEMS)
AGE = TowerInput("age", "numeric", "index", rows=3)
HISTORIES = torch.tensor(
    [[1, 4, 4, 7, 2], [-1, -1, 3, 8, 0], [-1, -1, -1, -1, -1], [5, -1, 6, -1, 2]]
)
USERS = torch.tensor([0, 1, 2, -1])  # the last one: no id row


def scorer(pooling="mean", combine="sum", similarity="cosine", members=1, prior=0.0, mlp=0):
    history = TowerInput(
        "history", "history", "history", rows=NUM_ITEMS, width=LENGTH, pooling=pooling
    )
    spec = FeatureSpec((USER_ID, history, AGE), (ITEM_ID,), NUM_USERS, NUM_ITEMS, combine)
    towers = []
    for m in range(members):
        torch.manual_seed(m)
        cfg = TowerConfig(embedding_dim=DIM, similarity=similarity, init_std=0.5, mlp_layers=mlp)
        towers.append((UserTower(spec, cfg).eval(), ItemTower(spec, cfg).eval()))
    counts = torch.arange(NUM_ITEMS) % 4
    return Scorer(towers, popularity_prior=prior, item_counts=counts if prior else None)


def inputs(histories=HISTORIES):
    return {"user_id": USERS, "history": histories, "age": torch.tensor([0, 1, 2, 1])}


@pytest.mark.parametrize("pooling", ["mean", "attention", "last"])
@pytest.mark.parametrize("combine", ["sum", "concat"])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_the_terms_and_the_rest_make_the_query_vector(pooling, combine, similarity):
    """queries is what encode_users gives; less the terms, what is left is the vector of the
    same users with an empty history (its direction, under cosine: the scale is the user's)."""
    model = scorer(pooling, combine, similarity)
    split = history_terms(model, inputs())
    torch.testing.assert_close(split.queries, model.encode_users(inputs()))
    assert split.terms.shape == (len(USERS), LENGTH, DIM) and split.width == DIM
    assert (split.terms[HISTORIES < 0] == 0).all()  # padding adds nothing
    rest = split.queries - split.terms.sum(1)
    without = model.encode_users(inputs(torch.full_like(HISTORIES, -1)))
    if similarity == "cosine":
        rest = F.normalize(rest, dim=1)
    torch.testing.assert_close(rest, without, atol=1e-5, rtol=1e-4)


def test_last_pooling_puts_the_history_on_the_latest_item():
    split = history_terms(scorer("last", similarity="dot"), inputs())
    nonzero = split.terms.abs().sum(2) > 0  # (B, L)
    assert nonzero.tolist() == [
        [False, False, False, False, True],
        [False, False, False, False, True],
        [False] * 5,
        [False, False, False, False, True],
    ]


def test_mean_pooling_terms_by_hand():
    """Dot, sum: position l of a user with n items adds (1 - gate) / n * W e_l."""
    model = scorer("mean", similarity="dot")
    ((user, _),) = model.members
    history = user.encoders["history"]
    gate = torch.sigmoid(user.gate_logit)
    split = history_terms(model, inputs())
    rows = history.table.weight[HISTORIES[0]]  # (L, D)
    expected = (1 - gate) / LENGTH * rows @ history.projection.weight.T
    torch.testing.assert_close(split.terms[0], expected)


def test_an_ensemble_with_a_prior_splits_over_the_members_coordinates():
    model = scorer("attention", members=2, prior=0.3)
    split = history_terms(model, inputs())
    assert split.width == 2 * DIM and split.queries.shape == (len(USERS), 2 * DIM + 2)
    torch.testing.assert_close(split.queries, model.encode_users(inputs()))
    without = model.encode_users(inputs(torch.full_like(HISTORIES, -1)))
    rest = split.queries[:, : 2 * DIM] - split.terms.sum(1)
    for half in (slice(0, DIM), slice(DIM, 2 * DIM)):  # each member's part, unit / sqrt(2)
        torch.testing.assert_close(
            F.normalize(rest[:, half], dim=1), F.normalize(without[:, half], dim=1),
            atol=1e-5, rtol=1e-4,
        )  # fmt: skip


def test_a_residual_mlp_is_refused():
    with pytest.raises(NotExplainable, match="residual MLP"):
        history_terms(scorer(mlp=1), inputs())


def test_a_tower_without_a_history_has_no_positions():
    spec = FeatureSpec((USER_ID, AGE), (ITEM_ID,), NUM_USERS, NUM_ITEMS)
    cfg = TowerConfig(embedding_dim=DIM)
    model = Scorer([(UserTower(spec, cfg).eval(), ItemTower(spec, cfg).eval())])
    given = {"user_id": USERS, "age": torch.tensor([0, 1, 2, 1])}
    split = history_terms(model, given)
    assert split.terms.shape == (len(USERS), 0, DIM)
    torch.testing.assert_close(split.queries, model.encode_users(given))
