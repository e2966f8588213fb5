import torch

from towers import (
    FeatureSpec,
    ItemCatalogue,
    NegativeConfig,
    OptimConfig,
    TowerConfig,
    TwoTowerModule,
)
from towers.optim import RowAdam

SPEC = FeatureSpec(num_users=6, num_items=10, num_genres=2, num_year_buckets=3, history_length=4)


def _module(**kwargs) -> TwoTowerModule:
    catalogue = ItemCatalogue(
        genres=torch.randint(0, 3, (10, 2)),
        year=torch.randint(0, 3, (10,)),
        counts=torch.arange(10),
    )
    return TwoTowerModule(SPEC, catalogue, TowerConfig(embedding_dim=8, sparse=True), **kwargs)


def _params(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def test_id_tables_are_updated_row_wise_the_bags_densely_and_the_rest_by_adamw():
    model = _module()
    model.user_tower.history_projection = torch.nn.Linear(8, 8, bias=False)
    rows, tables, dense = model.configure_optimizers()[0]
    assert isinstance(rows, RowAdam)
    assert type(tables) is torch.optim.Adam and isinstance(dense, torch.optim.AdamW)
    ids = [model.user_tower.user_embedding, model.item_tower.item_embedding]
    ids += [model.item_tower.year_embedding]
    assert all(table.sparse for table in ids)
    assert _params(rows) == {id(table.weight) for table in ids}
    bags = [model.user_tower.history_embedding, model.item_tower.genre_embedding]
    assert not any(table.sparse for table in bags)
    assert _params(tables) == {id(table.weight) for table in bags}
    assert _params(dense) == {id(model.user_tower.history_projection.weight)}  # the gate is fixed


def test_without_sparse_every_table_gets_dense_adam():
    catalogue = ItemCatalogue(
        genres=torch.zeros(10, 1, dtype=torch.long),
        year=torch.zeros(10, dtype=torch.long),
        counts=torch.ones(10),
    )
    model = TwoTowerModule(SPEC, catalogue, TowerConfig(embedding_dim=8, sparse=False))
    optimizers = model.configure_optimizers()[0]
    assert not any(isinstance(opt, RowAdam) for opt in optimizers)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert _params(optimizers[0]) == embeddings


def test_popularity_negatives_are_drawn_by_training_counts_with_their_log_q():
    torch.manual_seed(0)
    model = _module(negatives=NegativeConfig(num_negatives=5000, distribution="popularity"))
    ids, log_q = model._sample_negatives(torch.device("cpu"))
    counts = torch.bincount(ids, minlength=10).float()
    assert counts[9] > 5 * counts[1]  # item 9 has count 9, item 1 count 1 (+1 smoothing)
    share = (torch.arange(10) + 1.0) / (torch.arange(10) + 1.0).sum()  # +1 smoothing
    expected = torch.log(torch.tensor(5000.0)) + share.log()[ids]
    torch.testing.assert_close(log_q, expected)
    uniform = _module(negatives=NegativeConfig(num_negatives=4))
    _, log_q = uniform._sample_negatives(torch.device("cpu"))
    torch.testing.assert_close(log_q, torch.full((4,), float(torch.log(torch.tensor(0.4)))))


def test_catalogue_vectors_match_encode_items_and_the_similarity_is_declared():
    model = _module().eval()
    vectors = model.encode_catalogue(chunk=3)
    assert vectors.shape == (10, 8)
    torch.testing.assert_close(vectors[4:6], model.encode_items(torch.tensor([4, 5])))
    assert model.similarity.value == "cosine"


def test_bad_schedule_or_distribution_is_named():
    import pytest

    with pytest.raises(ValueError, match="distribution"):
        _module(negatives=NegativeConfig(distribution="zipf"))
    with pytest.raises(ValueError, match="schedule"):
        _module(optim=OptimConfig(schedule="step"))


def test_shared_item_embeddings_are_one_table_in_training():
    catalogue = ItemCatalogue(
        genres=torch.zeros(10, 1, dtype=torch.long),
        year=torch.zeros(10, dtype=torch.long),
        counts=torch.ones(10),
    )
    model = TwoTowerModule(
        SPEC,
        catalogue,
        TowerConfig(embedding_dim=8, share_item_embeddings=True, sparse=True),
    )
    assert model.user_tower.history_embedding is model.item_tower.item_embedding
    assert model.user_tower.history_projection is not None
    optimizers, _ = model.configure_optimizers()
    params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params})  # the shared table is optimised once
    # The pooled history makes its gradient dense: it is not among the row-wise tables.
    rows = next(opt for opt in optimizers if isinstance(opt, RowAdam))
    assert id(model.item_tower.item_embedding.weight) not in _params(rows)
    dense_tables = next(opt for opt in optimizers if type(opt) is torch.optim.Adam)
    bags = [model.item_tower.item_embedding, model.item_tower.genre_embedding]
    assert _params(dense_tables) == {id(table.weight) for table in bags}


def test_linear_schedule_decays_to_zero_and_dense_parameters_get_their_own_rate():
    model = _module(optim=OptimConfig(lr=0.01, dense_lr=0.001, schedule="linear"))
    model.user_tower.history_projection = torch.nn.Linear(8, 8, bias=False)
    optimizers, schedulers = model.configure_optimizers()  # no trainer: a one-step run
    tables, _, dense = optimizers
    assert isinstance(tables, RowAdam) and isinstance(dense, torch.optim.AdamW)
    assert tables.param_groups[0]["lr"] == 0.01 and dense.param_groups[0]["lr"] == 0.001
    schedulers[0].step()
    assert tables.param_groups[0]["lr"] == 0.0
