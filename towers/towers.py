"""The user tower and the item tower: plain nn.Modules that never see each other.

Each reads its side's inputs (a dict of tensors named after the declared features, see
towers.inputs), encodes each one into a (B, D) part, combines the parts (a sum, or a
concatenation mapped back to D) and returns a (B, D) batch of vectors in one shared space; the
relevance of an item to a user is their inner product (cosine when the similarity is `cosine`, in
which case both towers return unit vectors). This file knows nothing of losses, optimisers or
indexes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from towers.config import ConfigError
from towers.inputs import HISTORY, ID_KIND, INDEX, TOKENS, TowerInput, build_encoder
from towers.similarity import Similarity


@dataclass
class FeatureSpec:
    """What each tower reads (the fitted features' inputs, in declaration order), how it combines
    them, and the table sizes the towers were trained with."""

    user_inputs: tuple[TowerInput, ...]
    item_inputs: tuple[TowerInput, ...]
    num_users: int  # rows of the users table at training
    num_items: int  # rows of the items table at training (the catalogue)
    user_combine: str = "sum"  # "sum" or "concat" (features.spec's SideFeatures.combine)
    item_combine: str = "sum"

    def __post_init__(self) -> None:
        self.user_inputs = tuple(_as_input(i) for i in self.user_inputs)
        self.item_inputs = tuple(_as_input(i) for i in self.item_inputs)
        for side, combine in (("user", self.user_combine), ("item", self.item_combine)):
            if combine not in COMBINES:
                raise ValueError(f"FeatureSpec.{side}_combine: {combine!r} not in {COMBINES}")

    def inputs(self, side: str) -> tuple[TowerInput, ...]:
        return self.user_inputs if side == "user" else self.item_inputs

    def id_input(self, side: str) -> TowerInput | None:
        """The side's id input, or None when the tower has none."""
        return next((i for i in self.inputs(side) if i.kind == ID_KIND), None)

    def history_input(self) -> TowerInput | None:
        return next((i for i in self.user_inputs if i.encoding == HISTORY), None)

    @property
    def history_length(self) -> int:
        history = self.history_input()
        return history.width if history is not None else 0

    def to_dict(self) -> dict:
        values = asdict(self)
        values["user_inputs"] = [i.to_dict() for i in self.user_inputs]
        values["item_inputs"] = [i.to_dict() for i in self.item_inputs]
        return values


def _as_input(value: TowerInput | Mapping) -> TowerInput:
    return value if isinstance(value, TowerInput) else TowerInput.parse(value)


COMBINES = ("sum", "concat")
# Rows one forward pass encodes outside training (catalogue, export): all of a large catalogue at
# once, but few texts through a transformer (its activations are (rows, tokens, width) per layer).
ROWS_PER_PASS, TEXT_ROWS_PER_PASS = 65536, 512


@dataclass
class TowerConfig:
    """Hyper-parameters of both towers. The defaults are the shipped recipe (conf/model/two_tower.yaml
    states the same values; tests/test_config.py checks that they agree). Which inputs each tower
    reads is declared apart (conf/features, features.spec)."""

    embedding_dim: int = 64  # D: the dimension of the shared space and of every embedding table
    similarity: str = "cosine"  # "cosine" or "dot" (see towers.similarity)
    history_gate: float | None = 0.5  # weight of the id embedding vs history; None = learned
    history_projection: bool = True  # a linear map (no bias) on the pooled history (SimpleX's W)
    share_item_embeddings: bool = False  # history items read the item tower's id table (tied)
    mlp_layers: int = 0  # residual MLP blocks on top of each tower's combined features
    dropout: float = 0.0  # dropout inside the MLP blocks
    user_dropout: float = 0.0  # on the combined user vector, in training (SimpleX's net_dropout)
    # DropoutNet: the share of training examples whose id input is dropped (read as unknown), so
    # the tower's other inputs alone are a trained path (cold users and items).
    user_id_dropout: float = 0.0
    item_id_dropout: float = 0.0
    # Sparse gradients for the index tables (ids, categories, buckets), updated row by row
    # (towers.optim.RowAdam); the bags (history, multi-hot) stay dense. Pays on large tables only.
    sparse: bool = False
    init_std: float = 0.1  # normal init of embedding tables

    def __post_init__(self) -> None:
        for name in ("dropout", "user_dropout", "user_id_dropout", "item_id_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"model.towers.{name}", value, "expected a rate in [0, 1)")

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


class Tower(nn.Module):
    """One side's tower: an encoder per input (towers.inputs), the parts combined, an optional
    residual MLP, then the similarity's normalisation.

    Combining by `sum`: the parts are added; when the user tower has both an id and a history,
    those two are weighted gate : 1 - gate (SimpleX's gate). By `concat`: the parts side by side,
    mapped back to D by a linear layer. An input missing from the batch is an error; an id input
    of -1 reads a zero vector (an id without a row: unknown, or dropped in training)."""

    side: str

    def __init__(self, spec: FeatureSpec, cfg: TowerConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.inputs = spec.inputs(self.side)
        if not self.inputs:
            raise ValueError(f"FeatureSpec: the {self.side} tower has no inputs")
        self.similarity = Similarity.parse(cfg.similarity)
        self.combine = spec.user_combine if self.side == "user" else spec.item_combine
        dim = cfg.embedding_dim
        # The item id's table gets a padding row, so that a history can read it (tied).
        extra = 1 if self.side == "item" else 0
        self.encoders = nn.ModuleDict(
            {
                i.name: build_encoder(
                    i, dim, cfg.init_std, cfg.sparse and i.encoding == INDEX,
                    cfg.history_projection, extra if i.kind == ID_KIND else 0,
                )
                for i in self.inputs
            }
        )  # fmt: skip
        self.id_name = next((i.name for i in self.inputs if i.kind == ID_KIND), None)
        self.history_name = next((i.name for i in self.inputs if i.encoding == HISTORY), None)
        gate = 0.5 if cfg.history_gate is None else cfg.history_gate
        self.gate_logit = nn.Parameter(
            torch.logit(torch.tensor(gate)), requires_grad=cfg.history_gate is None
        )
        self.joint = (
            nn.Linear(dim * len(self.inputs), dim, bias=False) if self.combine == "concat" else None
        )
        self.mlp = ResidualMLP(dim, cfg.mlp_layers, cfg.dropout)
        self.dropout = nn.Dropout(cfg.user_dropout if self.side == "user" else 0.0)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """inputs: one tensor per input name (see towers.inputs for their shapes) → (B, D)."""
        parts = {
            name: encoder(_input(inputs, name, self.side))
            for name, encoder in self.encoders.items()
        }
        x = self._combined(parts)  # (B, D)
        return self.similarity.prepare(self.dropout(self.mlp(x)))  # (B, D)

    def _combined(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.joint is not None:
            return self.joint(torch.cat(list(parts.values()), dim=1))
        if self.id_name is not None and self.history_name is not None:
            gate = torch.sigmoid(self.gate_logit)
            parts[self.id_name] = gate * parts[self.id_name]
            parts[self.history_name] = (1 - gate) * parts[self.history_name]
        values = list(parts.values())
        x = values[0]
        for part in values[1:]:
            x = x + part
        return x

    @property
    def rows_per_pass(self) -> int:
        """How many rows one forward pass outside training should encode."""
        tokens = any(i.encoding == TOKENS for i in self.inputs)
        return TEXT_ROWS_PER_PASS if tokens else ROWS_PER_PASS

    def id_table(self) -> nn.Embedding | None:
        """The id input's embedding table, or None."""
        return None if self.id_name is None else self.encoders[self.id_name].table

    def index_tables(self) -> list[tuple[str, nn.Embedding]]:
        """(input name, table) of every index input: the tables a batch reads row by row."""
        return [(i.name, self.encoders[i.name].table) for i in self.inputs if i.encoding == INDEX]


def _input(inputs: Mapping[str, torch.Tensor], name: str, side: str) -> torch.Tensor:
    try:
        return inputs[name]
    except KeyError:
        raise KeyError(
            f"the {side} tower reads input {name!r}; the batch has {sorted(inputs)}"
        ) from None


class UserTower(Tower):
    side = "user"

    @property
    def history_encoder(self) -> nn.Module | None:
        return None if self.history_name is None else self.encoders[self.history_name]


class ItemTower(Tower):
    side = "item"
