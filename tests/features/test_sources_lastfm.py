import csv
from collections import Counter

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import prepare, schema
from features.sources import LastFMHetRec
from features.split import RandomSplit
from tests.conftest import shared_dataset
from tests.features.test_sources import IDS_AND_HISTORY


def _write_lastfm(root):
    root.mkdir(exist_ok=True)
    (root / "user_artists.dat").write_text(
        "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n3\t51\t7\n"
    )
    (root / "artists.dat").write_text(
        'id\tname\turl\tpictureURL\n51\tDuran "Duran\tu\tp\n52\tMorcheeba\tu\tp\n53\tNever Played\tu\t\n'
    )
    (root / "tags.dat").write_bytes(
        "tagID\ttagValue\n1\tPop\n2\tnew wave\n3\ttrip-hop\n4\tpop \n5\tcafé\n".encode("latin-1")
    )
    (root / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n"
        "2\t51\t2\t1\t4\t2009\n3\t51\t2\t1\t4\t2009\n2\t51\t1\t1\t4\t2009\n3\t51\t4\t1\t4\t2009\n"
        "2\t51\t5\t1\t4\t2009\n2\t52\t3\t1\t4\t2009\n"
    )
    return root


def test_all_pairs_are_positives_and_artists_get_top_tags(tmp_path):
    source = LastFMHetRec(str(_write_lastfm(tmp_path / "lastfm")), top_tags=2, max_tags=3)
    df = source.interactions().collect()
    assert df.rows() == [(2, 51, 13883.0), (2, 52, 11690.0), (3, 51, 7.0)]
    items = source.items()
    expected = pl.DataFrame(
        {
            "item_id": [51, 52, 53],
            "title": ['Duran "Duran', "Morcheeba", "Never Played"],
            # "Pop" and "pop " are one tag (2 uses), tied with "new wave" (2): ties by name.
            "genres": [["new wave", "pop"], ["trip-hop"], []],
            "tags": [["new wave", "pop", "café"], ["trip-hop"], []],  # 53: kept, untagged
        }
    )
    assert_frame_equal(items, expected)
    untagged = LastFMHetRec(str(tmp_path / "lastfm"), top_tags=0, max_tags=0).items()
    assert untagged["genres"].to_list() == untagged["tags"].to_list() == [[], [], []]
    assert source.users() is None
    assert source.table_path("item") == str(tmp_path / "lastfm" / "artists.dat")


def test_missing_column_names_the_file(tmp_path):
    root = _write_lastfm(tmp_path / "lastfm")
    (root / "user_artists.dat").write_text("userID\tartistID\n2\t51\n")
    with pytest.raises(
        schema.SchemaError, match=r"user_artists\.dat: expected 3 '\\t'-separated fields"
    ):
        LastFMHetRec(str(root)).interactions()
    (root / "user_artists.dat").write_text("userID\tartistID\tweight\n2\tabc\t1\n")
    with pytest.raises(
        schema.SchemaError, match=r"column 'item_id' has type String, expected int\. Found columns"
    ):
        LastFMHetRec(str(root)).interactions()


def test_real_lastfm_recbole_protocol():
    source = LastFMHetRec(str(shared_dataset("lastfm-hetrec2011-2k")))
    df = source.interactions().collect()
    assert df.height == 92_834 and df["user_id"].n_unique() == 1_892
    items = source.items()
    assert items.height == 17_632 and items["genres"].list.len().max() == 5
    assert items["tags"].list.len().max() == 20
    data = prepare(source, RandomSplit(seed=0), IDS_AND_HISTORY)
    assert len(data.train) + data.val.num_interactions + data.test.num_interactions == 92_834
    # RecBole's per-user 8:1:1: a user with 2 pairs has one in test, with 3 or more one in each.
    per_user = df.group_by("user_id").len()["len"]
    assert len(data.test) == (per_user >= 2).sum() and len(data.val) == (per_user >= 3).sum()


def _dat(path, encoding="utf-8") -> list[dict[str, str]]:
    with open(path, encoding=encoding, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_real_lastfm_artists_names_and_tags_match_the_raw_files():
    folder = shared_dataset("lastfm-hetrec2011-2k")
    names = {int(r["id"]): r["name"] for r in _dat(folder / "artists.dat")}
    tag_names = {r["tagID"]: r["tagValue"] for r in _dat(folder / "tags.dat", "latin-1")}
    counts: dict[int, Counter] = {}
    for r in _dat(folder / "user_taggedartists.dat"):
        tag = tag_names[r["tagID"]].strip().lower()
        if tag:
            counts.setdefault(int(r["artistID"]), Counter())[tag] += 1
    items = LastFMHetRec(str(folder)).items()
    for artist in (1, 89, 289, 292, 18_745):  # MALICE MIZER, Lady Gaga, Britney Spears, ...
        ranked = sorted(counts.get(artist, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))
        row = items.filter(pl.col("item_id") == artist).row(0, named=True)
        assert row["title"] == names[artist]
        assert row["tags"] == [tag for tag, _ in ranked[:20]]
        assert row["genres"] == row["tags"][:5]
    assert sum(1 for n in items["tags"].list.len() if n) == len(counts.keys() & names.keys())
