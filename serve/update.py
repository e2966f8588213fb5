"""Incremental catalogue updates, without retraining: add or replace items, remove items.

New or changed items are encoded by the bundle's own item tower from their features (genres,
release year); items unknown at training time have no id embedding, so their vector comes from
their features alone. The index is updated in place of a copy (IVF and flat indexes remove and
add by id; HNSW, which cannot remove, is rebuilt) and everything is written as a new bundle
version, then switched to atomically (see serve.bundle). The search settings chosen at export
are kept.

    update_items("runs/ml/bundle", upsert=pl.DataFrame({"item_id": [9001], "genres": [["Drama"]],
                 "year": [1999], "title": ["New"]}), remove=[42])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from features.vocab import Vocabulary
from serve.bundle import (
    ACTIVE,
    CURRENT,
    MANIFEST,
    PLOT,
    VERSION_NAME,
    encode_items,
    read_bundle,
    write_files,
    write_version,
)
from serve.errors import BundleError, RequestError, UnknownItemError
from serve.index import remove_ids

log = logging.getLogger(__name__)

UPSERT_COLUMNS = ("item_id", "title", "genres", "year", "year_bucket")


@dataclass
class UpdateReport:
    version: str  # the version written
    base_version: str | None  # the version it was made from
    added: list = field(default_factory=list)  # raw ids new to the catalogue (or re-added)
    replaced: list = field(default_factory=list)  # raw ids whose features and vector changed
    removed: list = field(default_factory=list)  # raw ids taken out of the index
    unknown_genres: list = field(
        default_factory=list
    )  # genre names the item tower has no embedding for

    def to_dict(self) -> dict:
        return asdict(self)


def _genre_lookup(items: pl.DataFrame) -> dict[str, int]:
    pairs = (
        items.select(pl.col("genres").explode(), pl.col("genre_ids").explode())
        .drop_nulls()
        .unique()
    )
    return dict(zip(pairs["genres"].to_list(), pairs["genre_ids"].to_list(), strict=True))


def _year_lookup(items: pl.DataFrame) -> dict[int, int]:
    pairs = items.select("year", "year_bucket").drop_nulls().unique()
    return dict(zip(pairs["year"].to_list(), pairs["year_bucket"].to_list(), strict=True))


def _feature_rows(upsert: pl.DataFrame, items: pl.DataFrame, report: UpdateReport) -> pl.DataFrame:
    """`upsert` in the bundle's item-table schema (genre names → ids, year → bucket)."""
    unknown_cols = set(upsert.columns) - set(UPSERT_COLUMNS)
    if "item_id" not in upsert.columns or unknown_cols:
        raise RequestError(
            "upsert", upsert.columns, f"must have an item_id column and only {list(UPSERT_COLUMNS)}"
        )
    if upsert["item_id"].null_count() or upsert["item_id"].n_unique() != upsert.height:
        ids = upsert["item_id"]
        bad = ids.filter(ids.is_null() | ids.is_duplicated()).to_list()
        raise RequestError("upsert", bad, "item_id must be non-null and unique")
    genres_of = _genre_lookup(items)
    buckets_of = _year_lookup(items)
    has_genres = "genre_ids" in items.columns and "genres" in items.columns
    genre_lists = upsert["genres"].to_list() if "genres" in upsert.columns else [[]] * upsert.height
    years = upsert["year"].to_list() if "year" in upsert.columns else [None] * upsert.height
    given_buckets = (
        upsert["year_bucket"].to_list()
        if "year_bucket" in upsert.columns
        else [None] * upsert.height
    )
    genre_ids, buckets = [], []
    for item_id, names, year, bucket in zip(
        upsert["item_id"].to_list(), genre_lists, years, given_buckets, strict=True
    ):
        names = list(names or [])
        unknown = [g for g in names if g not in genres_of]
        report.unknown_genres.extend(g for g in unknown if g not in report.unknown_genres)
        genre_ids.append([genres_of[g] for g in names if g in genres_of] if has_genres else [])
        if bucket is None:
            if year is None:
                bucket = 0
            elif year in buckets_of:
                bucket = buckets_of[year]
            else:
                raise RequestError(
                    "upsert",
                    year,
                    f"item {item_id!r}: year must be one a catalogue item has "
                    "(or give its year_bucket column)",
                )
        buckets.append(int(bucket))
    if report.unknown_genres:
        log.warning("genres unknown to the item tower are ignored: %s", report.unknown_genres)
    rows = {
        "item_id": upsert["item_id"],
        "title": upsert["title"]
        if "title" in upsert.columns
        else pl.Series([None] * upsert.height, dtype=pl.String),
        "genres": pl.Series([list(g or []) for g in genre_lists], dtype=pl.List(pl.String)),
        "year": pl.Series(years, dtype=items.schema.get("year", pl.Int32)),
        "genre_ids": pl.Series(genre_ids, dtype=pl.List(pl.Int64)),
        "year_bucket": pl.Series(buckets, dtype=pl.Int64),
        ACTIVE: pl.Series([True] * upsert.height, dtype=pl.Boolean),
    }
    frame = pl.DataFrame(
        {
            c: rows[c] if c in rows else pl.Series(c, [None] * upsert.height, dtype=items.schema[c])
            for c in items.columns
        }
    )
    try:
        return frame.cast(dict(items.schema))
    except pl.exceptions.PolarsError as err:
        raise RequestError(
            "upsert",
            dict(upsert.schema),
            f"columns must fit the bundle's item table {dict(items.schema)} ({err})",
        ) from None


def update_items(
    path: str | Path,
    upsert: pl.DataFrame | None = None,
    remove: Sequence[object] | None = None,
) -> UpdateReport:
    """Write a new bundle version at `path` with `upsert` items added or replaced (columns
    item_id and any of title, genres, year, year_bucket) and `remove` ids taken out."""
    path = Path(path)
    if VERSION_NAME.match(path.name) and (path.parent / CURRENT).is_file():
        raise BundleError(f"{path}: a version directory; update the bundle root {path.parent}")
    bundle = read_bundle(path)
    items = bundle.items
    vocab = Vocabulary.from_ids(items["item_id"])
    report = UpdateReport(version="", base_version=bundle.version)
    upsert = (
        upsert
        if upsert is not None
        else pl.DataFrame({"item_id": []}, schema={"item_id": vocab.dtype})
    )
    remove = list(remove or [])

    remove_rows = []
    for raw in remove:
        row = vocab.index_of(raw)
        if row is None:
            raise UnknownItemError(raw, int(items[ACTIVE].sum()), "remove")
        if items[ACTIVE][row]:
            remove_rows.append(row)
            report.removed.append(items["item_id"][row])
    new_rows = _feature_rows(upsert, items, report) if upsert.height else None

    vectors = bundle.item_vectors.copy()
    index = faiss.clone_index(bundle.index)
    active = items[ACTIVE].to_numpy().copy()
    if new_rows is not None:
        rows = []
        for raw in new_rows["item_id"].to_list():
            row = vocab.index_of(raw)
            if row is not None and row in remove_rows:
                raise RequestError("remove", raw, "names an item that is both upserted and removed")
            rows.append(row)
        existing = np.array([r for r in rows if r is not None], dtype=np.int64)
        num_fresh = sum(r is None for r in rows)
        fresh_rows = iter(range(items.height, items.height + num_fresh))
        target = np.array([next(fresh_rows) if r is None else r for r in rows], dtype=np.int64)
        for raw, r in zip(new_rows["item_id"].to_list(), rows, strict=True):
            (report.replaced if r is not None and active[r] else report.added).append(raw)
        # Replace rows in place, append new ones: row numbers (FAISS ids) never change.
        updated = (
            pl.concat(
                [
                    items.with_columns(pl.Series("_row", np.arange(items.height), dtype=pl.Int64)),
                    new_rows.with_columns(pl.Series("_row", target, dtype=pl.Int64)),
                ]
            )
            .unique("_row", keep="last")
            .sort("_row")
            .drop("_row")
        )
        new_vectors = encode_items(bundle.scorer, new_rows, rows=target)
        vectors = np.concatenate([vectors, np.zeros((num_fresh, vectors.shape[1]), np.float32)])
        vectors[target] = new_vectors
        active = np.concatenate([active, np.zeros(num_fresh, dtype=bool)])
        in_index = existing[active[existing]]
        active[target] = True
        items = updated
    else:
        in_index = np.zeros(0, dtype=np.int64)
    if remove_rows:
        active[np.asarray(remove_rows)] = False
    items = items.with_columns(pl.Series(ACTIVE, active))

    out_of_index = np.concatenate([in_index, np.asarray(remove_rows, dtype=np.int64)])
    if len(out_of_index):
        index = remove_ids(index, out_of_index, vectors)
    if new_rows is not None:
        index.add_with_ids(np.ascontiguousarray(vectors[target], dtype=np.float32), target)

    index_manifest = dict(bundle.manifest["index"])
    updates = [
        *bundle.manifest.get("updates", []),
        {
            "base_version": bundle.version,
            "added": len(report.added),
            "replaced": len(report.replaced),
            "removed": len(report.removed),
        },
    ]

    def fill(directory: Path) -> None:
        if (bundle.path / PLOT).is_file():
            (directory / PLOT).write_bytes((bundle.path / PLOT).read_bytes())
        write_files(
            directory,
            scorer=bundle.scorer,
            vectors=vectors,
            items_df=items,
            users_df=bundle.users,
            index=index,
            index_manifest=index_manifest,
            extra={"updates": updates},
        )

    version = write_version(bundle.root, fill)
    report.version = version.name
    log.info("bundle %s: %s from %s (%s)", bundle.root, version.name, bundle.version, MANIFEST)
    return report
