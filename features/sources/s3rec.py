"""The S3-Rec sequence datasets (RUCAIBox/CIKM2020-S3Rec `data/`: Beauty, LastFM, ...), a folder
holding for each dataset `<dataset>`:

- `<dataset>.txt`: one line per user, `user item1 item2 ...`, the items in chronological order.
  The file gives order, not time: an interaction's `timestamp` is the item's position in its
  user's sequence (0 the first), so `TemporalSplit` holds out each user's last items.
- `<dataset>_item2attributes.json`: `{"item": [attribute, ...], ...}`, the item's attribute ids
  (Beauty: its categories and brand; LastFM: the tags users gave the artist, one per use).

`items()` is item_id (Int64), attributes (list of str: the attribute ids, each once, in the order
first written); there is no users table (`users()` is None). A user's repeated item is a row each
time (`features.prepare` keeps the first).

Ids are integers separated by any whitespace; blank lines are skipped. Anything else is a
`schema.DataFileError` naming the file and the line: an id that is not a 64-bit integer, a line
with a user and no items, a user on two lines, bytes that are not UTF-8, an empty or binary
file; in the JSON, text that is not JSON, a key that is not an integer item id, or a value that
is not a list of integer attribute ids. A missing file is a FileNotFoundError naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import schema
from features.schema import SAMPLE_SIZE, DataFileError
from features.sources.base import existing_file, table_label
from features.sources.checks import CANONICAL_INTEGER, check_text, decode_utf8

ATTRIBUTES = "attributes"  # the items table's list of attribute ids
LINE, LINE_NO, IDS = "line", "line_no", "ids"
FORMAT = "'user item1 item2 ...' lines"


def sequences_path(root: str | Path, dataset: str) -> Path:
    return Path(root).expanduser() / f"{dataset}.txt"


def attributes_path(root: str | Path, dataset: str) -> Path:
    return Path(root).expanduser() / f"{dataset}_item2attributes.json"


def _lines(path: Path, what: str) -> pl.DataFrame:
    """The file's non-blank lines: line_no (1-based, as an editor counts), ids (the tokens)."""
    check_text(path, what)
    text = decode_utf8(path.read_bytes(), path, what)
    return (
        pl.DataFrame({LINE: [text]})
        .select(pl.col(LINE).str.split("\n"))
        .explode(LINE)
        .with_row_index(LINE_NO, offset=1)
        .select(LINE_NO, pl.col(LINE).str.extract_all(r"\S+").alias(IDS))
        .filter(pl.col(IDS).list.len() > 0)
    )


def _integer_ids(tokens_df: pl.DataFrame, column: str, path: Path, what: str) -> pl.Series:
    """`tokens_df[column]` (text tokens) as Int64, or a DataFileError naming the first bad line."""
    ids = tokens_df[column].cast(pl.Int64, strict=False)
    bad = ids.is_null()
    if bad.any():
        bad_df = tokens_df.filter(bad)
        raise DataFileError(
            path,
            column,
            f"expected integer ids in {FORMAT}: line {bad_df[LINE_NO][0]} has {column} "
            f"{bad_df[column][0]!r}, not a 64-bit integer ({bad_df.height} such values)",
            bad_df[column].unique(maintain_order=True).head(SAMPLE_SIZE).to_list(),
            what=what,
        )
    return ids.alias(column)


def _check_lines(lines_df: pl.DataFrame, users: pl.Series, path: Path, what: str) -> None:
    """A DataFileError for the first line with a user and no items, or the first user that is on
    two lines (naming both lines)."""
    if lines_df.height == 0:
        raise DataFileError(path, None, f"has no {FORMAT}", what=what)
    no_items = lines_df.filter(pl.col(IDS).list.len() == 1)
    if no_items.height:
        raise DataFileError(
            path,
            schema.ITEM_ID,
            f"line {no_items[LINE_NO][0]} has a user and no items, expected {FORMAT} "
            f"({no_items.height} such lines)",
            no_items[IDS].list.first().head(SAMPLE_SIZE).to_list(),
            what=what,
        )
    repeated = (
        pl.DataFrame([lines_df[LINE_NO], users])
        .filter(pl.col(schema.USER_ID).is_duplicated())
        .group_by(schema.USER_ID, maintain_order=True)
        .agg(pl.col(LINE_NO))
    )
    if repeated.height:
        user, line_nos = repeated.row(0)
        raise DataFileError(
            path,
            schema.USER_ID,
            f"user {user} is on lines {', '.join(map(str, line_nos))}; a user's sequence is one "
            f"line ({repeated.height} users on more than one)",
            repeated[schema.USER_ID].head(SAMPLE_SIZE).to_list(),
            what=what,
        )


def read_sequences(path: str | Path, what: str = "s3rec sequences") -> pl.DataFrame:
    """A `user item1 item2 ...` file → user_id, item_id, timestamp (the item's 0-based position in
    its user's line), one row per item, in file order; checked as the module docstring says."""
    path = existing_file(path, what)
    lines_df = _lines(path, what)
    users = _integer_ids(
        lines_df.select(LINE_NO, pl.col(IDS).list.first().alias(schema.USER_ID)),
        schema.USER_ID,
        path,
        what,
    )
    _check_lines(lines_df, users, path, what)
    pairs_df = (
        lines_df.select(
            LINE_NO,
            pl.col(IDS).list.slice(1).alias(schema.ITEM_ID),
            users,
        )
        .explode(schema.ITEM_ID)
        .with_columns(pl.int_range(pl.len()).over(LINE_NO).alias(schema.TIMESTAMP))
    )
    items = _integer_ids(pairs_df, schema.ITEM_ID, path, what)
    return pairs_df.select(schema.USER_ID, items, pl.col(schema.TIMESTAMP).cast(pl.Int64))


def _is_attribute_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(a, int) and not isinstance(a, bool) and -(2**63) <= a < 2**63 for a in value
    )


def read_item_attributes(path: str | Path, what: str = "s3rec item attributes") -> pl.DataFrame:
    """An `item2attributes.json` → item_id (Int64), attributes (list of str, each id once, in the
    order first written), one row per key in file order; checked as the module docstring says."""
    path = existing_file(path, what)
    check_text(path, what)
    text = decode_utf8(path.read_bytes(), path, what)
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFileError(
            path,
            None,
            f"is not JSON: {error.msg} at line {error.lineno}, column {error.colno}",
            what=what,
        ) from None
    if not isinstance(mapping, dict) or not mapping:
        raise DataFileError(
            path,
            None,
            "expected a non-empty JSON object mapping item ids to lists of attribute ids, "
            f"found {type(mapping).__name__} {str(mapping)[:60]!r}",
            what=what,
        )
    keys = pl.Series(schema.ITEM_ID, list(mapping), dtype=pl.String)
    not_ids = keys.filter(~keys.str.contains(CANONICAL_INTEGER))
    if not_ids.len():
        raise DataFileError(
            path,
            schema.ITEM_ID,
            f"{not_ids.len()} keys are not integer item ids without leading zeros "
            f"(first {not_ids[0]!r})",
            not_ids.head(SAMPLE_SIZE).to_list(),
            what=what,
        )
    bad = [key for key, value in mapping.items() if not _is_attribute_list(value)]
    if bad:
        raise DataFileError(
            path,
            ATTRIBUTES,
            f"item {bad[0]} maps to {str(mapping[bad[0]])[:60]!r}, expected a list of 64-bit "
            f"integer attribute ids ({len(bad)} such items)",
            bad,
            what=what,
        )
    item_ids = keys.str.to_integer(strict=False)
    if item_ids.is_null().any():
        beyond = keys.filter(item_ids.is_null())
        raise DataFileError(
            path,
            schema.ITEM_ID,
            f"{beyond.len()} keys are beyond 64-bit integers (first {beyond[0]!r})",
            beyond.head(SAMPLE_SIZE).to_list(),
            what=what,
        )
    attributes = pl.Series(ATTRIBUTES, list(mapping.values()), dtype=pl.List(pl.Int64))
    return pl.DataFrame([item_ids.cast(pl.Int64), attributes]).with_columns(
        pl.col(ATTRIBUTES).list.unique(maintain_order=True).cast(pl.List(pl.String))
    )


@dataclass
class S3Rec:
    """One dataset of an S3-Rec data folder: `<dataset>.txt` and `<dataset>_item2attributes.json`
    under `root`."""

    root: str
    dataset: str = "Beauty"  # the files' stem: Beauty, LastFM, ...

    @property
    def name(self) -> str:
        return f"s3rec_{self.dataset.lower()}"

    def interactions(self) -> pl.LazyFrame:
        """user_id, item_id, timestamp (the item's position in its user's sequence)."""
        path = sequences_path(self.root, self.dataset)
        return read_sequences(path, f"{self.name} sequences").lazy()

    def items(self) -> pl.DataFrame:
        """item_id, attributes: every item of the attributes file."""
        path = attributes_path(self.root, self.dataset)
        items_df = read_item_attributes(path, f"{self.name} item attributes")
        return schema.validate_table(items_df, schema.ITEM_ID, f"{self.name} items", path)

    def users(self) -> None:
        return None

    def table_path(self, side: str) -> str:
        return table_label(self.name, side, {"item": attributes_path(self.root, self.dataset)})
