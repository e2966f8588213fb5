import pytest
import torch

from towers import FeatureSpec, ItemTower, TowerConfig, UserTower
from towers.ensemble import concatenate

SPEC = FeatureSpec(num_users=6, num_items=9, num_genres=3, num_year_buckets=4, history_length=4)
USERS = torch.tensor([0, 3, 5])
HISTORIES = torch.tensor([[1, 2, 9, 9], [4, 5, 6, 8], [9, 9, 9, 9]])  # the last user: no history
ITEMS = torch.arange(9)
GENRES = torch.tensor([[0, 3], [1, 2], [3, 3]] * 3)
YEARS = torch.tensor([0, 1, 2] * 3)


def member(cfg: TowerConfig, seed: int) -> tuple[UserTower, ItemTower]:
    torch.manual_seed(seed)
    user, item = UserTower(SPEC, cfg), ItemTower(SPEC, cfg)
    if cfg.history_gate is None:
        with torch.no_grad():
            user.gate_logit.fill_(seed - 1.5)  # members learned different gates
    return user.eval(), item.eval()


def scores(user: UserTower, item: ItemTower) -> torch.Tensor:
    with torch.no_grad():
        return user(USERS, HISTORIES) @ item(ITEMS, GENRES, YEARS).T


@pytest.mark.parametrize(
    "cfg",
    [
        TowerConfig(embedding_dim=4, history_projection=True),  # fixed gate, projection
        TowerConfig(embedding_dim=4, history_gate=None, history_projection=True),
        TowerConfig(embedding_dim=4, history_gate=None, history_projection=False),
        TowerConfig(embedding_dim=4, use_user_id=False, use_genres=False, use_year=False),
    ],
)
def test_concatenated_cosine_towers_score_the_mean_of_the_members_cosines(cfg):
    members = [member(cfg, seed) for seed in (1, 2, 3)]
    user, item = concatenate(members)
    assert user.cfg.embedding_dim == 12 and user.cfg.groups == 3 and item.cfg == user.cfg
    assert not user.gate_logit.requires_grad
    expected = sum(scores(*m) for m in members) / 3
    torch.testing.assert_close(scores(user, item), expected)


def test_concatenated_dot_towers_score_the_sum_of_the_members_scores():
    cfg = TowerConfig(embedding_dim=4, similarity="dot", history_gate=None)
    members = [member(cfg, seed) for seed in (1, 2)]
    torch.testing.assert_close(
        scores(*concatenate(members)), scores(*members[0]) + scores(*members[1])
    )


def test_members_must_share_data_and_config_and_have_no_mlp():
    cfg = TowerConfig(embedding_dim=4)
    a = member(cfg, 1)
    other = member(TowerConfig(embedding_dim=4, use_year=False), 2)
    with pytest.raises(ValueError, match="member 1's user tower config differs"):
        concatenate([a, other])
    bigger = FeatureSpec(
        num_users=7, num_items=9, num_genres=3, num_year_buckets=4, history_length=4
    )
    with pytest.raises(ValueError, match="member 1's user tower is built for other data"):
        concatenate([a, (UserTower(bigger, cfg), ItemTower(bigger, cfg))])
    deep = TowerConfig(embedding_dim=4, mlp_layers=1)
    with pytest.raises(ValueError, match="mlp_layers=1"):
        concatenate([member(deep, 1), member(deep, 2)])
    with pytest.raises(ValueError, match="no members"):
        concatenate([])


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_weighted_members_score_the_weighted_mean_and_nest(similarity):
    cfg = TowerConfig(embedding_dim=4, similarity=similarity, history_projection=True)
    members = [member(cfg, seed) for seed in (1, 2, 3)]
    pair = concatenate(members[:2], weights=[3.0, 1.0])  # relative weights: 0.75 / 0.25
    assert pair[0].cfg.group_weights == (0.75, 0.25) and pair[1].cfg == pair[0].cfg
    count = 1 if similarity == "cosine" else 2  # dot: equal weights give the plain sum
    expected = count * (0.75 * scores(*members[0]) + 0.25 * scores(*members[1]))
    torch.testing.assert_close(scores(*pair), expected)
    if similarity == "cosine":  # still unit vectors: one cosine index serves them
        with torch.no_grad():
            norms = pair[0](USERS, HISTORIES).norm(dim=1)
        torch.testing.assert_close(norms, torch.ones(3))
    # An ensemble of an ensemble: the pair's weight is shared among its blocks as they weigh.
    nested = concatenate([pair, concatenate([members[2], members[2]])], weights=[1.0, 1.0])
    assert nested[0].cfg.group_weights == (0.375, 0.125, 0.25, 0.25)
    count = 1 if similarity == "cosine" else 4
    expected = count * (
        0.375 * scores(*members[0]) + 0.125 * scores(*members[1]) + 0.5 * scores(*members[2])
    )
    torch.testing.assert_close(scores(*nested), expected)


def test_bad_weights_are_named():
    cfg = TowerConfig(embedding_dim=4)
    pair = [member(cfg, 1), member(cfg, 2)]
    with pytest.raises(ValueError, match="3 weights for 2 members"):
        concatenate(pair, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"expected positive weights, got \[1.0, 0.0\]"):
        concatenate(pair, weights=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"TowerConfig.group_weights: expected 2 positive"):
        TowerConfig(embedding_dim=4, groups=2, group_weights=(1.0,))
    assert TowerConfig(embedding_dim=4, groups=2, group_weights=[1, 3]).group_weights == (1.0, 3.0)


def test_an_ensemble_with_a_popularity_prior_adds_it_once():
    cfg = TowerConfig(embedding_dim=4, popularity_prior=0.1)
    counts = torch.tensor([3, 0, 1, 7, 2, 2, 0, 1, 5])
    members = [member(cfg, seed) for seed in (1, 2)]
    for _, item in members:
        item.set_popularity(counts)
    user, item = concatenate(members, weights=[0.3, 0.7])
    assert user.cfg.output_dim == 10  # 2 x 4 + the prior's 2
    # Each member's score holds the prior once, so their weighted mean does too.
    expected = 0.3 * scores(*members[0]) + 0.7 * scores(*members[1])
    torch.testing.assert_close(scores(user, item), expected)
    assert (item.log_popularity != 0).all()
    members[1][1].set_popularity(counts + 1)
    with pytest.raises(ValueError, match="item popularities \\(log_popularity\\) differ"):
        concatenate(members)
