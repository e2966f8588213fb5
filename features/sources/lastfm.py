"""Last.fm HetRec 2011 (`hetrec2011-lastfm-2k`): 1,892 users, 17,632 artists.

- `user_artists.dat`: userID, artistID, weight (play count), tab-separated with a header. Every
  row is an implicit positive (the RecBole protocol keeps all 92,834 and filters nothing); the
  play count arrives in `rating` for anyone who wants to threshold or weight it.
- `artists.dat`: id, name, url, pictureURL (UTF-8, tab-separated; names hold stray quotes).
- `tags.dat`: tagID, tagValue (Latin-1); `user_taggedartists.dat`: userID, artistID, tagID,
  day, month, year.

`items()`: item_id, title (the artist's name), genres (its `top_tags` most-assigned tags) and
tags (its `max_tags` most-assigned tags), one row per artist of artists.dat; tags are stripped
and lower-cased ("Hip-Hop " and "hip-hop" are one), ties broken by name, most used first. There
is no users table (users() is None).

There is no interaction time (the tag dates are when users tagged, not when they listened), so
splits are random (`RandomSplit`), not temporal. Licence: non-commercial use (see readme.txt).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import normalised_tag, positives, table_label
from features.sources.text import read_delimited

TAG_ID, TAG, COUNT = "tag_id", "tag", "count"


def scan_user_artists(path: str | Path) -> pl.LazyFrame:
    """user_artists.dat → user_id, item_id, rating (the play count, Float64)."""
    kinds = {schema.USER_ID: "int", schema.ITEM_ID: "int", schema.RATING: "float"}
    lf = read_delimited(path, list(kinds), kinds, "lastfm user_artists", has_header=True)
    return lf.with_columns(pl.col(schema.RATING).cast(pl.Float64))


def scan_artists(path: str | Path) -> pl.LazyFrame:
    """artists.dat → item_id, title."""
    columns = [schema.ITEM_ID, schema.TITLE, "url", "picture_url"]
    lf = read_delimited(
        path,
        columns,
        {schema.ITEM_ID: "int", schema.TITLE: "str"},
        "lastfm artists",
        has_header=True,
    )
    return lf.select(schema.ITEM_ID, schema.TITLE)


def scan_tags(path: str | Path) -> pl.LazyFrame:
    """tags.dat (Latin-1) → tag_id, tag."""
    kinds = {TAG_ID: "int", TAG: "str"}
    return read_delimited(
        path, list(kinds), kinds, "lastfm tags", has_header=True, encoding="latin-1"
    )


def scan_tag_assignments(path: str | Path) -> pl.LazyFrame:
    """user_taggedartists.dat → item_id, tag_id (one row per user's tag on an artist)."""
    columns = [schema.USER_ID, schema.ITEM_ID, TAG_ID, "day", "month", "year"]
    kinds = {schema.USER_ID: "int", schema.ITEM_ID: "int", TAG_ID: "int"}
    lf = read_delimited(path, columns, kinds, "lastfm user_taggedartists", has_header=True)
    return lf.select(schema.ITEM_ID, TAG_ID)


def top_tags(
    assignments_lf: pl.LazyFrame, tags_lf: pl.LazyFrame, heads: Mapping[str, int]
) -> pl.LazyFrame:
    """item_id, then for each `column: k` of `heads` the artist's `k` most-assigned tags (ties
    by name), most frequent first; artists without tags are left out."""
    named = assignments_lf.join(tags_lf, on=TAG_ID, how="inner").with_columns(
        normalised_tag(pl.col(TAG))
    )
    counted = (
        named.filter(pl.col(TAG) != "")
        .group_by(schema.ITEM_ID, TAG)
        .agg(pl.len().alias(COUNT))
        .sort([schema.ITEM_ID, COUNT, TAG], descending=[False, True, False])
    )
    return counted.group_by(schema.ITEM_ID, maintain_order=True).agg(
        pl.col(TAG).head(k).alias(column) for column, k in heads.items()
    )


@dataclass
class LastFMHetRec:
    """The hetrec2011-lastfm-2k folder; each artist's most-assigned tags become its genres (the
    `top_tags` first) and its tags (the `max_tags` first)."""

    root: str
    top_tags: int = 5  # tags per artist kept as genres (0: none)
    max_tags: int = 20  # tags per artist kept as tags (0: none)
    min_plays: float | None = (
        None  # keep pairs with at least this play count (None: all, as RecBole)
    )
    name: str = "lastfm_hetrec"

    @property
    def folder(self) -> Path:
        return Path(self.root).expanduser()

    def interactions(self) -> pl.LazyFrame:
        return positives(scan_user_artists(self.folder / "user_artists.dat"), self.min_plays)

    def items(self) -> pl.DataFrame:
        """item_id, title, genres, tags: every artist of artists.dat ([] for untagged ones)."""
        path = self.folder / "artists.dat"
        heads = {schema.GENRES: self.top_tags, schema.TAGS: self.max_tags}
        tagged_lf = top_tags(
            scan_tag_assignments(self.folder / "user_taggedartists.dat"),
            scan_tags(self.folder / "tags.dat"),
            heads,
        )
        no_tags = pl.lit([], pl.List(pl.String))
        items_df = (
            scan_artists(path)
            .join(tagged_lf, on=schema.ITEM_ID, how="left", maintain_order="left")
            .with_columns(pl.col(column).fill_null(no_tags) for column in heads)
            .collect()
        )
        return schema.validate_table(items_df, schema.ITEM_ID, f"{self.name} items", path)

    def users(self) -> None:
        return None

    def table_path(self, side: str) -> str:
        return table_label(self.name, side, {"item": self.folder / "artists.dat"})
