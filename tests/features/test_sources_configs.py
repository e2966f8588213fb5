"""Every data config composes and builds its source; the real shared datasets load through them."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from features import prepare
from features.sources import (
    Interactions,
    LastFMHetRec,
    LightGCN,
    MovieLens100K,
    MovieLensArchive,
    S3Rec,
)
from features.sources.synthetic_log import SyntheticLog
from tests.conftest import ROOT, shared_dataset
from tests.features.test_sources import IDS_AND_HISTORY

SOURCES = {
    "lastfm_hetrec": LastFMHetRec,
    "movielens_100k": MovieLens100K,
    "movielens_archive": MovieLensArchive,
    "bars_electronics": LightGCN,
    "lightgcn": LightGCN,
    "s3rec_beauty": S3Rec,
    "synthetic_log": SyntheticLog,
}


def compose_config(output_dir, overrides):
    """The real config (conftest's tiny overrides are for synthetic data only)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train", overrides=[f"paths.output_dir={output_dir}", *overrides]
        )


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_data_config_builds_its_source(tmp_path, name):
    cfg = compose_config(tmp_path, [f"data={name}"])
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule.source, SOURCES[name])


def test_interactions_config_takes_a_column_mapping(tmp_path):
    cfg = compose_config(
        tmp_path,
        [
            "data=interactions",
            "data.source.path=x.csv",
            "data.source.columns={user_id: uid, item_id: iid}",
        ],
    )
    source = instantiate(cfg.data).source
    assert isinstance(source, Interactions) and dict(source.columns) == {
        "user_id": "uid",
        "item_id": "iid",
    }
    assert source.table_paths == {"user": None, "item": None}


def test_every_data_config_is_covered():
    names = {p.stem for p in (ROOT / "conf" / "data").glob("*.yaml")}
    assert names - {"movielens", "synthetic", "interactions"} <= set(SOURCES)


def test_real_bars_electronics_through_its_config(tmp_path):
    shared_dataset("bars-amazon-electronics")
    cfg = compose_config(tmp_path, ["data=bars_electronics"])
    datamodule = instantiate(cfg.data)
    data = prepare(datamodule.source, instantiate(cfg.data.split), IDS_AND_HISTORY)
    assert data.num_users == 1_435 and data.test.num_interactions == 4_044
