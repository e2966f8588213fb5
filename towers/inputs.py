"""One encoder per tower input: each turns one input tensor into a (B, D) part of a tower.

A `TowerInput` describes an input as `features.fitting` fitted it (plain values, so it travels in
checkpoints and bundle manifests as JSON). Its `encoding` chooses the encoder:

- `index`: (B,) int64 rows of an embedding table (an id, a category, a numeric bucket); the id
  input's -1 (an id without a row: unknown, or dropped in training) reads a zero vector;
- `bag`: (B, W) int64 rows padded with the last row, pooled by mean or sum (multi-hot);
- `dense`: (B, d) float32 through a learned linear map (a normalised number with its missing
  flag, a sentence vector);
- `tokens`: (B, T) token ids of a text, -1 past its end, through a pretrained transformer whose
  last layers train (towers.text_model), then a learned linear map;
- `history`: (B, L) item-id codes, oldest first, -1 = padding: pooled by mean, a learned
  attention query, or the latest item, then (optionally) a linear map (SimpleX's W).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

INDEX, BAG, DENSE, TOKENS, HISTORY = "index", "bag", "dense", "tokens", "history"
ENCODINGS = (INDEX, BAG, DENSE, TOKENS, HISTORY)
ID_KIND = "id"  # the kind of a side's id input (features.spec's IdFeature)


@dataclass(frozen=True)
class TowerInput:
    """One input of a tower (features.fitting's `input()`): its name, the declared kind, and what
    its encoder is built with: `rows` of its table (index, bag: the padding row included; history:
    the item-id rows), `dim` (dense / tokens: the input's width), `width` (bag / history / tokens
    length), `pooling`; for tokens the text `model` and how many of its last layers train."""

    name: str
    kind: str
    encoding: str
    rows: int = 0
    dim: int = 0
    width: int = 0
    pooling: str | None = None
    model: str | None = None
    tune_layers: int = 0

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"input {self.name!r}: encoding {self.encoding!r} not in {ENCODINGS}")

    @classmethod
    def parse(cls, values: Mapping) -> TowerInput:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})

    def to_dict(self) -> dict:
        return asdict(self)


def embedding_table(
    rows: int, dim: int, init_std: float, padding_idx: int | None = None, sparse: bool = False
) -> nn.Embedding:
    """An embedding table, normal(0, init_std) with its padding row (if any) zero."""
    table = nn.Embedding(rows, dim, padding_idx=padding_idx, sparse=sparse)
    nn.init.normal_(table.weight, std=init_std)
    if padding_idx is not None:
        with torch.no_grad():
            table.weight[padding_idx].zero_()
    return table


def bag_pool(
    table: nn.Embedding, ids: torch.Tensor, mode: str = "mean", sparse: bool | None = None
) -> torch.Tensor:
    """Mean (or sum) of `table` rows over the non-padding ids of each row: (B, L) → (B, D); zeros
    for empty rows. One fused gather-and-reduce (embedding_bag)."""
    return F.embedding_bag(
        ids,
        table.weight,
        mode=mode,
        padding_idx=table.padding_idx,
        sparse=table.sparse if sparse is None else sparse,
    )


def id_rows(table: nn.Embedding, codes: torch.Tensor) -> torch.Tensor:
    """Rows (B, D) of an id table; zeros where the code is -1 (no row)."""
    present = codes >= 0
    return table(torch.where(present, codes, 0)) * present[:, None].to(table.weight.dtype)


class IndexEncoder(nn.Module):
    """An embedding row per value: (B,) → (B, D). `extra_rows` adds a zero padding row past the
    input's rows (the item id's, so the user tower's history can read the same table)."""

    def __init__(self, spec: TowerInput, dim: int, init_std: float, sparse: bool, extra_rows=0):
        super().__init__()
        padding = spec.rows if extra_rows else None
        self.table = embedding_table(spec.rows + extra_rows, dim, init_std, padding, sparse)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return id_rows(self.table, codes)  # (B, D)


class BagEncoder(nn.Module):
    """Pooled rows of a multi-hot list: (B, W) padded with rows - 1 → (B, D)."""

    def __init__(self, spec: TowerInput, dim: int, init_std: float):
        super().__init__()
        self.mode = spec.pooling or "mean"
        self.table = embedding_table(spec.rows, dim, init_std, padding_idx=spec.rows - 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return bag_pool(self.table, ids, self.mode, sparse=False)  # (B, D)


class DenseEncoder(nn.Module):
    """A learned linear map of a dense input: (B, d) → (B, D)."""

    def __init__(self, spec: TowerInput, dim: int):
        super().__init__()
        self.linear = nn.Linear(spec.dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.to(self.linear.weight.dtype))  # (B, D)


class HistoryEncoder(nn.Module):
    """The user's recent items (B, L) (item-id codes, -1 = padding) pooled into (B, D).

    Its table has the item id's rows plus a zero padding row, so that it can be the item tower's
    id table (tied in training). `projection`: a linear map (no bias) on the pooled vector."""

    def __init__(self, spec: TowerInput, dim: int, init_std: float, projection: bool):
        super().__init__()
        self.pad = spec.rows
        self.pooling = spec.pooling or "mean"
        self.table = embedding_table(spec.rows + 1, dim, init_std, padding_idx=self.pad)
        self.query = (
            nn.Parameter(torch.randn(dim) * init_std) if self.pooling == "attention" else None
        )
        self.projection = nn.Linear(dim, dim, bias=False) if projection else None

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        ids = torch.where(codes >= 0, codes, self.pad)  # (B, L)
        if self.pooling == "mean":
            # Dense gradient even when the table is the item tower's (tied): pooled histories
            # touch a large part of the catalogue each step.
            pooled = bag_pool(self.table, ids, "mean", sparse=False)  # (B, D)
        elif self.pooling == "attention":
            pooled = self._attention(ids)
        else:
            pooled = self._last(ids)
        return pooled if self.projection is None else self.projection(pooled)

    def terms(self, codes: torch.Tensor) -> torch.Tensor:
        """Each position's part of `forward(codes)`: (B, L) → (B, L, D), summing over L to it.
        A position's part is its pooling weight times its row (then projected): 1 / n for mean
        over the n present items, the softmax weight for attention, 1 at the latest item for
        last; zero at padding."""
        ids = torch.where(codes >= 0, codes, self.pad)  # (B, L)
        rows = self.table(ids)  # (B, L, D)
        weighted = self._weights(ids, rows)[:, :, None] * rows  # (B, L, D)
        return weighted if self.projection is None else self.projection(weighted)

    def _weights(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, L) the pooling's weight of each position (rows: (B, L, D), the table's)."""
        present = ids != self.pad  # (B, L)
        if self.pooling == "attention":
            return self._attention_weights(rows, present)
        if self.pooling == "mean":
            count = present.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
            return present.to(rows.dtype) / count
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        latest = torch.where(present, positions, -1).max(1, keepdim=True).values  # (B, 1)
        return (positions == latest).to(rows.dtype)  # an empty history: all zeros

    def _attention_weights(self, rows: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, L) softmax of the rows' scores against the learned query, over present items."""
        scores = rows @ self.query / math.sqrt(rows.shape[-1])  # (B, L)
        weights = torch.softmax(scores.masked_fill(~present, float("-inf")), dim=1)
        return torch.nan_to_num(weights) * present  # an empty history: all zeros

    def _attention(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.table(ids)  # (B, L, D)
        weights = self._attention_weights(rows, ids != self.pad)  # (B, L)
        return (weights[:, :, None] * rows).sum(1)  # (B, D)

    def _last(self, ids: torch.Tensor) -> torch.Tensor:
        present = ids != self.pad  # (B, L)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        latest = torch.where(present, positions, -1).max(1).values  # (B,) -1: empty
        rows = ids.gather(1, latest.clamp(min=0)[:, None])[:, 0]  # (B,)
        return self.table(torch.where(latest >= 0, rows, self.pad))  # (B, D)


def build_encoder(
    spec: TowerInput, dim: int, init_std: float, sparse: bool, projection: bool, extra_rows=0
) -> nn.Module:
    """The encoder an input's encoding calls for (`sparse`: sparse gradients for index tables)."""
    if spec.encoding == INDEX:
        return IndexEncoder(spec, dim, init_std, sparse, extra_rows)
    if spec.encoding == BAG:
        return BagEncoder(spec, dim, init_std)
    if spec.encoding == DENSE:
        return DenseEncoder(spec, dim)
    if spec.encoding == TOKENS:
        from towers.text_model import TextModelEncoder  # loads transformers only when asked

        return TextModelEncoder(spec, dim)
    return HistoryEncoder(spec, dim, init_std, projection)
