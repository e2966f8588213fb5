"""The retrievability audit (serve/audit.py) against figures worked out by hand or by brute force
in plain Python: the head / mid / tail cut of a constructed count vector, the Gini coefficient
against its pairwise definition, every audit metric of planted top-k lists, the audit that
serve.evaluate's rankings feed, held-out pairs read against a bundle, and `python -m serve
audit` on the planted bundle."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import polars as pl
import pytest

from features.prepare import HeldOut
from features.schema import ITEM_ID, USER_ID
from features.sources.synthetic import ITEM_ID_OFFSET, USER_ID_OFFSET
from features.vocab import Vocabulary
from serve.__main__ import main
from serve.audit import HEAD, MID, TAIL, AuditGroups, gini, popularity_buckets
from serve.errors import RequestError
from serve.evaluate import evaluate_bundle, evaluate_popularity, evaluate_vectors
from serve.held_out import held_out_pairs, held_out_table

K = 20
BUCKET_NAMES = {HEAD: "head", MID: "mid", TAIL: "tail"}


def _held_out(users: list[int], rows: list[list[int]]) -> HeldOut:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    items = np.array([i for r in rows for i in r], dtype=np.int64)
    return HeldOut(np.array(users, dtype=np.int64), indptr, items)


def _brute_audit(
    tops: list[list[int]],
    relevant: list[list[int]],
    activity: list[int],
    bucket: list[int],
    catalogue: list[int],
    stage: str = "test",
) -> dict[str, float]:
    """Every audit figure from its definition, user by user (serve/audit.py's docstring); `tops`,
    `relevant` and `activity` per audited user (-1 in `relevant`: an item the catalogue lacks,
    tail; -1 in `tops`: no item)."""
    out = {}
    for b, name in BUCKET_NAMES.items():
        recalls, ndcgs = [], []
        for top, rel in zip(tops, relevant, strict=True):
            mine = [i for i in rel if (bucket[i] if i >= 0 else TAIL) == b]
            if not mine:
                continue
            found = [p for p, item in enumerate(top[:K]) if item >= 0 and item in mine]
            recalls.append(len(found) / len(mine))
            idcg = sum(1 / math.log2(p + 2) for p in range(min(len(mine), K)))
            ndcgs.append(sum(1 / math.log2(p + 2) for p in found) / idcg)
        if recalls:  # a bucket without held-out targets has no figure
            out[f"{stage}_{name}/recall@20"] = sum(recalls) / len(recalls)
            out[f"{stage}_{name}/ndcg@20"] = sum(ndcgs) / len(ndcgs)
    median = float(np.median(activity))
    recall = [
        len([i for i in top[:K] if i >= 0 and i in rel]) / len(rel)
        for top, rel in zip(tops, relevant, strict=True)
    ]
    for name, keep in (("light", lambda a: a <= median), ("heavy", lambda a: a > median)):
        chosen = [r for r, a in zip(recall, activity, strict=True) if keep(a)]
        if chosen:
            out[f"{stage}_users_{name}/recall@20"] = sum(chosen) / len(chosen)
    slots = [i for top in tops for i in top[:K] if i >= 0]
    times = [slots.count(i) for i in catalogue]
    out[f"{stage}/coverage@20"] = sum(t > 0 for t in times) / len(catalogue)
    out[f"{stage}/gini@20"] = _pairwise_gini(times)
    out[f"{stage}/tail_share@20"] = sum(bucket[i] == TAIL for i in slots) / len(slots)
    return out


def _pairwise_gini(x: list[float]) -> float:
    """The mean absolute difference of every ordered pair over twice the mean."""
    n, total = len(x), sum(x)
    if total == 0:
        return 0.0
    return sum(abs(a - b) for a, b in itertools.product(x, x)) / (2 * n * total)


# -- the cut and the coefficient, by hand -------------------------------------------------------
def test_items_are_cut_into_thirds_of_the_interactions():
    # 100 interactions. Most first: item 0 (30) starts at 0, items 1-6 (10 each) at 30, 40, 50,
    # 60, 70, 80; items 7, 8 at 90, 95; item 9 has none. Head: starting below 33.3; mid: 66.7.
    counts = np.array([30, 10, 10, 10, 10, 10, 10, 5, 5, 0])
    expected = [HEAD, HEAD, MID, MID, MID, TAIL, TAIL, TAIL, TAIL, TAIL]
    assert popularity_buckets(counts).tolist() == expected
    # The same counts in another order: the same cut, equal counts taken in row order.
    order = np.random.default_rng(0).permutation(len(counts))
    shuffled = popularity_buckets(counts[order])
    pairs = zip(counts[order].tolist(), shuffled.tolist(), strict=True)
    assert sorted(pairs) == sorted(zip(counts.tolist(), expected, strict=True))
    tens = np.flatnonzero(counts[order] == 10)  # rows of the 10s: head, mid, mid, mid, tail, tail
    assert shuffled[tens].tolist() == [HEAD, MID, MID, MID, TAIL, TAIL]
    assert popularity_buckets(np.zeros(4, np.int64)).tolist() == [TAIL] * 4


def test_gini_is_the_pairwise_definition():
    rng = np.random.default_rng(1)
    for size in (1, 2, 7, 40):
        x = rng.integers(0, 9, size)
        assert gini(x) == pytest.approx(_pairwise_gini(x.tolist()))
    assert gini(np.full(5, 3)) == 0.0
    assert gini(np.array([0, 0, 0, 12])) == pytest.approx(3 / 4)  # one item takes every slot
    assert gini(np.zeros(3)) == 0.0


def test_groups_from_seen_items_count_items_and_users():
    seen = (np.array([0, 3, 3, 4]), np.array([0, 1, 0, 2]))  # user 1 has seen nothing
    groups = AuditGroups.from_seen(seen, num_items=4)
    assert groups.user_activity.tolist() == [3, 0, 1]
    # Counts 2, 1, 1, 0 (of 4): items 0, 1, 2 start at 0, 2, 3 interactions.
    assert groups.item_bucket.tolist() == [HEAD, MID, TAIL, TAIL]


# -- planted top-k lists ------------------------------------------------------------------------
def test_every_audit_figure_of_planted_lists():
    """Ten items, five users; the audit fed in two chunks equals the definitions."""
    bucket = [HEAD, HEAD, MID, MID, MID, TAIL, TAIL, TAIL, TAIL, TAIL]
    activity = [1, 9, 4, 4, 7, 2, 5]  # user rows 0..6; the audited users are 1..5
    groups = AuditGroups(np.array(bucket), np.array(activity))
    users = [1, 2, 3, 4, 5]
    relevant = [[0, 5], [2, -1], [6], [0, 1, 3], [9]]  # -1: an item the catalogue lacks
    tops = [
        [5, 3, 0] + [-1] * 17,  # both found: head at 3, tail at 1
        [2] + list(range(3, 10)) + [-1] * 12,
        [0, 1, 2, 3, 4, 5, 6],  # fewer than k ranked
        [7, 8, 9, 1] + [-1] * 16,
        [8, 0, 1] + [-1] * 17,
    ]
    width = max(len(t) for t in tops)
    top_items = np.array([t + [-1] * (width - len(t)) for t in tops])
    held_out = _held_out(users, relevant)
    audit = groups.start(candidates=np.arange(9))  # item 9 is not in the catalogue
    audit.update(held_out, np.array([0, 1]), top_items[:2])
    audit.update(held_out, np.array([2, 3, 4]), top_items[2:])
    expected = _brute_audit(tops, relevant, activity[1:6], bucket, list(range(9)))
    assert audit.compute() == pytest.approx(expected)
    # By hand: the median activity is 4, so users 2, 3 and 5 (4, 4, 2) are light, 1 and 4 heavy.
    assert expected["test_users_light/recall@20"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert expected["test_users_heavy/recall@20"] == pytest.approx((1 + 1 / 3) / 2)
    assert expected["test_head/recall@20"] == pytest.approx((1 + 0.5) / 2)
    assert expected["test/coverage@20"] == pytest.approx(1.0)


def test_an_empty_bucket_or_user_group_has_no_figure():
    groups = AuditGroups(np.array([HEAD, HEAD, TAIL]), np.array([3, 3]))
    audit = groups.start()
    audit.update(_held_out([0, 1], [[0], [1]]), np.array([0, 1]), np.array([[0, 2], [2, 0]]))
    metrics = audit.compute("val")
    assert metrics["val_head/recall@20"] == pytest.approx(0.5)
    assert "val_mid/recall@20" not in metrics and "val_mid/ndcg@20" not in metrics
    assert metrics["val_users_light/recall@20"] == pytest.approx(0.5)  # both at the median
    assert "val_users_heavy/recall@20" not in metrics
    assert metrics["val/tail_share@20"] == pytest.approx(0.5)


# -- through serve.evaluate ---------------------------------------------------------------------
def test_popularity_ranked_for_the_audit_at_least_k_deep():
    """ks (1, 3) alone would rank 3 deep: the audit counts the top 20 of 30 items."""
    rng = np.random.default_rng(2)
    counts = rng.permutation(30) * 3 + 1
    seen_rows = [[int(i) for i in rng.choice(30, 4, replace=False)] for _ in range(8)]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen_rows])])
    seen = (indptr.astype(np.int64), np.concatenate(seen_rows).astype(np.int64))
    users = [0, 2, 3, 5, 7]
    relevant = [[int(i) for i in rng.choice(30, 3, replace=False)] for _ in users]
    groups = AuditGroups.from_seen(seen, 30)
    held_out = _held_out(users, relevant)
    metrics = evaluate_popularity(counts, seen, held_out, (1, 3), audit=groups)
    by_count = sorted(range(30), key=lambda i: -counts[i])
    tops = [[i for i in by_count if i not in seen_rows[u]][:K] for u in users]
    activity = [len(seen_rows[u]) for u in users]
    expected = _brute_audit(tops, relevant, activity, groups.item_bucket.tolist(), list(range(30)))
    assert {k: v for k, v in metrics.items() if k in expected} == pytest.approx(expected)
    assert "test/recall@3" in metrics and "test/recall@20" not in metrics
    # Without the audit, the result is the ranking metrics alone.
    assert evaluate_popularity(counts, seen, held_out, (1, 3)).keys() == {
        k for k in metrics if k not in expected
    }


def test_vectors_over_candidates_audit_the_candidates_only():
    rng = np.random.default_rng(3)
    user_vectors, item_vectors = rng.normal(size=(4, 5)), rng.normal(size=(50, 5))
    candidates = np.arange(10, 50)
    seen = (np.array([0, 2, 2, 3, 5]), np.array([11, 12, 40, 13, 14]))
    relevant = [[20, 21], [30], [5, 44], [15]]  # item 5 is no candidate: a miss
    groups = AuditGroups(np.arange(50) % 3, np.array([4, 0, 1, 2]))
    held_out = _held_out([0, 1, 2, 3], relevant)
    metrics = evaluate_vectors(
        user_vectors, item_vectors, seen, held_out, (5,), candidates=candidates, audit=groups
    )
    seen_rows = [[11, 12], [], [40], [13, 14]]
    tops = [
        sorted((int(i) for i in candidates if i not in seen_rows[u]), key=lambda i: -s[i])[:K]
        for u, s in enumerate(user_vectors @ item_vectors.T)
    ]
    expected = _brute_audit(
        tops, relevant, [4, 0, 1, 2], groups.item_bucket.tolist(), candidates.tolist()
    )
    assert {k: v for k, v in metrics.items() if k in expected} == pytest.approx(expected)


# -- held-out pairs and the command line --------------------------------------------------------
def test_held_out_pairs_round_trip_and_count_what_the_bundle_lacks():
    users = Vocabulary.from_ids(pl.Series([10, 20, 30]))
    items = Vocabulary.from_ids(pl.Series(["a", "b", "c"]))
    held_out = _held_out([0, 2], [[1, -1], [2, 0, 1]])
    table = held_out_table(held_out, users, items)
    assert table[ITEM_ID].to_list() == ["b", None, "c", "a", "b"]
    back = held_out_pairs(table, users, items)
    for name in ("users", "indptr", "items"):
        np.testing.assert_array_equal(getattr(back.held_out, name), getattr(held_out, name))
    more = pl.concat(
        [
            table.with_columns(pl.col(USER_ID).cast(pl.String)),  # string ids are cast
            pl.DataFrame({USER_ID: ["99", "99", "x"], ITEM_ID: ["a", "b", "a"]}),
            pl.DataFrame({USER_ID: ["10"], ITEM_ID: ["zz"]}),
        ]
    )
    counted = held_out_pairs(more, users, items)
    assert (counted.unknown_users, counted.unknown_user_pairs) == (2, 3)
    assert counted.unknown_items == 2  # the null and "zz", both kept as misses
    assert counted.held_out.items.tolist() == [1, -1, -1, 2, 0, 1]
    with pytest.raises(RequestError) as caught:
        held_out_pairs(table.rename({ITEM_ID: "movie"}), users, items)
    assert caught.value.field == "held_out"
    with pytest.raises(RequestError):
        held_out_pairs(pl.DataFrame({USER_ID: [1], ITEM_ID: ["a"]}), users, items)


def test_audit_command_on_the_planted_bundle(bundle_dir, recommender, tmp_path, capsys):
    """The bundle's lists (as `recommend` serves them) and popularity's (a sort of the seen
    counts), audited by brute force, equal what the command prints."""
    rng = np.random.default_rng(4)
    user_rows = np.sort(rng.choice(recommender.user_vocab.frame.height, 40, replace=False))
    seen_lists = recommender.bundle.users["seen"].to_list()
    relevant = [
        [int(i) for i in rng.choice(recommender.num_items, 3, replace=False)] for _ in user_rows
    ]
    relevant[0] = [*relevant[0], -1]  # an item the bundle does not know
    pairs = pl.DataFrame(
        {
            USER_ID: [
                int(u) + USER_ID_OFFSET for u, r in zip(user_rows, relevant, strict=True) for _ in r
            ]
            + [1],  # a user the bundle does not know
            ITEM_ID: [i + ITEM_ID_OFFSET if i >= 0 else 1 for r in relevant for i in r] + [1],
        }
    )
    path = tmp_path / "held_out.csv"
    pairs.write_csv(path)
    assert main(["audit", "--bundle", str(bundle_dir), "--held-out", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["users"], out["unknown_users"], out["unknown_items"]) == (40, 1, 1)
    metrics = out["metrics"]

    row_of = {item_id: row for row, item_id in enumerate(recommender.item_id_list)}
    served = recommender.recommend_many([int(u) + USER_ID_OFFSET for u in user_rows], k=K)
    tops = [[row_of[r.item_id] for r in recs] for recs in served]
    activity = [len(seen_lists[u]) for u in user_rows]
    counts = np.bincount(np.concatenate(seen_lists), minlength=recommender.num_items)
    bucket = popularity_buckets(counts).tolist()
    catalogue = list(range(recommender.num_items))
    model = _brute_audit(tops, relevant, activity, bucket, catalogue)
    by_count = sorted(catalogue, key=lambda i: -counts[i])
    popular = [[i for i in by_count if i not in seen_lists[u]][:K] for u in user_rows]
    baseline = _brute_audit(popular, relevant, activity, bucket, catalogue)
    for name, value in model.items():
        assert metrics[name] == pytest.approx(value), name
        assert metrics[f"popularity/{name}"] == pytest.approx(baseline[name]), name
    assert metrics == pytest.approx(evaluate_bundle(recommender, _held_out(user_rows, relevant)))


def test_audit_command_without_held_out_pairs_exits_2(bundle_dir, capsys):
    assert main(["audit", "--bundle", str(bundle_dir)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --held-out must be given") and error.count("\n") == 1
