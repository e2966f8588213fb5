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
them wins. The finalists train side by side, `first_epochs` more at a time, the leader first, and
a finalist stops as soon as it cannot reach the best score another finalist holds (`reachable`:
on Gowalla the softmax finalist stops at 8 of its 12 epochs, at 0.1827 and gaining at most
0.0014 an epoch, where the contrastive finalist holds 0.1884). A candidate that stops by itself (early stopping, or its last epoch
reached) keeps its score and is not advanced again. Before each round after the first, its cost
is estimated from each survivor's seconds per epoch so far; when the time spent plus that
estimate passes the budget, the search stops and the leader wins.

A candidate is anything with the `Trial` interface; train.py's trains a Lightning model from its
last checkpoint.
"""

from __future__ import annotations

import itertools
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
    history: list[float]  # the validation score after each epoch trained so far

    def advance(self, epochs: int, bar: float = -math.inf) -> None:
        """Train on until `epochs` epochs are done, the trial stops by itself, or it can no longer
        reach `bar`: after an epoch, `reachable(history, max_epochs - epochs) < bar`."""


@dataclass
class Rung:
    """One round: the epoch count the survivors trained to, each one's score, and who went on
    (in the finals: who can still win)."""

    epochs: int
    scores: dict[str, float]
    kept: list[str]
    finals: bool = False  # a round of the finals (the families' finalists side by side)


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
    while not (rungs and len({t.family for t in survivors}) == len(survivors)):
        target = {t.name: epochs for t in survivors}
        if rungs and clock() - started + _estimate(survivors, target) > budget_seconds:
            return _out_of_budget(survivors, rungs)
        for trial in survivors:
            if not trial.stopped and trial.epochs < epochs:
                trial.advance(epochs)
        ranked = _ranked(survivors)
        kept = _better_half_of_each_family(ranked)
        rungs.append(Rung(epochs, {t.name: t.score for t in survivors}, [t.name for t in kept]))
        log.info("recipe search, %d epochs: %s", epochs, _scores(ranked))
        survivors, epochs = kept, epochs * 2
    return _finals(survivors, first_epochs, rungs, lambda: budget_seconds - (clock() - started))


def _finals(
    finalists: list[Trial], step: int, rungs: list[Rung], budget_left: Callable[[], float]
) -> Search:
    """The families' finalists trained side by side to their own epoch counts, `step` epochs a
    round, the leader first; a finalist that cannot reach another's best score drops out, and the
    last one left trains to its end."""
    contenders = list(finalists)
    while any(_unfinished(t) for t in contenders):
        ahead = step if len(contenders) > 1 else math.inf
        target = {t.name: int(min(t.epochs + ahead, t.max_epochs)) for t in contenders}
        if _estimate(contenders, target) > budget_left():
            return _out_of_budget(contenders, rungs)
        for trial in _ranked(contenders):
            bar = max((t.score for t in contenders if t is not trial), default=-math.inf)
            if _can_win(trial, bar):
                trial.advance(target[trial.name], bar)
        ranked = _ranked(contenders)
        contenders = [t for t in ranked if t is ranked[0] or _can_win(t, ranked[0].score)]
        epochs = max(t.epochs for t in ranked)
        scores = {t.name: t.score for t in ranked}
        rungs.append(Rung(epochs, scores, [t.name for t in contenders], finals=True))
        log.info("recipe search, finals at %d epochs: %s", epochs, _scores(ranked))
    return Search(_ranked(contenders)[0], rungs)


def reachable(history: Sequence[float], epochs_left: int, window: int = 2) -> float:
    """The best score a trial with validation `history` can still reach in `epochs_left` more
    epochs, if its best score so far gains no more an epoch than its largest gain of the last
    `window` epochs: learning curves of a fixed recipe flatten (diminishing returns); the largest
    recent gain, not the last, keeps one flat epoch from ending a run and follows a curve that
    is still speeding up. +inf while the history is shorter than `window` + 1 epochs."""
    if epochs_left <= 0:
        return max(history, default=-math.inf)
    if len(history) <= window:
        return math.inf
    best = list(itertools.accumulate(history, max))
    gain = max(b - a for a, b in itertools.pairwise(best[-1 - window :]))
    return best[-1] + epochs_left * gain


def _unfinished(trial: Trial) -> bool:
    return not trial.stopped and trial.epochs < trial.max_epochs


def _can_win(trial: Trial, bar: float) -> bool:
    """Still a contender against the leader's `bar`: not finished, and able to reach it."""
    return _unfinished(trial) and reachable(trial.history, trial.max_epochs - trial.epochs) >= bar


def _out_of_budget(trials: Sequence[Trial], rungs: list[Rung]) -> Search:
    leader = _ranked(trials)[0]
    log.info("recipe search: the budget is spent; %s leads", leader.name)
    return Search(leader, rungs, out_of_budget=True)


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
