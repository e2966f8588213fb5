"""Successive halving: choose one of several training recipes on validation for a fraction of the
cost of training each to the end (Jamieson & Talwalkar, AISTATS 2016; the inner loop of Li et al.'s
Hyperband, JMLR 2018).

Every candidate trains `first_epochs` epochs; the better half (by its best validation score so
far, ties to the earlier candidate) trains on to twice as many epochs, and so on until one is left:
the winner, which its caller then trains to its own epoch count. A candidate that stops by itself
(early stopping, or its last epoch reached) keeps its score and is not advanced again. Before each
rung after the first, the rung's cost is estimated from each survivor's seconds per epoch so far;
when the time spent plus that estimate passes the budget, the search stops and the leader wins.

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
        if rungs and clock() - started + _estimate(survivors, epochs) > budget_seconds:
            log.info("recipe search: the budget is spent; %s leads", survivors[0].name)
            return Search(survivors[0], rungs, out_of_budget=True)
        for trial in survivors:
            if not trial.stopped and trial.epochs < epochs:
                trial.advance(epochs)
        ranked = sorted(survivors, key=lambda t: -t.score)  # stable: ties keep their order
        kept = ranked[: math.ceil(len(ranked) / 2)] if len(ranked) > 1 else ranked
        rungs.append(Rung(epochs, {t.name: t.score for t in survivors}, [t.name for t in kept]))
        log.info("recipe search, %d epochs: %s", epochs, _scores(ranked))
        survivors, epochs = kept, epochs * 2
        if len(survivors) == 1:
            return Search(survivors[0], rungs)


def _estimate(trials: Sequence[Trial], epochs: int) -> float:
    """Seconds to bring `trials` to `epochs` epochs at each one's pace so far."""
    return sum(
        (epochs - t.epochs) * t.seconds / max(t.epochs, 1)
        for t in trials
        if not t.stopped and t.epochs < epochs
    )


def _scores(trials: Sequence[Trial]) -> str:
    return ", ".join(f"{t.name} {t.score:.4f}" for t in trials)
