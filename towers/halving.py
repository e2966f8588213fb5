"""Successive halving: choose one of several training recipes on validation for a fraction of the
cost of training each to the end (Jamieson & Talwalkar, AISTATS 2016; the inner loop of Li et al.'s
Hyperband, JMLR 2018), halving within each family of recipes.

Every candidate trains the first rung's epochs (`first_rung_epochs`: `first_epochs`, fewer on a
log large enough that fewer already give every candidate `first_steps` optimiser steps); within
each family (candidates whose curves compare
early: the same loss) the better half by best validation score so far (ties to the earlier
candidate) trains on to twice as many epochs, and so on until each family has one candidate
left. Across families early epochs do not compare: on Gowalla SimpleX's contrastive loss is at
0.108 validation recall@20 after 2 epochs against the sampled softmax's 0.155, and ends above it
(0.217 at 12). So the families' finalists each train to their own epoch count, and the best of
them wins. A candidate that stops by itself (early stopping, or its last epoch reached) keeps its
score and is not advanced again. Before each round after the first, its cost is estimated from
each survivor's seconds per epoch so far; when the time spent plus that estimate passes the
budget, the search stops and the leader wins.

A candidate is anything with the `Trial` interface; train.py's trains a Lightning model from its
last checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class Trial(Protocol):
    name: str
    family: str  # candidates of one family compare after a few epochs (the loss)
    max_epochs: int  # its whole run
    epochs: int  # epochs trained so far
    score: float  # best validation score so far (higher is better); -inf before any epoch
    seconds: float  # training seconds so far
    stopped: bool  # stopped by itself: early stopping or its last epoch

    def advance(self, epochs: int) -> None:
        """Train on until `epochs` epochs are done (or the trial stops by itself)."""


@dataclass
class Rung:
    """One round: the epoch count the survivors trained to, each one's score, and who went on."""

    epochs: int
    scores: dict[str, float]
    kept: list[str]


@dataclass
class Search:
    """What successive halving did: its rungs, the winner, and whether the budget cut it short."""

    winner: Trial
    rungs: list[Rung] = field(default_factory=list)
    out_of_budget: bool = False


def successive_halving(
    trials: Sequence[Trial],
    first_epochs: int,
    budget_seconds: float = math.inf,
    clock: Callable[[], float] = time.monotonic,
) -> Search:
    """The winner of `trials` by successive halving (see the module's docstring)."""
    if not trials:
        raise ValueError("successive_halving: no candidates")
    if first_epochs < 1:
        raise ValueError(f"successive_halving: first_epochs must be >= 1, got {first_epochs}")
    started = clock()
    survivors, epochs = list(trials), first_epochs
    rungs: list[Rung] = []
    while True:
        finals = bool(rungs) and len({t.family for t in survivors}) == len(survivors)
        if finals and len(survivors) == 1:
            return Search(survivors[0], rungs)
        target = {t.name: t.max_epochs if finals else epochs for t in survivors}
        if rungs and clock() - started + _estimate(survivors, target) > budget_seconds:
            leader = _ranked(survivors)[0]
            log.info("recipe search: the budget is spent; %s leads", leader.name)
            return Search(leader, rungs, out_of_budget=True)
        for trial in survivors:
            if not trial.stopped and trial.epochs < target[trial.name]:
                trial.advance(target[trial.name])
        ranked = _ranked(survivors)
        kept = ranked[:1] if finals else _better_half_of_each_family(ranked)
        rung_epochs = max(target.values())
        rungs.append(
            Rung(rung_epochs, {t.name: t.score for t in survivors}, [t.name for t in kept])
        )
        log.info("recipe search, %d epochs: %s", rung_epochs, _scores(ranked))
        if finals:
            return Search(kept[0], rungs)
        survivors, epochs = kept, epochs * 2


def first_rung_epochs(first_epochs: int, first_steps: int, steps_per_epoch: Sequence[int]) -> int:
    """Epochs of the first rung: `first_epochs`, or fewer (at least 1) when fewer already give
    every candidate at least `first_steps` optimiser steps. What tells a collapsing recipe from a
    learning one is the number of updates: a few epochs of a small log, one epoch of a large one
    (Gowalla: over 700 steps an epoch)."""
    if first_epochs < 1 or first_steps < 0:
        raise ValueError(
            f"first_rung_epochs: first_epochs must be >= 1 and first_steps >= 0, got "
            f"{first_epochs} and {first_steps}"
        )
    needed = max((math.ceil(first_steps / max(steps, 1)) for steps in steps_per_epoch), default=1)
    return max(1, min(first_epochs, needed))


def _ranked(trials: Sequence[Trial]) -> list[Trial]:
    return sorted(trials, key=lambda t: -t.score)  # stable: ties keep their order


def _better_half_of_each_family(ranked: Sequence[Trial]) -> list[Trial]:
    """The better half (rounded up) of each family, best first."""
    kept: list[Trial] = []
    for family in dict.fromkeys(t.family for t in ranked):
        members = [t for t in ranked if t.family == family]
        kept += members[: math.ceil(len(members) / 2)] if len(members) > 1 else members
    return _ranked(kept)


def _estimate(trials: Sequence[Trial], target: dict[str, int]) -> float:
    """Seconds to bring each of `trials` to its `target` epochs at its pace so far."""
    return sum(
        (target[t.name] - t.epochs) * t.seconds / max(t.epochs, 1)
        for t in trials
        if not t.stopped and t.epochs < target[t.name]
    )


def _scores(trials: Sequence[Trial]) -> str:
    return ", ".join(f"{t.name} {t.score:.4f}" for t in trials)
