"""benchmarks/reload_load.py: its verdict logic on hand-made answers (which answers are mixes,
which requests fall in a reload's window, what the targets say). No server, nothing timed."""

from __future__ import annotations

import json
import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import reload_load

K = 3
# Version 1 ranks items 1, 2, 3 for user 7; version 2 removed item 1. Expected lists are k + 2
# deep, with scores; user 8's items 12 and 13 are tied within TIE in version 1.
EXPECTED = {
    "v000001": {
        7: ((1, 2, 3, 4, 5), (0.9, 0.8, 0.7, 0.6, 0.5)),
        8: ((11, 12, 13, 14, 15), (0.9, 0.8, 0.8 - 1e-7, 0.6, 0.5)),
    },
    "v000002": {
        7: ((2, 3, 4, 5, 6), (0.8, 0.7, 0.6, 0.5, 0.4)),
        8: ((11, 12, 13, 14, 15), (0.9, 0.8, 0.8 - 1e-7, 0.6, 0.5)),
    },
}


def body(version, items) -> bytes:
    return json.dumps(
        {"user_id": 7, "version": version, "items": [{"item_id": i, "score": 0} for i in items]}
    ).encode()


def test_an_answer_of_the_version_it_names_is_ok():
    assert reload_load.classify("v000001", 7, (1, 2, 3), EXPECTED, K) == "ok"
    assert reload_load.classify("v000002", 7, (2, 3, 4), EXPECTED, K) == "ok"


def test_items_tied_within_tie_may_swap_places():
    assert reload_load.classify("v000001", 8, (11, 13, 12), EXPECTED, K) == "ok"
    assert reload_load.classify("v000001", 7, (2, 1, 3), EXPECTED, K) == "no_version"


def test_mixes_are_told_apart():
    # names v2 but holds v1's list (the removed item 1 is in it)
    assert reload_load.classify("v000002", 7, (1, 2, 3), EXPECTED, K) == "other_version"
    # half of one, half of the other
    assert reload_load.classify("v000002", 7, (1, 3, 4), EXPECTED, K) == "no_version"
    assert reload_load.classify("v000009", 7, (2, 3, 4), EXPECTED, K) == "unknown_version"
    assert reload_load.classify(None, 7, (2, 3, 4), EXPECTED, K) == "unknown_version"
    # too short, or an item twice
    assert reload_load.classify("v000002", 7, (2, 3), EXPECTED, K) == "no_version"
    assert reload_load.classify("v000002", 7, (2, 2, 3), EXPECTED, K) == "no_version"


def test_read_answer():
    assert reload_load.read_answer(body("v000002", [2, 3, 4])) == ("v000002", (2, 3, 4))
    assert reload_load.read_answer(b"not json") is None
    assert reload_load.read_answer(b'{"items": []}') is None


def test_next_update_changes_answers_and_puts_removed_items_back():
    users = [7, 8]
    lists = EXPECTED["v000001"]
    first = reload_load.next_update(1, users, lists, [], new_id=100)
    assert first["remove"] == [1]  # the first-ranked item of the first half
    assert first["upsert"] == list(range(100, 100 + reload_load.NEW_ITEMS))
    second = reload_load.next_update(2, users, lists, first["remove"], new_id=100)
    assert second == {"remove": [11], "upsert": [1]}
    assert reload_load.changed_share(EXPECTED["v000001"], EXPECTED["v000002"], K) == 0.5


def summary(records, windows=((4.0, 6.0),), reloaded=(("v000001", 0.0), ("v000002", 5.0))):
    return reload_load.summarise(
        records, list(windows), list(reloaded), EXPECTED, K, span=(0.0, 10.0)
    )


def test_summarise_counts_windows_errors_mixes_and_stale_answers():
    records = [
        (7, 1.0, 1.1, 200, body("v000001", [1, 2, 3])),  # outside, ok
        (7, 3.9, 4.1, 200, body("v000001", [1, 2, 3])),  # overlaps the window: during
        (7, 5.5, 5.6, 200, body("v000002", [2, 3, 4])),  # during, ok
        (7, 5.7, 5.8, 200, body("v000001", [1, 2, 3])),  # sent after v2 returned: stale, not a mix
        (7, 7.0, 7.1, 200, body("v000002", [1, 2, 3])),  # outside, a mix
        (7, 8.0, 8.2, 503, b"{}"),  # an error
        (7, 9.0, 9.3, None, "ConnectionResetError()"),  # an error
        (7, 9.5, 9.6, 200, b"<html>"),  # an error: unreadable
        (8, 9.7, 9.8, 200, body("v000002", [11, 12, 13])),  # ok, but v1's list is the same
    ]
    figures = summary(records)
    assert figures["latency"]["during"]["requests"] == 3
    assert figures["latency"]["outside"]["requests"] == 6
    assert figures["latency"]["all"]["requests"] == 9
    assert figures["latency"]["during"]["seconds"] == 2.0
    assert figures["errors"]["count"] == 3
    answers = figures["answers"]
    assert answers["checked"] == 6
    assert answers["mixes"] == 1
    assert answers["mix_kinds"] == {"other_version": 1}
    assert answers["per_version"] == {"v000001": 3, "v000002": 3}
    assert answers["stale_after_reload"] == 1
    assert answers["ok_unlike_other_versions"] == 4  # every ok answer of user 7 tells v1 from v2


def test_verdicts():
    clean = summary([(7, 1.0, 1.1, 200, body("v000001", [1, 2, 3]))])
    clean["rss"] = {"ratio_end_to_first_reload": 1.05}
    clean["reloads"] = [{}, {}]
    setup = {"clients": 32, "seconds": 60}
    assert all(v["met"] for v in reload_load.verdicts(clean, setup).values())

    short = reload_load.verdicts(clean, {"clients": 8, "seconds": 10})
    assert not short["the issue's setup (32 clients, 60 s, 2 reloads)"]["met"]

    grown = {**clean, "rss": {"ratio_end_to_first_reload": 1.11}}
    (rss,) = [v for name, v in reload_load.verdicts(grown, setup).items() if "RSS" in name]
    assert not rss["met"]

    one_reload = {**clean, "reloads": [{}]}
    mix = reload_load.verdicts(one_reload, setup)["every answer from one version (never a mix)"]
    assert not mix["met"]

    bad = summary(
        [(7, 1.0, 1.1, 200, body("v000002", [1, 2, 3])), (7, 2.0, 2.1, 500, b"")],
    )
    bad["rss"], bad["reloads"] = {"ratio_end_to_first_reload": None}, [{}, {}]
    verdicts = reload_load.verdicts(bad, setup)
    assert not any(v["met"] for name, v in verdicts.items() if "setup" not in name)
    assert verdicts["zero errors"] == {"errors": 1, "requests": 2, "met": False}
