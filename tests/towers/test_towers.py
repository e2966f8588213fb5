import pytest
import torch

from towers import FeatureSpec, ItemTower, Similarity, TowerConfig, UserTower

SPEC = FeatureSpec(num_users=5, num_items=7, num_genres=3, num_year_buckets=4, history_length=3)


def test_towers_return_unit_vectors_under_cosine_and_raw_ones_under_dot():
    user = UserTower(SPEC, TowerConfig(embedding_dim=8, similarity="cosine"))
    out = user(torch.tensor([0, 4]), torch.tensor([[1, 2, 7], [7, 7, 7]]))
    assert out.shape == (2, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    item = ItemTower(SPEC, TowerConfig(embedding_dim=8, similarity="dot", init_std=1.0))
    vectors = item(torch.tensor([0, 6]), torch.tensor([[0, 3], [3, 3]]), torch.tensor([1, 0]))
    assert vectors.shape == (2, 8) and not torch.allclose(vectors.norm(dim=1), torch.ones(2))


def test_history_padding_does_not_change_the_user_vector():
    tower = UserTower(SPEC, TowerConfig(embedding_dim=4))
    short = tower(torch.tensor([1]), torch.tensor([[2, 7, 7]]))
    longer_pad = tower(torch.tensor([1]), torch.tensor([[7, 2, 7]]))
    torch.testing.assert_close(short, longer_pad)


def test_user_vector_depends_on_history_and_id_through_the_gate():
    cfg = TowerConfig(embedding_dim=4, similarity="dot", history_gate=1.0)  # id only
    tower = UserTower(SPEC, cfg)
    a = tower(torch.tensor([1]), torch.tensor([[2, 7, 7]]))
    b = tower(torch.tensor([1]), torch.tensor([[3, 4, 7]]))
    torch.testing.assert_close(a, b)
    tower = UserTower(SPEC, TowerConfig(embedding_dim=4, history_gate=None))
    assert tower.gate_logit.requires_grad


def test_history_only_user_tower_has_no_user_table():
    tower = UserTower(SPEC, TowerConfig(use_user_id=False))
    assert tower.user_embedding is None
    with pytest.raises(ValueError, match="needs use_user_id or use_history"):
        UserTower(SPEC, TowerConfig(use_user_id=False, use_history=False))


def test_unknown_similarity_is_named():
    with pytest.raises(ValueError, match="unknown similarity 'l2'"):
        Similarity.parse("l2")


def test_user_dropout_acts_in_training_only():
    torch.manual_seed(0)
    tower = UserTower(SPEC, TowerConfig(embedding_dim=16, user_dropout=0.5))
    user, history = torch.tensor([1, 2]), torch.tensor([[2, 3, 7], [4, 7, 7]])
    assert not torch.allclose(tower(user, history), tower(user, history))
    plain = UserTower(SPEC, TowerConfig(embedding_dim=16))
    plain.load_state_dict(tower.state_dict())
    tower.eval()
    torch.testing.assert_close(tower(user, history), plain(user, history))


@pytest.mark.parametrize("field", ["dropout", "user_dropout"])
def test_dropout_rates_outside_zero_to_one_are_named(field):
    with pytest.raises(ValueError, match=rf"TowerConfig\.{field}: .* got 1\.5"):
        TowerConfig(**{field: 1.5})


def test_grouped_cosine_scores_are_the_mean_of_the_blocks_cosines():
    a, b = torch.randn(3, 8), torch.randn(5, 8)
    cosine = Similarity.COSINE
    grouped = cosine.prepare(a, groups=2) @ cosine.prepare(b, groups=2).T
    per_block = [
        cosine.prepare(a[:, s]) @ cosine.prepare(b[:, s]).T for s in (slice(0, 4), slice(4, 8))
    ]
    torch.testing.assert_close(grouped, (per_block[0] + per_block[1]) / 2)
    torch.testing.assert_close(cosine.prepare(a, groups=2).norm(dim=1), torch.ones(3))
    torch.testing.assert_close(Similarity.DOT.prepare(a, groups=2), a)


def test_groups_must_divide_the_dimension():
    with pytest.raises(
        ValueError, match=r"TowerConfig\.groups: expected a divisor of embedding_dim 8, got 3"
    ):
        TowerConfig(embedding_dim=8, groups=3)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_popularity_prior_adds_beta_log_p_to_the_served_score_only(similarity):
    cfg = TowerConfig(embedding_dim=4, similarity=similarity, popularity_prior=0.05)
    plain = TowerConfig(embedding_dim=4, similarity=similarity)
    torch.manual_seed(0)
    user, item = UserTower(SPEC, cfg), ItemTower(SPEC, cfg)
    torch.manual_seed(0)
    plain_user, plain_item = UserTower(SPEC, plain), ItemTower(SPEC, plain)
    counts = torch.tensor([5, 0, 1, 2, 0, 3, 9])
    item.set_popularity(counts)
    log_p = ((counts + 1.0) / (counts + 1.0).sum()).log()
    centred = log_p - log_p.mean()  # a shift of every score: the ranking of + beta log p
    users, histories = torch.tensor([0, 4]), torch.tensor([[1, 2, 7], [7, 7, 7]])
    items, genres, years = torch.arange(7), torch.full((7, 2), 3), torch.zeros(7, dtype=torch.long)
    assert cfg.output_dim == 6 and plain.output_dim == 4
    # In training the towers are the plain towers: the loss sees the similarity alone.
    torch.testing.assert_close(user(users, histories), plain_user(users, histories))
    torch.testing.assert_close(item(items, genres, years), plain_item(items, genres, years))
    for tower in (user, item, plain_user, plain_item):
        tower.eval()
    with torch.no_grad():
        served = user(users, histories) @ item(items, genres, years).T
        expected = plain_user(users, histories) @ plain_item(items, genres, years).T
    torch.testing.assert_close(served, expected + 0.05 * centred)
    # The padding index stands for an item never seen in training: count 0.
    unseen = (1.0 / (counts + 1.0).sum()).log() - log_p.mean()
    torch.testing.assert_close(item.log_popularity[-1], unseen)
    # Saved and loaded with the tower's weights.
    loaded = ItemTower(SPEC, cfg)
    loaded.load_state_dict(item.state_dict())
    torch.testing.assert_close(loaded.log_popularity, item.log_popularity)


def test_popularity_prior_errors_are_named():
    with pytest.raises(ValueError, match=r"TowerConfig.popularity_prior: expected a finite"):
        TowerConfig(popularity_prior=float("nan"))
    item = ItemTower(SPEC, TowerConfig(embedding_dim=4, popularity_prior=0.1))
    with pytest.raises(ValueError, match=r"expected 7 counts, got shape \(6,\)"):
        item.set_popularity(torch.zeros(6))
    with pytest.raises(ValueError, match="this tower has no popularity prior"):
        ItemTower(SPEC, TowerConfig(embedding_dim=4)).set_popularity(torch.zeros(7))
