"""The user tower and the item tower: plain nn.Modules that never see each other.

Each returns a (B, D) batch of vectors in one shared space; the relevance of an item to a user
is their inner product (cosine when the similarity is `cosine`, in which case both towers return
unit vectors). This file knows nothing of losses, optimisers or indexes.
"""

from __future__ import annotations

import math
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


# The popularity prior's coordinates: the user's (beta * PRIOR_SCALE, 0), the item's
# (centred log p / PRIOR_SCALE, 0). Their product is beta * centred log p whatever the scale;
# dividing by it keeps the item's coordinate within about +-1, beside unit vectors, so an ANN
# index clusters items by their vectors more than by popularity. The zero keeps the length even
# (4-bit PQ codes take two dimensions each).
PRIOR_DIMS = 2
PRIOR_SCALE = 10.0


@dataclass
class TowerConfig:
    """Hyper-parameters of both towers."""

    embedding_dim: int = 64  # D: the dimension of the shared space and of every embedding table
    similarity: str = "cosine"  # "cosine" or "dot" (see towers.similarity)
    use_user_id: bool = True  # user-id embedding on the user side
    use_history: bool = True  # mean-pooled recent history on the user side
    history_gate: float | None = 0.5  # weight of the id embedding vs history; None = learned
    history_projection: bool = False  # a linear map (no bias) on the pooled history (SimpleX's W)
    share_item_embeddings: bool = (
        False  # history items use the item tower's id table (tied in training)
    )
    use_genres: bool = True  # genre bag on the item side
    use_year: bool = True  # release-year bucket on the item side
    mlp_layers: int = 0  # residual MLP blocks on top of each tower's fused features
    dropout: float = 0.0  # dropout inside the MLP blocks
    user_dropout: float = 0.0  # on the fused user vector, in training (SimpleX's net_dropout)
    groups: int = 1  # cosine over this many equal blocks of the vector, averaged (towers.ensemble)
    group_weights: tuple[float, ...] | None = None  # the blocks' weights in that mean; None = equal
    # Served score = similarity + popularity_prior * (log p(item) - its catalogue mean), p the
    # item's smoothed training popularity (centring shifts every score alike: the ranking is that
    # of + beta log p). Two more coordinates on each side (PRIOR_DIMS), so the index still ranks
    # by one inner product. Added outside training only (eval mode: validation, test, export,
    # serving); the loss sees the similarity alone. 0 = off.
    popularity_prior: float = 0.0
    # Sparse gradients for the id tables (user, item, year), updated row by row
    # (towers.optim.RowAdam). The bags (history, genres) stay dense: a pooled history touches a
    # large part of the catalogue each step (28% on Gowalla), where one fused pass is faster.
    sparse: bool = True
    init_std: float = 0.1  # normal init of embedding tables

    def __post_init__(self) -> None:
        for name in ("dropout", "user_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"TowerConfig.{name}: expected a rate in [0, 1), got {value!r}")
        if self.groups < 1 or self.embedding_dim % self.groups:
            raise ValueError(
                f"TowerConfig.groups: expected a divisor of embedding_dim {self.embedding_dim}, "
                f"got {self.groups!r}"
            )
        if self.group_weights is not None:
            weights = tuple(float(w) for w in self.group_weights)  # a JSON list from a bundle
            if len(weights) != self.groups or not all(0.0 < w < float("inf") for w in weights):
                raise ValueError(
                    f"TowerConfig.group_weights: expected {self.groups} positive weights (one per "
                    f"group), got {self.group_weights!r}"
                )
            self.group_weights = weights
        if not math.isfinite(self.popularity_prior):
            raise ValueError(
                f"TowerConfig.popularity_prior: expected a finite number, got {self.popularity_prior!r}"
            )

    @property
    def output_dim(self) -> int:
        """Length of the served vectors: embedding_dim, plus PRIOR_DIMS with a popularity prior."""
        return self.embedding_dim + (PRIOR_DIMS if self.popularity_prior else 0)

    @property
    def user_prior(self) -> tuple[float, float]:
        """The user's prior coordinates (the item's are its centred log p / PRIOR_SCALE, 0)."""
        return (self.popularity_prior * PRIOR_SCALE, 0.0)

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

    def forward(self, user: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """user (B,), history (B, N) item indices padded with num_items → (B, D)."""
        parts = []
        if self.user_embedding is not None:
            parts.append(self.user_embedding(user))  # (B, D)
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
        x = self.similarity.prepare(
            self.dropout(self.mlp(x)), self.cfg.groups, self.cfg.group_weights
        )
        if self.cfg.popularity_prior and not self.training:
            prior = x.new_tensor(self.cfg.user_prior)
            x = torch.cat([x, prior.expand(len(x), PRIOR_DIMS)], dim=1)
        return x  # (B, D), or (B, D + PRIOR_DIMS) with the prior


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
        if cfg.popularity_prior:
            # log p minus its catalogue mean per item index, the last entry (the padding index)
            # for an item never seen in training; written by set_popularity, saved with the
            # tower's weights.
            self.register_buffer("log_popularity", torch.zeros(spec.num_items + 1))

    def set_popularity(self, counts: torch.Tensor) -> None:
        """The prior's log p from training interactions per item (I,): p = (count + 1) / sum
        over the catalogue, an unseen item counting 0; centred on the catalogue's mean log p."""
        if not self.cfg.popularity_prior:
            raise ValueError(
                "ItemTower.set_popularity: this tower has no popularity prior "
                "(TowerConfig.popularity_prior is 0)"
            )
        if counts.shape != (self.spec.num_items,):
            raise ValueError(
                f"ItemTower.set_popularity: expected {self.spec.num_items} counts, got shape "
                f"{tuple(counts.shape)}"
            )
        smoothed = torch.cat([counts.double(), counts.new_zeros(1).double()]) + 1.0
        with torch.no_grad():
            log_p = smoothed.log()  # log p up to the normalising constant, which centring drops
            self.log_popularity.copy_(log_p - log_p[:-1].mean())

    def forward(self, item: torch.Tensor, genres: torch.Tensor, year: torch.Tensor) -> torch.Tensor:
        """item (B,), genres (B, G) padded with num_genres, year (B,) bucket → (B, D)."""
        x = self.item_embedding(item)  # (B, D)
        if self.genre_embedding is not None:
            x = x + bag_mean(self.genre_embedding, genres)
        if self.year_embedding is not None:
            x = x + self.year_embedding(year)
        x = self.similarity.prepare(self.mlp(x), self.cfg.groups, self.cfg.group_weights)
        if self.cfg.popularity_prior and not self.training:
            prior = self.log_popularity[item].to(x.dtype)[:, None] / PRIOR_SCALE
            x = torch.cat([x, prior, torch.zeros_like(prior)], dim=1)
        return x  # (B, D), or (B, D + PRIOR_DIMS) with the prior
