"""The user tower and the item tower: plain nn.Modules that never see each other.

Each returns a (B, D) batch of vectors in one shared space; the relevance of an item to a user
is their inner product (cosine when the similarity is `cosine`, in which case both towers return
unit vectors). This file knows nothing of losses, optimisers or indexes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from towers.similarity import Similarity


@dataclass
class FeatureSpec:
    """Sizes of the towers' inputs, read off the prepared data."""

    num_users: int  # user-id vocabulary
    num_items: int  # item-id vocabulary; index num_items pads histories
    num_genres: int  # genre vocabulary; index num_genres pads genre bags
    num_year_buckets: int  # release-year buckets; bucket 0 = unknown
    history_length: int  # recent items per user fed to the user tower

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TowerConfig:
    """Hyper-parameters of both towers. The defaults are the shipped recipe (conf/model/two_tower.yaml
    states the same values; tests/test_config.py checks that they agree)."""

    embedding_dim: int = 64  # D: the dimension of the shared space and of every embedding table
    similarity: str = "cosine"  # "cosine" or "dot" (see towers.similarity)
    use_user_id: bool = True  # user-id embedding on the user side
    use_history: bool = True  # mean-pooled recent history on the user side
    history_gate: float | None = 0.5  # weight of the id embedding vs history; None = learned
    history_projection: bool = True  # a linear map (no bias) on the pooled history (SimpleX's W)
    share_item_embeddings: bool = False  # history items read the item tower's id table (tied)
    use_genres: bool = True  # genre bag on the item side
    use_year: bool = True  # release-year bucket on the item side
    mlp_layers: int = 0  # residual MLP blocks on top of each tower's fused features
    dropout: float = 0.0  # dropout inside the MLP blocks
    user_dropout: float = 0.0  # on the fused user vector, in training (SimpleX's net_dropout)
    # Sparse gradients for the id tables (user, item, year), updated row by row
    # (towers.optim.RowAdam); the bags (history, genres) stay dense. Pays on large tables only.
    sparse: bool = False
    init_std: float = 0.1  # normal init of embedding tables

    def __post_init__(self) -> None:
        for name in ("dropout", "user_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"TowerConfig.{name}: expected a rate in [0, 1), got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualMLP(nn.Module):
    """x + MLP(x), `layers` times: keeps the identity path that embedding models rely on."""

    def __init__(self, dim: int, layers: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(dim, dim),
            )
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def _embedding(
    rows: int, dim: int, cfg: TowerConfig, padding_idx: int | None = None, sparse: bool = True
) -> nn.Embedding:
    table = nn.Embedding(rows, dim, padding_idx=padding_idx, sparse=cfg.sparse and sparse)
    nn.init.normal_(table.weight, std=cfg.init_std)
    if padding_idx is not None:
        with torch.no_grad():
            table.weight[padding_idx].zero_()
    return table


def bag_mean(table: nn.Embedding, ids: torch.Tensor, sparse: bool | None = None) -> torch.Tensor:
    """Mean of `table` rows over the non-padding ids of each row: (B, L) → (B, D); zeros for
    empty rows. One fused gather-and-reduce (embedding_bag); sparse gradients if `sparse` (default:
    the table's own setting)."""
    return F.embedding_bag(
        ids,
        table.weight,
        mode="mean",
        padding_idx=table.padding_idx,
        sparse=table.sparse if sparse is None else sparse,
    )


class UserTower(nn.Module):
    """User id embedding fused with the mean of the user's recent history, then an optional MLP."""

    def __init__(self, spec: FeatureSpec, cfg: TowerConfig):
        super().__init__()
        if not (cfg.use_user_id or cfg.use_history):
            raise ValueError("TowerConfig: the user tower needs use_user_id or use_history")
        self.spec, self.cfg = spec, cfg
        self.similarity = Similarity.parse(cfg.similarity)
        dim = cfg.embedding_dim
        self.pad = spec.num_items
        self.user_embedding = _embedding(spec.num_users, dim, cfg) if cfg.use_user_id else None
        self.history_embedding = (
            _embedding(spec.num_items + 1, dim, cfg, padding_idx=self.pad, sparse=False)
            if cfg.use_history
            else None
        )
        # SimpleX-style gate between the id embedding and the pooled history.
        gate = 0.5 if cfg.history_gate is None else cfg.history_gate
        self.gate_logit = nn.Parameter(
            torch.logit(torch.tensor(gate)), requires_grad=cfg.history_gate is None
        )
        self.history_projection = (
            nn.Linear(dim, dim, bias=False) if cfg.use_history and cfg.history_projection else None
        )
        self.mlp = ResidualMLP(dim, cfg.mlp_layers, cfg.dropout)
        self.dropout = nn.Dropout(cfg.user_dropout)

    def forward(
        self, user: torch.Tensor, history: torch.Tensor, has_id: torch.Tensor | None = None
    ) -> torch.Tensor:
        """user (B,), history (B, N) item indices padded with num_items → (B, D).

        has_id (B,) bool: False for a user the id table does not know (served from the history
        alone; its `user` index is then ignored). None: every user has an id row."""
        parts = []
        if self.user_embedding is not None:
            parts.append(_id_rows(self.user_embedding, user, has_id))  # (B, D)
        if self.history_embedding is not None:
            # Dense gradient even when the table is the item tower's (tied): pooled histories
            # touch a large part of the catalogue each step.
            pooled = bag_mean(self.history_embedding, history, sparse=False)  # (B, D)
            if self.history_projection is not None:
                pooled = self.history_projection(pooled)
            parts.append(pooled)
        if len(parts) == 2:
            gate = torch.sigmoid(self.gate_logit)
            x = gate * parts[0] + (1 - gate) * parts[1]
        else:
            x = parts[0]
        return self.similarity.prepare(self.dropout(self.mlp(x)))  # (B, D)


class ItemTower(nn.Module):
    """Item id embedding + genre bag + release-year bucket, summed, then an optional MLP; index
    num_items (the padding row) stands for an item the id table does not know."""

    def __init__(self, spec: FeatureSpec, cfg: TowerConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.similarity = Similarity.parse(cfg.similarity)
        dim = cfg.embedding_dim
        # One padding row (index num_items) so the table can double as the user tower's history table.
        self.item_embedding = _embedding(spec.num_items + 1, dim, cfg, padding_idx=spec.num_items)
        self.genre_pad = spec.num_genres
        # A bag like the history: dense gradient (a small vocabulary, many ids a step).
        self.genre_embedding = (
            _embedding(spec.num_genres + 1, dim, cfg, padding_idx=self.genre_pad, sparse=False)
            if cfg.use_genres and spec.num_genres > 0
            else None
        )
        self.year_embedding = (
            _embedding(spec.num_year_buckets, dim, cfg, padding_idx=0) if cfg.use_year else None
        )
        self.mlp = ResidualMLP(dim, cfg.mlp_layers, cfg.dropout)

    def forward(
        self,
        item: torch.Tensor,
        genres: torch.Tensor,
        year: torch.Tensor,
        has_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """item (B,), genres (B, G) padded with num_genres, year (B,) bucket → (B, D).

        has_id (B,) bool: False for an item the id table does not know (a new item, encoded from
        its features alone; its `item` index is then ignored). None: every item has an id row."""
        x = _id_rows(self.item_embedding, item, has_id)  # (B, D)
        if self.genre_embedding is not None:
            x = x + bag_mean(self.genre_embedding, genres)
        if self.year_embedding is not None:
            x = x + self.year_embedding(year)
        return self.similarity.prepare(self.mlp(x))  # (B, D)


def _id_rows(table: nn.Embedding, ids: torch.Tensor, has_id: torch.Tensor | None) -> torch.Tensor:
    """Rows (B, D) of an id table; zeros where `has_id` is False (the id, which may lie past the
    table, is not read)."""
    if has_id is None:
        return table(ids)
    has_id = has_id.to(torch.bool)
    return table(torch.where(has_id, ids, 0)) * has_id[:, None].to(table.weight.dtype)
