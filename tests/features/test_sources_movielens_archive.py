"""MovieLens archives: read from a local copy, or "downloaded" from a local HTTP server serving a
small zip the test builds. Never a real download."""

import hashlib
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest

from features import prepare, schema
from features.sources import ChecksumError, MovieLensArchive
from features.sources import movielens_archive as archive_module
from features.split import TemporalSplit
from tests.conftest import shared_dataset
from tests.features.test_sources import IDS_AND_HISTORY

ML1M = {
    "ratings.dat": "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n2::30::5::978300275\n",
    "movies.dat": "10::Toy Story (1995)::Animation|Children's|Comedy\n20::Léon: The Professional (1994)::Crime|Drama\n30::Heat (1995)::Action\n",
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::02139-4307\n",
}
ML25M = {
    "ratings.csv": "userId,movieId,rating,timestamp\n1,10,4.5,100\n1,20,2.0,101\n2,10,5.0,102\n",
    "movies.csv": 'movieId,title,genres\n10,Toy Story (1995),Animation|Comedy\n20,"Heat, The (1995)",Action\n',
}


def _folder(root, name, files):
    folder = root / name
    folder.mkdir(parents=True)
    for file, text in files.items():
        (folder / file).write_bytes(text.encode("latin-1"))
    return folder


def _zip(path, name, files) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for file, text in files.items():
            zf.writestr(f"{name}/{file}", text.encode("latin-1"))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server over tmp_path/served; BASE_URL points at it."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(archive_module, "BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    yield served
    httpd.shutdown()
    httpd.server_close()


def _pin_md5(monkeypatch, version, md5):
    spec = archive_module.ARCHIVES[version]
    monkeypatch.setitem(
        archive_module.ARCHIVES, version, archive_module.ArchiveSpec(spec.folder, md5, spec.layout)
    )


def test_ml1m_from_a_local_folder(tmp_path):
    _folder(tmp_path / "data", "ml-1m", ML1M)
    for root in (tmp_path / "data", tmp_path / "data" / "ml-1m"):  # the parent or the folder itself
        source = MovieLensArchive(
            "1m", root=str(root), cache_dir=str(tmp_path / "cache"), min_rating=None
        )
        df = source.interactions().collect()
        assert df.columns == ["user_id", "item_id", "rating", "timestamp"] and df.height == 4
    items = source.items()
    assert items.row(1) == (20, "Léon: The Professional (1994)", ["Crime", "Drama"], 1994)
    assert source.users().columns == ["user_id", "age", "gender", "occupation", "zip_prefix"]
    assert source.users().rows() == [
        (1, 1, "F", "K-12 student", "480"),
        (2, 56, "M", "self-employed", "700"),
        (3, 25, "M", "scientist", "021"),
    ]
    assert source.table_path("user") == str(root / "users.dat")
    assert (
        MovieLensArchive("1m", root=str(root)).interactions().collect().height == 3
    )  # rating >= 4


def test_ml25m_csv_layout_and_prepare(tmp_path):
    _folder(tmp_path, "ml-25m", ML25M)
    source = MovieLensArchive("25m", root=str(tmp_path), min_rating=None)
    assert source.interactions().collect()["rating"].to_list() == [4.5, 2.0, 5.0]
    assert source.items()["genres"].to_list() == [["Animation", "Comedy"], ["Action"]]
    assert source.users() is None and source.table_path("user") == "movielens_archive users"
    # 3 ratings from 2 users are too few to hold any out (see test_bad_files): all train.
    split = TemporalSplit(val_ratio=0.0, test_ratio=0.0)
    assert prepare(source, split, IDS_AND_HISTORY).num_items == 2


def test_ml25m_with_tags_has_item_and_user_tags(tmp_path):
    tags = "userId,movieId,tag,timestamp\n1,10,Pixar,99\n2,20,noir,1\n"
    _folder(tmp_path, "ml-25m", {**ML25M, "tags.csv": tags})
    source = MovieLensArchive("25m", root=str(tmp_path), min_rating=None)
    assert source.items()["tags"].to_list() == [["pixar"], ["noir"]]
    # User 1's median rating time is 100.5: the tag at 99 is earlier; user 2's (102) too.
    assert source.users().rows() == [(1, ["pixar"]), (2, ["noir"])]


def test_local_zip_is_checked_and_extracted(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    _pin_md5(monkeypatch, "1m", _zip(tmp_path / "data" / "ml-1m.zip", "ml-1m", ML1M))
    source = MovieLensArchive("1m", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert source.folder == tmp_path / "cache" / "ml-1m"
    assert source.interactions().collect().height == 3


def test_missing_local_copy_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no ratings\.dat in .* and no ml-1m\.zip in"):
        MovieLensArchive("1m", root=str(tmp_path)).interactions()
    with pytest.raises(ValueError, match="version must be one of"):
        MovieLensArchive("7m")


def test_download_checks_md5_and_extracts(tmp_path, monkeypatch, server):
    _pin_md5(monkeypatch, "1m", _zip(server / "ml-1m.zip", "ml-1m", ML1M))
    cache = tmp_path / "cache"
    source = MovieLensArchive("1m", cache_dir=str(cache), min_rating=None)
    assert source.interactions().collect().height == 4
    assert sorted(p.name for p in cache.iterdir()) == [
        "ml-1m",
        "ml-1m.zip",
    ]  # no temporary files left
    # A second source finds the extracted copy without the server.
    (server / "ml-1m.zip").unlink()
    assert MovieLensArchive("1m", cache_dir=str(cache)).interactions().collect().height == 3


def test_checksum_mismatch_discards_the_download(tmp_path, monkeypatch, server):
    _zip(server / "ml-1m.zip", "ml-1m", ML1M)
    _pin_md5(monkeypatch, "1m", "0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(
        ChecksumError, match=r"ml-1m\.zip: MD5 [0-9a-f]{32} does not match the published 0{32}"
    ):
        MovieLensArchive("1m", cache_dir=str(cache)).interactions()
    assert list(cache.iterdir()) == []  # nothing half-written where a finished file would be


def test_no_download_when_turned_off(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        MovieLensArchive("1m", cache_dir=str(tmp_path), allow_download=False).interactions()


def test_malformed_dat_names_file_and_fields(tmp_path):
    _folder(tmp_path, "ml-1m", {**ML1M, "ratings.dat": "1::10::5\n"})
    with pytest.raises(
        schema.SchemaError, match=r"ratings\.dat: expected 4 '::'-separated fields .* found 3"
    ):
        MovieLensArchive("1m", root=str(tmp_path)).interactions()


def test_published_md5s_are_pinned():
    assert {v: s.md5 for v, s in archive_module.ARCHIVES.items()} == {
        "100k": "0e33842e24a9c977be4e0107933c0723",
        "1m": "c4d9eecfca2ab87c1945afe126590906",
        "20m": "cd245b17a1ae2cc31bb14903e1204af3",
        "25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    }


def test_real_ml100k_through_the_archive_source():
    source = MovieLensArchive("100k", root=str(shared_dataset("ml-100k")), min_rating=None)
    assert source.interactions().collect().height == 100_000
    assert source.users().height == 943 and "zip_prefix" in source.users().columns
    assert source.items().schema["genres"] == pl.List(pl.String)
