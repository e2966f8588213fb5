"""serve/index.py and serve/sweep.py: the factory, the metric, ANN against exact ground truth,
the sweep's choice, removal, and the device switch."""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pytest

from serve.index import (
    DEFAULT_K_FACTOR,
    EF_SEARCH,
    K_FACTOR,
    NPROBE,
    IndexConfig,
    auto_nlist,
    build_index,
    fixed_settings,
    knob_values,
    remove_ids,
    resolve_device,
    search_knob,
    search_parameters,
    to_cpu,
    to_device,
)
from serve.sweep import exact_neighbours, recall_at_k, sweep


def unit_vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, d: int = 16, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit_vectors(clusters, d, seed + 1)
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, d)).astype(
        np.float32
    ) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_config_parses_files_strings_and_rejects_nonsense():
    assert IndexConfig.parse("HNSW32").factory == "HNSW32"
    assert IndexConfig.parse(None).factory == "Flat"
    cfg = IndexConfig.parse(
        {"factory": "IVF{nlist},Flat", "nlist": 8, "search_params": {"nprobe": "4"}}
    )
    assert cfg.factory_for(10_000, 64) == "IVF8,Flat" and cfg.search_params == {"nprobe": 4}
    assert (
        IndexConfig.parse({"factory": "IVF{nlist},Flat"}).factory_for(10_000, 64)
        == f"IVF{auto_nlist(10_000)},Flat"
    )
    with pytest.raises(ValueError, match=r"index\.device"):
        IndexConfig(device="tpu")
    with pytest.raises(ValueError, match="unknown keys"):
        IndexConfig.parse({"factory": "Flat", "nprobe": 3})
    with pytest.raises(ValueError, match="search_params"):
        IndexConfig(search_params={"nprobes": 3})
    with pytest.raises(ValueError, match="nlist"):
        IndexConfig(nlist="many")
    assert IndexConfig(factory="IVF{nlist},PQ{half_dim}x4fs").factory_for(1600, 64) == (
        "IVF40,PQ32x4fs"
    )
    with pytest.raises(ValueError, match="even dimension"):
        IndexConfig(factory="PQ{half_dim}x4fs").factory_for(1600, 33)


def test_auto_nlist_keeps_39_points_per_list():
    assert auto_nlist(100) == 2 and auto_nlist(10) == 1
    assert auto_nlist(1_000_000) == 1000


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_index_is_inner_product_and_id_mapped(similarity):
    x = unit_vectors(50)
    index = build_index(x, similarity, "Flat", ids=np.arange(100, 150))
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    scores, ids = index.search(x[:3], 1)
    np.testing.assert_array_equal(ids[:, 0], [100, 101, 102])
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-5)


def test_bad_factory_names_the_string():
    with pytest.raises(ValueError, match="'Nonsense12'"):
        build_index(unit_vectors(10), "dot", "Nonsense12")
    with pytest.raises(ValueError, match="non-empty"):
        build_index(np.zeros((0, 4), np.float32), "dot")


def test_ivf_at_full_nprobe_equals_exact_search():
    xb, xq = clustered(2000), clustered(50, seed=5)
    index = build_index(xb, "cosine", "IVF16,Flat")
    truth = exact_neighbours(xb, xq, 20)
    _, found = index.search(xq, 20, params=search_parameters(index, {NPROBE: 16}))
    assert recall_at_k(found, truth) == 1.0
    _, one = index.search(xq, 20, params=search_parameters(index, {NPROBE: 1}))
    assert recall_at_k(one, truth) < 1.0  # the knob is really applied per search


def test_sweep_picks_the_cheapest_setting_reaching_the_target():
    xb, xq = clustered(3000), clustered(100, seed=7)
    index = build_index(xb, "cosine", "IVF32,Flat")
    truth = exact_neighbours(xb, xq, 50)
    result = sweep(index, xq, truth, target_recall=0.9, latency_queries=10)
    assert result.knob == NPROBE and result.reached
    recalls = {p.value: p.recall for p in result.points}
    assert recalls[result.chosen] >= 0.9
    assert all(r < 0.9 for v, r in recalls.items() if v < result.chosen)
    # The recorded recall is what serving with the chosen setting gets.
    _, found = index.search(xq, 50, params=search_parameters(index, result.search_params))
    assert recall_at_k(found, truth) == pytest.approx(recalls[result.chosen])


def test_sweep_of_hnsw_reaches_recall_against_exact():
    xb, xq = clustered(2000), clustered(50, seed=9)
    index = build_index(xb, "dot", "HNSW16")
    truth = exact_neighbours(xb, xq, 20)
    result = sweep(index, xq, truth, target_recall=0.95, latency_queries=5)
    assert result.knob == EF_SEARCH and result.reached
    assert sweep(build_index(xb, "dot", "Flat"), xq, truth) is None  # exact: nothing to sweep


def test_sweep_grids_are_half_octaves_up_to_the_last_setting():
    xb = clustered(3000)
    assert knob_values(build_index(xb, "cosine", "IVF32,Flat")) == [
        1,
        2,
        3,
        4,
        6,
        8,
        12,
        16,
        24,
        32,
    ]
    ef = knob_values(build_index(xb, "cosine", "HNSW8"))
    assert ef[0] == 16 and ef[-1] == 2048
    assert all(1 < b / a <= 1.5 for a, b in itertools.pairwise(ef))
    assert knob_values(build_index(xb, "cosine", "Flat")) == []


def test_sweep_that_cannot_reach_the_target_says_so():
    xb, xq = unit_vectors(2000, d=32), unit_vectors(30, d=32, seed=3)
    index = build_index(xb, "dot", "IVF8,PQ4")  # 4-byte codes: recall stays far below 0.999
    result = sweep(index, xq, exact_neighbours(xb, xq, 10), target_recall=0.999, latency_queries=3)
    assert not result.reached
    assert result.chosen == max(result.points, key=lambda p: p.recall).value


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW8", "IVF4,PQ8x4fs,RFlat"])
def test_remove_ids_takes_items_out(factory):
    x = unit_vectors(400)
    index = build_index(x, "cosine", factory)
    index = remove_ids(index, np.array([0, 5, 7]), x)
    assert index.ntotal == 397
    params = search_parameters(index, {NPROBE: 4, EF_SEARCH: 64})
    _, found = index.search(x[[0, 5, 7, 9]], 5, params=params)
    assert not np.isin(found, [0, 5, 7]).any()
    assert found[3, 0] == 9


def test_refined_index_reranks_exactly_and_filters_by_item_id():
    xb, xq = clustered(3000), clustered(40, seed=4)
    ids = np.arange(3000) * 3 + 7  # item ids unlike the base index's row numbers
    index = build_index(xb, "cosine", "IVF16,PQ8x4fs,RFlat", ids=ids)
    assert search_knob(index) == NPROBE and knob_values(index)[-1] == 16
    truth = exact_neighbours(xb, xq, 10, ids=ids)
    scores, found = index.search(
        xq, 10, params=search_parameters(index, {NPROBE: 16, K_FACTOR: 32})
    )
    assert recall_at_k(found, truth) > 0.99
    exact = (xq[:, None, :] * xb[(found - 7) // 3]).sum(-1)  # re-ranked: exact scores
    np.testing.assert_allclose(scores, exact, rtol=1e-4, atol=1e-5)
    # Fewer candidates re-ranked: the 4-bit codes alone find fewer of the true neighbours.
    _, rough = index.search(xq, 10, params=search_parameters(index, {NPROBE: 16, K_FACTOR: 1}))
    assert recall_at_k(rough, truth) < recall_at_k(found, truth)
    # A selector over item ids reaches the base index through the ID map.
    eligible = np.zeros(ids.max() + 1, dtype=bool)
    eligible[ids[::2]] = True
    bits = np.packbits(eligible, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(eligible), faiss.swig_ptr(bits))
    params = search_parameters(index, {NPROBE: 16}, selector)
    _, filtered = index.search(xq, 10, params=params)
    assert (filtered >= 0).all() and eligible[filtered].all()
    # Over-fetching for exclusions: k_factor candidates per wanted result, one per extra slot.
    for wanted, fetch in ((10, 30), (10, 17), (7, 7)):
        params = search_parameters(index, {NPROBE: 4, K_FACTOR: 16}, wanted=wanted, fetch=fetch)
        assert int(fetch * params.k_factor) == 16 * wanted + fetch - wanted
    assert fixed_settings(index, {}) == {K_FACTOR: DEFAULT_K_FACTOR}
    assert fixed_settings(index, {K_FACTOR: 4}) == {K_FACTOR: 4}
    assert fixed_settings(build_index(xb, "cosine", "IVF16,Flat"), {}) == {}
    with pytest.raises(ValueError, match="k_factor"):
        IndexConfig(search_params={K_FACTOR: 0})


def test_device_choice_and_its_errors():
    assert resolve_device("auto", num_gpus=0) == "cpu"
    assert resolve_device("auto", num_gpus=2) == "gpu"
    assert resolve_device("cpu", num_gpus=2) == "cpu"
    with pytest.raises(RuntimeError, match="no GPU"):
        resolve_device("gpu", num_gpus=0)
    with pytest.raises(ValueError, match=r"index\.device"):
        resolve_device("tpu")
    index = build_index(unit_vectors(10), "dot")
    assert to_device(index, "cpu") is index and to_cpu(index) is index
    assert search_knob(index) is None


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="no GPU visible to FAISS")
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_gpu_search_matches_cpu(factory):
    xb, xq = clustered(3000), clustered(20, seed=2)
    index = build_index(xb, "cosine", factory, ids=np.arange(3000) + 10)
    gpu = to_device(index, resolve_device("gpu"))
    params = search_parameters(index, {NPROBE: 16})
    _, cpu_ids = index.search(xq, 10, params=params)
    _, gpu_ids = gpu.search(xq, 10, params=params)
    assert recall_at_k(gpu_ids, cpu_ids) > 0.99
    assert to_cpu(gpu) is index


@pytest.mark.parametrize("name", ["flat", "ivf", "hnsw", "ivfpq", "ivfpq_refine"])
def test_shipped_index_configs_build(name):
    from pathlib import Path

    from omegaconf import OmegaConf

    node = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "index" / f"{name}.yaml")
    cfg = IndexConfig.parse(node)
    x = clustered(2000)
    index = build_index(x, "cosine", cfg.factory_for(len(x), x.shape[1]))
    search_parameters(index, cfg.search_params)  # the configured settings apply to this index
    assert index.ntotal == 2000 and index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert (search_knob(index) is None) == (name == "flat")
