"""`FittedFeatures`: both towers' fitted features, as training made them and a bundle carries
them (features.json). One transform for every row of every table, at training, export, update
and serving (`FittedSide.transform`); the user's history is the one input built from
interactions instead: item rows mapped to the item id's codes (`history_codes`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from features.fitting import FittedSide, TextEncoderFactory
from features.spec import FeaturesConfig

FORMAT = 1  # features.json's layout version


@dataclass
class FittedFeatures:
    user: FittedSide
    item: FittedSide

    def side(self, side: str) -> FittedSide:
        return self.user if side == "user" else self.item

    @property
    def config(self) -> FeaturesConfig:
        """The declarations these were fitted from."""
        return FeaturesConfig(self.user.spec, self.item.spec)

    @property
    def history_length(self) -> int:
        """Items in the user tower's history input (0 without a history feature)."""
        history = self.user.spec.of_kind("history")
        return 0 if history is None else history.length

    @property
    def item_id_name(self) -> str | None:
        feature = self.item.spec.of_kind("id")
        return None if feature is None else feature.name

    def item_id_rows(self) -> int:
        """Rows of the item id's table (what a history input reads); 0 without an item id."""
        name = self.item_id_name
        if name is None:
            return 0
        return next(i["rows"] for i in self.item.inputs() if i["name"] == name)

    def user_inputs(self) -> list[dict[str, Any]]:
        """The user tower's inputs, the history's rows those of the item id's table."""
        rows = self.item_id_rows()
        return [
            {**spec, "rows": rows} if spec["encoding"] == "history" else spec
            for spec in self.user.inputs()
        ]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "user": self.user.to_json(), "item": self.item.to_json()}

    @classmethod
    def from_json(
        cls, data: dict[str, Any], text_encoder: TextEncoderFactory | None = None
    ) -> FittedFeatures:
        if data.get("format") != FORMAT:
            raise ValueError(f"features.json format {data.get('format')!r}, expected {FORMAT}")
        return cls(
            FittedSide.from_json(data["user"], text_encoder),
            FittedSide.from_json(data["item"], text_encoder),
        )

    def check_history(self) -> None:
        """A history input needs the item id's table to read."""
        if self.history_length and not self.item_id_rows():
            raise ValueError(
                "features: a user history feature reads the item id's embeddings; declare an id "
                "feature on the item side"
            )


def item_codes_of(item_inputs: dict[str, np.ndarray], item: FittedSide) -> np.ndarray:
    """(I + 1,) each catalogue row's item id code, then -1 (for the padding row num_items):
    indexing it with padded item rows gives a history input. All -1 without an item id."""
    feature = item.spec.of_kind("id")
    num_items = len(next(iter(item_inputs.values()))) if item_inputs else 0
    codes = item_inputs[feature.name] if feature is not None else np.full(num_items, -1, np.int64)
    return np.append(codes.astype(np.int64), -1)


def history_codes(history_rows: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
    """Item rows (U, N) padded with num_items → item id codes (U, N), -1 for padding and for
    items without an id row (`item_codes` from `item_codes_of`; a row past it is unknown)."""
    rows = np.minimum(history_rows, len(item_codes) - 1)
    return item_codes[rows]
