import math

import pytest
import torch

from towers import ConfigError, FeatureSpec, ItemTower, Similarity, TowerConfig, UserTower
from towers.inputs import TowerInput

NUM_ITEMS = 7
USER_ID = TowerInput("user_id", "id", "index", rows=5)
HISTORY = TowerInput("history", "history", "history", rows=NUM_ITEMS, width=3, pooling="mean")
ITEM_ID = TowerInput("item_id", "id", "index", rows=NUM_ITEMS)
GENRES = TowerInput("genres", "multi_hot", "bag", rows=4, width=2, pooling="mean")  # pad 3
YEAR = TowerInput("year", "numeric", "index", rows=5)  # 4 buckets, then missing
PRICE = TowerInput("price", "numeric", "dense", dim=2)  # [z-score, missing flag]
TEXT = TowerInput("text", "text", "dense", dim=6)


def spec(user=(USER_ID, HISTORY), item=(ITEM_ID, GENRES, YEAR), **kw) -> FeatureSpec:
    return FeatureSpec(user, item, num_users=5, num_items=NUM_ITEMS, **kw)


SPEC = spec()


def user_inputs(users, histories):
    return {"user_id": torch.tensor(users), "history": torch.tensor(histories)}


def item_inputs(items, genres, years):
    return {
        "item_id": torch.tensor(items),
        "genres": torch.tensor(genres),
        "year": torch.tensor(years),
    }


def test_towers_return_unit_vectors_under_cosine_and_raw_ones_under_dot():
    user = UserTower(SPEC, TowerConfig(embedding_dim=8, similarity="cosine"))
    out = user(user_inputs([0, 4], [[1, 2, -1], [-1, -1, -1]]))
    assert out.shape == (2, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    item = ItemTower(SPEC, TowerConfig(embedding_dim=8, similarity="dot", init_std=1.0))
    vectors = item(item_inputs([0, 6], [[0, 3], [3, 3]], [1, 4]))
    assert vectors.shape == (2, 8) and not torch.allclose(vectors.norm(dim=1), torch.ones(2))


def test_a_sum_tower_adds_each_encoders_part():
    """Item vector (dot, no MLP) = id row + mean of the genre rows + the year bucket's row."""
    torch.manual_seed(0)
    item = ItemTower(SPEC, TowerConfig(embedding_dim=4, similarity="dot"))
    id_rows, genre_rows = (
        item.encoders["item_id"].table.weight,
        item.encoders["genres"].table.weight,
    )
    year_rows = item.encoders["year"].table.weight
    got = item(item_inputs([2, 5], [[0, 2], [1, 3]], [1, 4]))
    expected = torch.stack(
        [
            id_rows[2] + (genre_rows[0] + genre_rows[2]) / 2 + year_rows[1],
            id_rows[5] + genre_rows[1] + year_rows[4],  # genre 3 is the padding row
        ]
    )
    torch.testing.assert_close(got, expected)


def test_dense_inputs_go_through_a_linear_map_and_concat_maps_the_parts_back_to_d():
    torch.manual_seed(0)
    concat = spec(item=(ITEM_ID, PRICE, TEXT), item_combine="concat")
    item = ItemTower(concat, TowerConfig(embedding_dim=4, similarity="dot"))
    price = torch.tensor([[0.5, 0.0], [0.0, 1.0]])
    text = torch.randn(2, 6)
    got = item({"item_id": torch.tensor([1, -1]), "price": price, "text": text})
    with torch.no_grad():
        parts = [
            item.encoders["item_id"].table.weight[[1, 0]] * torch.tensor([[1.0], [0.0]]),
            price @ item.encoders["price"].linear.weight.T,
            text @ item.encoders["text"].linear.weight.T,
        ]
        expected = torch.cat(parts, dim=1) @ item.joint.weight.T
    torch.testing.assert_close(got, expected)


def test_history_padding_does_not_change_the_user_vector():
    tower = UserTower(SPEC, TowerConfig(embedding_dim=4))
    short = tower(user_inputs([1], [[2, -1, -1]]))
    moved_pad = tower(user_inputs([1], [[-1, 2, -1]]))
    torch.testing.assert_close(short, moved_pad)


def test_attention_and_last_pooling_against_a_direct_computation():
    torch.manual_seed(0)
    cfg = TowerConfig(embedding_dim=4, similarity="dot", history_projection=False)
    history = [[2, 4, -1], [-1, -1, -1]]
    attention = spec(
        user=(TowerInput("history", "history", "history", NUM_ITEMS, 0, 3, "attention"),)
    )
    tower = UserTower(attention, cfg)
    encoder = tower.encoders["history"]
    rows = encoder.table.weight[[2, 4]]  # (2, D)
    weights = torch.softmax(rows @ encoder.query / math.sqrt(4), dim=0)
    got = tower({"history": torch.tensor(history)})
    torch.testing.assert_close(got[0], weights @ rows)
    torch.testing.assert_close(got[1], torch.zeros(4))  # an empty history
    last = spec(user=(TowerInput("history", "history", "history", NUM_ITEMS, 0, 3, "last"),))
    tower = UserTower(last, cfg)
    got = tower({"history": torch.tensor([[2, 4, -1], [3, -1, 5], [-1, -1, -1]])})
    table = tower.encoders["history"].table.weight
    torch.testing.assert_close(got, torch.stack([table[4], table[5], torch.zeros(4)]))


def test_user_vector_depends_on_history_and_id_through_the_gate():
    cfg = TowerConfig(embedding_dim=4, similarity="dot", history_gate=1.0)  # id only
    tower = UserTower(SPEC, cfg)
    a = tower(user_inputs([1], [[2, -1, -1]]))
    b = tower(user_inputs([1], [[3, 4, -1]]))
    torch.testing.assert_close(a, b)
    tower = UserTower(SPEC, TowerConfig(embedding_dim=4, history_gate=None))
    assert tower.gate_logit.requires_grad


def test_a_history_only_user_tower_has_no_id_table_and_a_tower_needs_an_input():
    tower = UserTower(spec(user=(HISTORY,)), TowerConfig())
    assert tower.id_table() is None
    with pytest.raises(ValueError, match="the user tower has no inputs"):
        UserTower(spec(user=()), TowerConfig())


def test_a_missing_input_is_named():
    tower = ItemTower(SPEC, TowerConfig())
    with pytest.raises(KeyError, match="the item tower reads input 'genres'"):
        tower({"item_id": torch.tensor([0]), "year": torch.tensor([0])})


def test_unknown_similarity_is_named():
    with pytest.raises(ValueError, match="unknown similarity 'l2'"):
        Similarity.parse("l2")


def test_user_dropout_acts_in_training_only():
    torch.manual_seed(0)
    tower = UserTower(SPEC, TowerConfig(embedding_dim=16, user_dropout=0.5))
    inputs = user_inputs([1, 2], [[2, 3, -1], [4, -1, -1]])
    assert not torch.allclose(tower(inputs), tower(inputs))
    plain = UserTower(SPEC, TowerConfig(embedding_dim=16))
    plain.load_state_dict(tower.state_dict())
    tower.eval()
    torch.testing.assert_close(tower(inputs), plain(inputs))


@pytest.mark.parametrize("field", ["dropout", "user_dropout", "user_id_dropout", "item_id_dropout"])
def test_dropout_rates_outside_zero_to_one_are_named(field):
    with pytest.raises(ConfigError) as raised:
        TowerConfig(**{field: 1.5})
    assert raised.value.setting == f"model.towers.{field}" and raised.value.value == 1.5


def test_an_id_without_a_row_is_served_from_the_other_inputs():
    """An id of -1 reads a zero vector: the vector is what the tower gives with the id embedding
    at zero, from the other inputs."""
    torch.manual_seed(0)
    cfg = TowerConfig(embedding_dim=4, similarity="dot", history_gate=0.5)
    user = UserTower(SPEC, cfg)
    served = user(user_inputs([1, -1], [[2, 3, -1], [4, -1, -1]]))
    with torch.no_grad():
        encoder = user.encoders["history"]
        pooled = encoder.projection(encoder.table.weight[[4]].mean(0))
    torch.testing.assert_close(served[1], 0.5 * pooled)  # the history's half of the gate alone
    torch.testing.assert_close(served[0], user(user_inputs([1], [[2, 3, -1]]))[0])
    item = ItemTower(SPEC, cfg)
    new = item(item_inputs([0, -1], [[0, 3], [1, 2]], [1, 2]))
    with torch.no_grad():
        genres = item.encoders["genres"].table.weight[[1, 2]].mean(0)
        expected = genres + item.encoders["year"].table.weight[2]
    torch.testing.assert_close(new[1], expected)


def test_feature_spec_round_trips_through_its_dict():
    again = FeatureSpec(**SPEC.to_dict())
    assert again == SPEC and again.history_length == 3 and again.id_input("item") == ITEM_ID
    with pytest.raises(ValueError, match="item_combine"):
        spec(item_combine="max")
