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


def test_an_id_the_table_does_not_know_is_served_from_the_other_inputs():
    """has_id=False zeroes the id embedding (the index, even one past the table, is not read):
    the vector is what the tower gives with the id embedding at zero, from the other inputs."""
    torch.manual_seed(0)
    cfg = TowerConfig(embedding_dim=4, similarity="dot", history_gate=0.5)
    user = UserTower(SPEC, cfg)
    users, histories = torch.tensor([1, 99]), torch.tensor([[2, 3, 7], [4, 7, 7]])
    has_id = torch.tensor([True, False])
    served = user(users, histories, has_id)
    with torch.no_grad():
        pooled = user.history_projection(user.history_embedding.weight[[4]].mean(0))
    torch.testing.assert_close(served[1], 0.5 * pooled)  # the history's half of the gate alone
    torch.testing.assert_close(served[0], user(users[:1], histories[:1])[0])
    item = ItemTower(SPEC, cfg)
    genres, years = torch.tensor([[0, 3], [1, 2]]), torch.tensor([1, 2])
    new = item(torch.tensor([0, 12]), genres, years, torch.tensor([True, False]))
    with torch.no_grad():
        features = item.genre_embedding.weight[[1, 2]].mean(0) + item.year_embedding.weight[2]
    torch.testing.assert_close(new[1], features)
    torch.testing.assert_close(new[0], item(torch.tensor([0]), genres[:1], years[:1])[0])
