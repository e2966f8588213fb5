"""Incremental catalogue updates, without retraining: add or replace items, remove items.

New or changed items are encoded by the bundle's own item tower from their features, through the
fitted features' transform that training used (features.json); items unknown at training time
have no id embedding, so their vector comes from their other features alone. The index is updated in place of a copy (IVF and flat indexes remove and
add by id; HNSW, which cannot remove, is rebuilt) and everything is written as a new bundle
version, then switched to atomically (see serve.versions). The search settings chosen at
export are kept.

    update_items("runs/ml/bundle", upsert=pl.DataFrame({"item_id": [9001], "genres": [["Drama"]],
                 "year": [1999], "title": ["New"]}), remove=[42])

An upsert frame has an item_id column and any of the items table's own columns (those the source
gave: title, genres, tags, ...); a column it omits is missing for its rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from features.schema import ITEM_ID
from features.serving import ACTIVE, CONTENT_ONLY, SERVING_COLUMNS
from features.vocab import Vocabulary
from serve.bundle import Bundle, write_files
from serve.errors import BundleError, RequestError, UnknownItemError
from serve.export import encode_items
from serve.files import MANIFEST, PLOT
from serve.index import remove_ids
from serve.versions import CURRENT, VERSION_NAME, read_bundle, write_version

log = logging.getLogger(__name__)

_ROW = "_row"  # a temporary column: the row an item takes in the updated table


@dataclass
class UpdateReport:
    version: str  # the version written
    base_version: str | None  # the version it was made from
    added: list = field(default_factory=list)  # raw ids new to the catalogue (or re-added)
    replaced: list = field(default_factory=list)  # raw ids whose features and vector changed
    removed: list = field(default_factory=list)  # raw ids taken out of the index

    def to_dict(self) -> dict:
        return asdict(self)


def update_items(
    path: str | Path,
    upsert: pl.DataFrame | None = None,
    remove: Sequence[object] | None = None,
) -> UpdateReport:
    """Write a new bundle version at `path` with `upsert` items added or replaced (columns
    item_id and any of the items table's own columns) and `remove` ids taken out."""
    bundle = _read_root(Path(path))
    items = bundle.items
    vocab = Vocabulary.from_ids(items[ITEM_ID])
    report = UpdateReport(version="", base_version=bundle.version)
    removed = _removed_rows(items, vocab, remove or [], report)
    new_rows = _feature_rows(upsert, items) if upsert is not None and upsert.height else None
    vectors, active = bundle.item_vectors.copy(), items[ACTIVE].to_numpy().copy()
    target = replaced = np.zeros(0, dtype=np.int64)
    if new_rows is not None:
        target = _target_rows(new_rows, vocab, items.height, removed, active, report)
        old = target[target < items.height]
        replaced = old[active[old]]  # rows whose old vectors are in the index
        items, vectors, active = _upserted(bundle, items, vectors, active, new_rows, target)
    active[removed] = False
    items = items.with_columns(pl.Series(ACTIVE, active))
    index = _updated_index(bundle.index, np.concatenate([replaced, removed]), vectors, target)
    version = _write_version(bundle, items, vectors, index, report)
    report.version = version.name
    log.info("bundle %s: %s from %s (%s)", bundle.root, version.name, bundle.version, MANIFEST)
    return report


# -- the steps ----------------------------------------------------------------------------------
def _read_root(path: Path) -> Bundle:
    """The bundle at `path`, which must be a bundle's root, not one of its version directories."""
    if VERSION_NAME.match(path.name) and (path.parent / CURRENT).is_file():
        raise BundleError(f"{path}: a version directory; update the bundle root {path.parent}")
    return read_bundle(path)


def _removed_rows(
    items: pl.DataFrame, vocab: Vocabulary, remove: Sequence[object], report: UpdateReport
) -> np.ndarray:
    """Rows of the `remove` ids still active (removing a removed item does nothing)."""
    rows = []
    for raw in remove:
        row = vocab.index_of(raw)
        if row is None:
            raise UnknownItemError(raw, int(items[ACTIVE].sum()), "remove")
        if items[ACTIVE][row]:
            rows.append(row)
            report.removed.append(items[ITEM_ID][row])
    return np.asarray(rows, dtype=np.int64)


def _target_rows(
    new_rows: pl.DataFrame,
    vocab: Vocabulary,
    num_rows: int,
    removed: np.ndarray,
    active: np.ndarray,
    report: UpdateReport,
) -> np.ndarray:
    """The row each upserted item takes: its own when the catalogue has it (even removed), else
    a new one past the last. Reports each item as added or replaced."""
    raw_ids = new_rows[ITEM_ID].to_list()
    rows = [vocab.index_of(raw) for raw in raw_ids]
    removing = set(removed.tolist())
    for raw, row in zip(raw_ids, rows, strict=True):
        if row in removing:
            raise RequestError("remove", raw, "names an item that is both upserted and removed")
    fresh = iter(range(num_rows, num_rows + sum(row is None for row in rows)))
    for raw, row in zip(raw_ids, rows, strict=True):
        (report.replaced if row is not None and active[row] else report.added).append(raw)
    return np.array([next(fresh) if row is None else row for row in rows], dtype=np.int64)


def _upserted(
    bundle: Bundle,
    items: pl.DataFrame,
    vectors: np.ndarray,
    active: np.ndarray,
    new_rows: pl.DataFrame,
    target: np.ndarray,
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """(items, vectors, active) with `new_rows` at rows `target`, their vectors from the item
    tower: rows are replaced in place and new ones appended, so row numbers (FAISS ids) never
    change."""
    old = target[target < items.height]  # a replaced item keeps its content_only mark
    marks = np.ones(len(target), dtype=bool)
    marks[target < items.height] = items[CONTENT_ONLY].to_numpy()[old]
    new_rows = new_rows.with_columns(pl.Series(CONTENT_ONLY, marks))
    updated = (
        pl.concat(
            [
                items.with_columns(pl.Series(_ROW, np.arange(items.height), dtype=pl.Int64)),
                new_rows.with_columns(pl.Series(_ROW, target, dtype=pl.Int64)),
            ]
        )
        .unique(_ROW, keep="last")
        .sort(_ROW)
        .drop(_ROW)
    )
    num_fresh = updated.height - items.height
    vectors = np.concatenate([vectors, np.zeros((num_fresh, vectors.shape[1]), np.float32)])
    vectors[target] = encode_items(bundle.scorer, bundle.features, new_rows, rows=target)
    active = np.concatenate([active, np.zeros(num_fresh, dtype=bool)])
    active[target] = True
    return updated, vectors, active


def _updated_index(
    index: faiss.Index, out: np.ndarray, vectors: np.ndarray, added: np.ndarray
) -> faiss.Index:
    """A copy of `index` without the rows `out` and with the rows `added` (from `vectors`)."""
    index = faiss.clone_index(index)
    if len(out):
        index = remove_ids(index, out, vectors)
    if len(added):
        index.add_with_ids(np.ascontiguousarray(vectors[added], dtype=np.float32), added)
    return index


def _write_version(
    bundle: Bundle,
    items: pl.DataFrame,
    vectors: np.ndarray,
    index: faiss.Index,
    report: UpdateReport,
) -> Path:
    """The updated catalogue written as the bundle's next version (towers, users, search
    settings and operating-point plot as they were), with this update in the manifest."""
    update = {
        "base_version": bundle.version,
        "added": len(report.added),
        "replaced": len(report.replaced),
        "removed": len(report.removed),
    }
    updates = [*bundle.manifest.get("updates", []), update]

    def fill(directory: Path) -> None:
        if (bundle.path / PLOT).is_file():
            (directory / PLOT).write_bytes((bundle.path / PLOT).read_bytes())
        write_files(
            directory,
            scorer=bundle.scorer,
            features=bundle.features,
            vectors=vectors,
            items_df=items,
            users_df=bundle.users,
            index=index,
            index_manifest=dict(bundle.manifest["index"]),
            extra={"updates": updates, "num_train_users": bundle.manifest.get("num_train_users")},
        )

    return write_version(bundle.root, fill)


# -- upserted rows in the item table's schema ---------------------------------------------------
def _feature_rows(upsert: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """`upsert` in the bundle's item-table schema: its columns cast to the table's types, the
    table's other columns missing (null), active."""
    own = [c for c in items.columns if c not in SERVING_COLUMNS]
    _check_upsert(upsert, own)
    missing = pl.Series([None] * upsert.height)  # a column not given: nulls, cast to its type
    given = {c: upsert[c] for c in upsert.columns}
    given[ACTIVE] = pl.Series([True] * upsert.height, dtype=pl.Boolean)
    frame = pl.DataFrame({c: given.get(c, missing) for c in items.columns})
    try:
        return frame.cast(dict(items.schema))
    except pl.exceptions.PolarsError as err:
        raise RequestError(
            "upsert",
            dict(upsert.schema),
            f"columns must fit the bundle's item table {dict(items.schema)} ({err})",
        ) from None


def _check_upsert(upsert: pl.DataFrame, columns: list[str]) -> None:
    """An item_id column of unique, non-null ids, and no column the items table lacks."""
    if ITEM_ID not in upsert.columns or set(upsert.columns) - set(columns):
        raise RequestError(
            "upsert", upsert.columns, f"must have an item_id column and only {columns}"
        )
    ids = upsert[ITEM_ID]
    if ids.null_count() or ids.n_unique() != upsert.height:
        bad = ids.filter(ids.is_null() | ids.is_duplicated()).to_list()
        raise RequestError("upsert", bad, "item_id must be non-null and unique")
