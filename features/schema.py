"""Column contracts for every frame that enters `features/`, and the one check that enforces them.

A source may produce ids as integers or strings; everything else has one type. `validate`
raises a `SchemaError` that names the source, each missing or mistyped column, and the
columns that were actually found, so a user can fix their file without reading our code.

A source that reads a file raises `DataFileError` (a `SchemaError`) when the file cannot be read
or a column holds bad values: it carries the file's `path`, the file's `column` (None when the
file as a whole is bad) and a short sample of the bad `values`, and its message names all three.

A side table (a source's `users()` / `items()`) is keyed by `user_id` / `item_id`, one row per
key, and holds any other columns of the `TABLE_KINDS`; `validate_table` checks that contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
SPLIT = "split"  # "train" / "val" / "test", only on sources that ship their own split

TITLE = "title"
GENRES = "genres"
YEAR = "year"
TAGS = "tags"  # list of str: tags users gave an item, or tags a user gave

KEYS = {"user": USER_ID, "item": ITEM_ID}  # a side's table is keyed by its id column

# A column's allowed kinds: "id" (any integer or string), "int", "float", "bool", "str", "str_list".
INTERACTIONS = {USER_ID: "id", ITEM_ID: "id"}
INTERACTIONS_OPTIONAL = {TIMESTAMP: "int", RATING: "float", SPLIT: "str"}
TABLE_KINDS = ("int", "float", "bool", "str", "str_list")  # a side table's non-key columns

SPLIT_NAMES = ("train", "val", "test")


SAMPLE_SIZE = 5  # bad values quoted in a DataFileError


class SchemaError(ValueError):
    """A frame does not have the columns or types a stage needs."""


class DataFileError(SchemaError):
    """A data file cannot be read, or one of its columns holds bad values.

    `path`: the file; `column`: the file's column name, None when the file as a whole is bad
    (empty, not text, unreadable); `values`: up to `SAMPLE_SIZE` distinct bad values as read
    (None or "NaN" for missing ones, whose row numbers the message gives). `what` names the
    dataset file in the message ("u.data (movielens-100k ratings): ...").
    """

    def __init__(
        self,
        path: object,
        column: str | None,
        problem: str,
        values: Sequence[object] = (),
        what: str | None = None,
    ) -> None:
        self.path = str(path)
        self.column = column
        self.values = tuple(values)[:SAMPLE_SIZE]
        self.problem = problem
        self.what = what
        where = self.path if what is None else f"{self.path} ({what})"
        if column is not None and repr(column) not in problem:
            problem = f"column {column!r}: {problem}"
        message = f"{where}: {problem}"
        shown = [_shown(v) for v in self.values]
        if shown and not all(text in problem for text in shown):
            message += f"; sample: {', '.join(shown)}"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.path, self.column, self.problem, self.values, self.what))


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind_ok(kind: str, dtype: pl.DataType) -> bool:
    """Whether `dtype` is of the column kind `kind` (see the kinds above)."""
    if kind == "id":
        return dtype.is_integer() or dtype == pl.String
    if kind == "int":
        return dtype.is_integer()
    if kind == "float":
        return dtype.is_numeric()
    if kind == "bool":
        return dtype == pl.Boolean
    if kind == "str":
        return dtype == pl.String
    if kind == "str_list":
        return isinstance(dtype, pl.List) and dtype.inner == pl.String
    raise ValueError(f"unknown column kind {kind!r}")


def validate(
    lf: pl.LazyFrame,
    required: Mapping[str, str],
    source: str,
    optional: Mapping[str, str] | None = None,
) -> pl.LazyFrame:
    """Check `lf` has every `required` column (and that present `optional` ones are typed right).

    Returns `lf` unchanged so the check can sit inside a pipeline.
    """
    schema = lf.collect_schema()
    problems = []
    for name, kind in required.items():
        if name not in schema:
            problems.append(f"missing column {name!r} (expected {kind})")
        elif not kind_ok(kind, schema[name]):
            problems.append(f"column {name!r} has type {schema[name]}, expected {kind}")
    for name, kind in (optional or {}).items():
        if name in schema and not kind_ok(kind, schema[name]):
            problems.append(f"column {name!r} has type {schema[name]}, expected {kind}")
    if problems:
        found = ", ".join(f"{n}: {t}" for n, t in schema.items())
        raise SchemaError(f"{source}: " + "; ".join(problems) + f". Found columns: {found}")
    return lf


def table_kind(dtype: pl.DataType) -> str | None:
    """The `TABLE_KINDS` kind of a side table column's `dtype`, None when it is of none."""
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    return next((k for k in ("bool", "str", "str_list") if kind_ok(k, dtype)), None)


def validate_table(
    df: pl.DataFrame,
    key: str,
    source: str,
    path: object | None = None,
    key_column: str | None = None,
) -> pl.DataFrame:
    """Check that `df` is a side table: an id column `key` with a value in every row and no value
    twice, and every other column of a `TABLE_KINDS` kind. Returns `df` unchanged.

    The error names the `source`; with `path` (the file the table was read from) it is a
    `DataFileError` for that file and its `key_column` (the file's name for `key`, default `key`).
    """

    def error(column: str, problem: str, values: Sequence[object] = ()) -> SchemaError:
        if path is None:
            return SchemaError(f"{source}: column {column!r}: {problem}")
        return DataFileError(path, column, problem, values, what=source)

    file_key = key_column or key
    if key not in df.columns:
        found = ", ".join(f"{n}: {t}" for n, t in df.schema.items())
        raise error(file_key, f"missing key column {file_key!r}. Found columns: {found}")
    keys = df[key]
    if not kind_ok("id", keys.dtype):
        raise error(file_key, f"key column {file_key!r} has type {keys.dtype}, expected id")
    if keys.null_count():
        raise error(file_key, f"{keys.null_count()} of {df.height} rows have no {key}", [None])
    duplicated = keys.filter(keys.is_duplicated())
    if duplicated.len():
        sample = duplicated.unique(maintain_order=True).head(SAMPLE_SIZE).to_list()
        raise error(
            file_key,
            f"{duplicated.n_unique()} {key} values appear more than once in key column "
            f"{file_key!r} (a table holds one row per {key})",
            sample,
        )
    for name, dtype in df.schema.items():
        if name != key and table_kind(dtype) is None:
            raise error(name, f"column {name!r} has type {dtype}, expected one of {TABLE_KINDS}")
    return df
