"""Several trained models served as one: their towers concatenated block by block.

The merged towers compute every member's vector side by side in one vector. With cosine, each
member's block is normalised on its own and scaled by 1/sqrt(n) (`TowerConfig.groups`), so the
merged vector is a unit vector and the merged inner product is the mean of the members'
cosines: an ensemble that one FAISS index, one bundle and one `Recommender` serve like any other
model, with vectors n times longer. With dot, the merged inner product is the sum of the
members' scores. Members may weigh differently (`concatenate(..., weights)`,
`TowerConfig.group_weights`): block k is then scaled by sqrt(w_k) instead, and the score is the
weighted mean.

It is exact for the towers this library builds without MLP blocks (`mlp_layers: 0`, every
shipped recipe): each embedding table is concatenated along its columns, the history projection
becomes block-diagonal, and a learned id-vs-history gate is folded into the member's weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from towers.towers import ItemTower, TowerConfig, UserTower

MERGED_GATE = 0.5  # the merged towers' fixed gate when the members learned theirs


def concatenate(
    members: Sequence[tuple[UserTower, ItemTower]], weights: Sequence[float] | None = None
) -> tuple[UserTower, ItemTower]:
    """One (user tower, item tower) pair that scores like the mean of the members' cosines (the
    sum of their dot products), weighted by `weights` (relative; default: equal). Members must be
    built for the same data with the same config."""
    if not members:
        raise ValueError("concatenate: no members to concatenate")
    if weights is not None and len(weights) != len(members):
        raise ValueError(f"concatenate: {len(weights)} weights for {len(members)} members")
    spec, cfg = members[0][0].spec, members[0][0].cfg
    for i, (user, item) in enumerate(members):
        for side, tower in (("user", user), ("item", item)):
            if tower.spec != spec:
                raise ValueError(
                    f"concatenate: member {i}'s {side} tower is built for other data "
                    f"({tower.spec} vs {spec})"
                )
            if replace(tower.cfg, group_weights=None) != replace(cfg, group_weights=None):
                raise ValueError(
                    f"concatenate: member {i}'s {side} tower config differs from member 0's "
                    f"({tower.cfg} vs {cfg})"
                )
    if cfg.mlp_layers:
        raise ValueError(
            f"concatenate: towers with MLP blocks (mlp_layers={cfg.mlp_layers}) mix their "
            "dimensions and cannot be concatenated exactly; only mlp_layers=0 models can"
        )
    gate = MERGED_GATE if cfg.history_gate is None else cfg.history_gate
    merged = replace(
        cfg,
        embedding_dim=cfg.embedding_dim * len(members),
        groups=cfg.groups * len(members),
        group_weights=_group_weights([u.cfg for u, _ in members], weights),
        history_gate=gate,
    )
    user_tower, item_tower = UserTower(spec, merged), ItemTower(spec, merged)
    user_tower.load_state_dict(_user_state([u for u, _ in members], cfg, gate))
    item_tower.load_state_dict(_concatenated([i.state_dict() for _, i in members]))
    return user_tower.eval(), item_tower.eval()


def _group_weights(
    configs: list[TowerConfig], weights: Sequence[float] | None
) -> tuple[float, ...] | None:
    """The merged blocks' weights: each member's weight shared among its own blocks (members
    that are ensembles already) as their weights say; None when every block weighs the same."""
    if weights is None and all(c.group_weights is None for c in configs):
        return None
    if weights is not None and not all(0.0 < float(w) < float("inf") for w in weights):
        raise ValueError(f"concatenate: expected positive weights, got {list(weights)}")
    members = [float(w) for w in weights] if weights is not None else [1.0] * len(configs)
    merged = []
    for weight, cfg in zip(members, configs, strict=True):
        inner = cfg.group_weights or (1.0,) * cfg.groups
        merged += [weight / sum(members) * g / sum(inner) for g in inner]
    return tuple(merged)


def _user_state(towers: list[UserTower], cfg: TowerConfig, gate: float) -> dict:
    """The merged user tower's weights; a learned gate is folded in: with g the member's gate,
    its id rows are scaled by g / gate and its history path by (1 - g) / (1 - gate)."""
    states = []
    for tower in towers:
        state = {name: t.detach().clone() for name, t in tower.state_dict().items()}
        if cfg.history_gate is None and cfg.use_user_id and cfg.use_history:
            g = torch.sigmoid(state["gate_logit"]).item()
            state["user_embedding.weight"] *= g / gate
            history_path = (
                "history_projection.weight"
                if cfg.history_projection
                else "history_embedding.weight"
            )
            state[history_path] *= (1 - g) / (1 - gate)
        state["gate_logit"] = torch.logit(torch.tensor(gate))
        states.append(state)
    return _concatenated(states)


def _concatenated(states: list[dict]) -> dict:
    out = {}
    for name, first in states[0].items():
        parts = [s[name] for s in states]
        if name.endswith("embedding.weight"):  # (rows, D) tables side by side
            out[name] = torch.cat(parts, dim=1)
        elif name == "history_projection.weight":  # (D, D) maps, one block each
            out[name] = torch.block_diag(*parts)
        elif name == "gate_logit":
            out[name] = first
        elif name == "log_popularity":  # the popularity prior's: one catalogue, one popularity
            if not all(torch.equal(first, part) for part in parts):
                raise ValueError(
                    "concatenate: the members' item popularities (log_popularity) differ; set "
                    "them from the same interactions (ItemTower.set_popularity) first"
                )
            out[name] = first
        else:
            raise ValueError(f"concatenate: no rule to concatenate parameter {name!r}")
    return out
