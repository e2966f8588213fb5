"""The towers' inputs from a bundle's tables: the fitted features' one transform (the same as in
training, features.fitting) over the items and users tables, and the users' stored histories
mapped to the item id's codes. Tensors out, ready for `Scorer.encode_items` / `encode_users`."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from features.arrays import padded
from features.fitted import FittedFeatures, history_codes
from features.schema import USER_ID, DataFileError
from features.serving import HISTORY, SERVING_COLUMNS
from serve.errors import RequestError


def item_inputs(features: FittedFeatures, items_df: pl.DataFrame) -> dict[str, torch.Tensor]:
    """The item tower's inputs for every row of `items_df`."""
    return {name: torch.from_numpy(a) for name, a in features.item.transform(items_df).items()}


def item_codes(features: FittedFeatures, items_df: pl.DataFrame) -> np.ndarray:
    """(I + 1,) each row's item id code, then -1 (see features.fitted.item_codes_of): the item id
    feature's transform alone (no text model is loaded for it)."""
    id_feature = next((f for f in features.item.features if f.feature.kind == "id"), None)
    if id_feature is None:
        return np.full(items_df.height + 1, -1, dtype=np.int64)
    return np.append(id_feature.transform(items_df).astype(np.int64), -1)


class UserInputs:
    """The user tower's inputs for rows of a users table: its features transformed once, and
    histories (item rows) mapped to item id codes when asked."""

    def __init__(self, features: FittedFeatures, users_df: pl.DataFrame, codes: np.ndarray):
        self.features, self.codes = features, codes
        self.tables = {n: torch.from_numpy(a) for n, a in features.user.transform(users_df).items()}
        history = features.user.spec.of_kind("history")
        self.history_name = None if history is None else history.name
        self.length = features.history_length
        self.pad = len(codes) - 1  # the padding row: num_items
        self.histories = padded(users_df[HISTORY], self.pad, self.length)  # (U, L) item rows
        # Whether the user tower reads anything a request's features can give (not only an id).
        id_feature = features.user.spec.of_kind("id")
        self.describes_users = any(
            id_feature is None or name != id_feature.name for name in self.tables
        )
        # The source's user columns: what a request may give for a user the table lacks.
        self.schema = {
            name: dtype for name, dtype in users_df.schema.items() if name not in SERVING_COLUMNS
        }

    def __call__(self, users: np.ndarray, histories: np.ndarray | None = None) -> dict:
        """Inputs (B, ...) of user rows `users`; `histories` (B, L) item rows in place of the
        stored ones."""
        rows = torch.as_tensor(users, dtype=torch.long)
        inputs = {name: table[rows] for name, table in self.tables.items()}
        if self.history_name is not None:
            given = self.histories[users] if histories is None else histories
            inputs[self.history_name] = torch.from_numpy(history_codes(given, self.codes))
        return inputs

    def for_features(self, given: list[dict | None], histories: np.ndarray) -> dict:
        """Inputs of users the table does not hold: their features `given` (one mapping of the
        users table's columns each, absent ones missing; None: none known) and their histories
        (B, L) item rows. A column the table lacks or a value of the wrong type is a
        `RequestError` for field "features"."""
        frame = self.features_frame(given)
        try:
            arrays = self.features.user.transform(frame, "the request's user features")
        except DataFileError as err:
            raise RequestError("features", err.values, str(err)) from None
        inputs = {name: torch.from_numpy(a) for name, a in arrays.items()}
        if self.history_name is not None:
            inputs[self.history_name] = torch.from_numpy(history_codes(histories, self.codes))
        return inputs

    def features_frame(self, given: list[dict | None]) -> pl.DataFrame:
        """`given` as a frame of the users table's columns (nulls where not given; no user id,
        so the id input reads as unknown)."""
        records = []
        for features in given:
            features = dict(features or {})
            unknown = sorted(set(features) - set(self.schema) | ({USER_ID} & set(features)))
            if unknown:
                columns = sorted(set(self.schema) - {USER_ID})
                raise RequestError("features", unknown, f"must name user columns {columns}")
            records.append(features)
        try:
            return pl.DataFrame(records, schema=self.schema, strict=False)
        except (pl.exceptions.PolarsError, TypeError, ValueError) as err:
            raise RequestError(
                "features", given, f"values do not fit the user columns ({err})"
            ) from None
