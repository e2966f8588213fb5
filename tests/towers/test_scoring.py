"""The served score (towers.scoring): ensembles and the popularity prior, checked against the
members' own scores computed apart."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from towers import FeatureSpec, ItemTower, Scorer, TowerConfig, UserTower
from towers.inputs import TowerInput
from towers.matryoshka import MatryoshkaError
from towers.scoring import PRIOR_DIMS, log_popularity

USER_INPUTS = (
    TowerInput("user_id", "id", "index", rows=6),
    TowerInput("history", "history", "history", rows=9, width=4, pooling="mean"),
)
ITEM_INPUTS = (
    TowerInput("item_id", "id", "index", rows=9),
    TowerInput("genres", "multi_hot", "bag", rows=4, width=2, pooling="mean"),  # 3 genres, pad 3
    TowerInput("year", "numeric", "index", rows=5),  # 4 buckets, then missing
)
SPEC = FeatureSpec(USER_INPUTS, ITEM_INPUTS, num_users=6, num_items=9)
USERS = {
    "user_id": torch.tensor([0, 3, 5]),
    "history": torch.tensor([[1, 2, -1, -1], [4, 5, 6, 8], [-1, -1, -1, -1]]),  # last: none
}
ITEMS = {
    "item_id": torch.arange(9),
    "genres": torch.tensor([[0, 3], [1, 2], [3, 3]] * 3),
    "year": torch.tensor([0, 1, 2] * 3),
}
ROWS = torch.arange(9)  # the items' catalogue rows
COUNTS = torch.tensor([3, 0, 1, 7, 2, 2, 0, 1, 5])


def member(cfg: TowerConfig, seed: int) -> tuple[UserTower, ItemTower]:
    torch.manual_seed(seed)
    return UserTower(SPEC, cfg).eval(), ItemTower(SPEC, cfg).eval()


def scores(user: UserTower, item: ItemTower) -> torch.Tensor:
    with torch.no_grad():
        return user(USERS) @ item(ITEMS).T


def served(scorer: Scorer) -> torch.Tensor:
    with torch.no_grad():
        return scorer.encode_users(USERS) @ scorer.encode_items(ITEMS, ROWS).T


@pytest.mark.parametrize(
    "cfg",
    [
        TowerConfig(embedding_dim=4),
        TowerConfig(embedding_dim=4, history_gate=None, history_projection=False),
        TowerConfig(embedding_dim=4, mlp_layers=1),  # members need not be mergeable tables
    ],
)
def test_an_ensemble_of_cosine_members_scores_the_mean_of_their_cosines(cfg):
    members = [member(cfg, seed) for seed in (1, 2, 3)]
    scorer = Scorer(members)
    assert scorer.output_dim == 12
    torch.testing.assert_close(served(scorer), sum(scores(*m) for m in members) / 3)
    with torch.no_grad():  # still unit vectors: one cosine index serves them
        norms = scorer.encode_users(USERS).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(3))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_weighted_members_score_the_weighted_mean(similarity):
    cfg = TowerConfig(embedding_dim=4, similarity=similarity)
    members = [member(cfg, seed) for seed in (1, 2)]
    scorer = Scorer(members, weights=[3.0, 1.0])  # relative: 0.75 / 0.25
    count = 1 if similarity == "cosine" else 2  # dot: equal weights give the plain sum
    expected = count * (0.75 * scores(*members[0]) + 0.25 * scores(*members[1]))
    torch.testing.assert_close(served(scorer), expected)
    if similarity == "dot":
        torch.testing.assert_close(
            served(Scorer(members)), scores(*members[0]) + scores(*members[1])
        )


def test_one_member_without_a_prior_serves_the_towers_unchanged():
    user, item = member(TowerConfig(embedding_dim=4), 1)
    scorer = Scorer([(user, item)])
    with torch.no_grad():
        torch.testing.assert_close(scorer.encode_users(USERS), user(USERS))
        torch.testing.assert_close(scorer.encode_items(ITEMS), item(ITEMS))  # no rows needed
    vectors = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    assert scorer.item_queries(vectors) is vectors


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_the_prior_adds_beta_times_the_centred_log_popularity(similarity):
    cfg = TowerConfig(embedding_dim=4, similarity=similarity)
    members = [member(cfg, 1)]
    scorer = Scorer(members, popularity_prior=0.05, item_counts=COUNTS)
    assert scorer.output_dim == 4 + PRIOR_DIMS
    log_p = ((COUNTS + 1.0) / (COUNTS + 1.0).sum()).log()  # written out apart from the code
    centred = log_p - log_p.mean()
    torch.testing.assert_close(served(scorer), scores(*members[0]) + 0.05 * centred)
    # An item without an id row (added after training, row 20) reads the never-seen entry:
    # count 0; its tower part is that of its other inputs.
    unseen = (1.0 / (COUNTS + 1.0).sum()).log() - log_p.mean()
    new_item = {
        "item_id": torch.tensor([-1]),
        "genres": ITEMS["genres"][:1],
        "year": ITEMS["year"][:1],
    }
    with torch.no_grad():
        new = scorer.encode_items(new_item, torch.tensor([20]))
        torch.testing.assert_close(new[0, :-PRIOR_DIMS], members[0][1](new_item)[0])
    torch.testing.assert_close(new[0, -2], (unseen / 10.0).float())
    assert new[0, -1] == 0.0
    with pytest.raises(ValueError, match="a popularity prior needs the items' rows"):
        scorer.encode_items(ITEMS)


def test_an_ensemble_with_a_prior_adds_it_once_and_items_query_as_users():
    cfg = TowerConfig(embedding_dim=4)
    members = [member(cfg, seed) for seed in (1, 2)]
    scorer = Scorer(members, weights=[0.3, 0.7], popularity_prior=0.1, item_counts=COUNTS)
    assert scorer.output_dim == 10
    alone = Scorer(members[:1], popularity_prior=0.1, item_counts=COUNTS)
    prior = served(alone) - scores(*members[0])  # the prior's part of one member's score
    expected = 0.3 * scores(*members[0]) + 0.7 * scores(*members[1]) + prior
    torch.testing.assert_close(served(scorer), expected)
    with torch.no_grad():
        items = scorer.encode_items(ITEMS, ROWS).numpy()
        users = scorer.encode_users(USERS).numpy()
    queries = scorer.item_queries(items)
    np.testing.assert_array_equal(
        queries[:, -PRIOR_DIMS:], np.repeat(users[:1, -PRIOR_DIMS:], 9, 0)
    )
    np.testing.assert_array_equal(queries[:, :-PRIOR_DIMS], items[:, :-PRIOR_DIMS])


def test_log_popularity_is_the_smoothed_share():
    counts = torch.tensor([0, 1, 3])
    torch.testing.assert_close(
        log_popularity(counts), torch.tensor([1 / 7, 2 / 7, 4 / 7], dtype=torch.float64).log()
    )


def test_bad_members_weights_and_priors_are_named():
    cfg = TowerConfig(embedding_dim=4)
    pair = [member(cfg, 1), member(cfg, 2)]
    with pytest.raises(ValueError, match="no members"):
        Scorer([])
    with pytest.raises(ValueError, match="3 weights for 2 members"):
        Scorer(pair, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"expected positive weights, got \[1.0, 0.0\]"):
        Scorer(pair, weights=[1.0, 0.0])
    bigger = FeatureSpec(USER_INPUTS, ITEM_INPUTS, num_users=7, num_items=9)
    with pytest.raises(ValueError, match="member 1's user tower is built for other data"):
        Scorer([pair[0], (UserTower(bigger, cfg), ItemTower(bigger, cfg))])
    dot = member(TowerConfig(embedding_dim=4, similarity="dot"), 3)
    with pytest.raises(ValueError, match="member 1's user tower uses similarity 'dot'"):
        Scorer([pair[0], dot])
    with pytest.raises(ValueError, match="popularity_prior: expected a finite number"):
        Scorer(pair, popularity_prior=float("nan"))
    with pytest.raises(ValueError, match="needs the items' interaction counts"):
        Scorer(pair, popularity_prior=0.1)
    with pytest.raises(ValueError, match=r"expected 9 counts, got shape \(6,\)"):
        Scorer(pair, popularity_prior=0.1, item_counts=torch.zeros(6))


# -- a Matryoshka prefix ------------------------------------------------------------------------
def _prefix_scores(user: UserTower, item: ItemTower, dim: int, similarity: str) -> torch.Tensor:
    """Scores of one member by its vectors' first `dim` coordinates, renormalised for cosine."""
    with torch.no_grad():
        users, items = user(USERS)[:, :dim], item(ITEMS)[:, :dim]
    if similarity == "cosine":
        users, items = F.normalize(users, dim=1), F.normalize(items, dim=1)
    return users @ items.T


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_a_prefix_serves_each_members_first_coordinates_with_the_ensemble_and_the_prior(
    similarity,
):
    """dim=3 of 8: each member's vector cut and renormalised (cosine) before the ensemble's
    scales; the prior's coordinates are kept and add what they add at the full dimension."""
    cfg = TowerConfig(embedding_dim=8, similarity=similarity)
    members = [member(cfg, seed) for seed in (1, 2)]
    full = Scorer(members, weights=[0.3, 0.7], popularity_prior=0.1, item_counts=COUNTS)
    scorer = full.at_dim(3)
    assert scorer.dim == 3 and scorer.output_dim == 2 * 3 + PRIOR_DIMS
    assert scorer.to_dict() == {**full.to_dict(), "dim": 3}
    prior = served(full) - served(Scorer(members, weights=[0.3, 0.7]))  # the prior's part
    count = 1 if similarity == "cosine" else 2
    expected = count * sum(
        share * _prefix_scores(*m, 3, similarity)
        for share, m in zip((0.3, 0.7), members, strict=True)
    )
    torch.testing.assert_close(served(scorer), expected + prior)
    if similarity == "cosine":  # still unit vectors, the prior's coordinates apart
        with torch.no_grad():
            norms = scorer.encode_users(USERS)[:, :-PRIOR_DIMS].norm(dim=1)
        torch.testing.assert_close(norms, torch.ones(3))
    assert full.at_dim(8).output_dim == full.output_dim
    torch.testing.assert_close(served(full.at_dim(8)), served(full))


def test_a_prefix_may_serve_with_a_prior_of_its_own_over_the_same_counts():
    """at_dim(d, prior): the prefix's score with beta = prior times the centred log p of the
    counts the scorer was given, even where the full vector serves without a prior."""
    cfg = TowerConfig(embedding_dim=8)
    members = [member(cfg, 1)]
    plain = Scorer(members, item_counts=COUNTS)  # counts given, no prior served
    assert plain.output_dim == 8
    scorer = plain.at_dim(3, 0.4)
    assert scorer.popularity_prior == 0.4 and scorer.output_dim == 3 + PRIOR_DIMS
    assert scorer.to_dict() == {**plain.to_dict(), "dim": 3, "popularity_prior": 0.4}
    log_p = ((COUNTS + 1.0) / (COUNTS + 1.0).sum()).log()
    expected = _prefix_scores(*members[0], 3, "cosine") + 0.4 * (log_p - log_p.mean())
    torch.testing.assert_close(served(scorer), expected)
    assert plain.at_dim(3).popularity_prior == 0.0  # no prior given: the scorer's own
    assert plain.at_dim(3, 0.0).output_dim == 3
    with pytest.raises(ValueError, match="needs the items' counts"):
        Scorer(members).at_dim(3, 0.4)
    with pytest.raises(ValueError, match="expected a finite prior"):
        plain.at_dim(3, float("inf"))


def test_a_prefix_longer_than_a_member_is_named():
    members = [member(TowerConfig(embedding_dim=4), 1)]
    with pytest.raises(MatryoshkaError, match=r"export\.dim=5: .* in 1\.\.4"):
        Scorer(members, dim=5)
