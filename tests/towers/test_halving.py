"""Successive halving against planted learning curves: who is trained how far, who wins, how
families of recipes meet at full length, and where the budget stops it."""

from __future__ import annotations

import math

import pytest

from towers.halving import first_rung_epochs, successive_halving


class Planted:
    """A trial whose validation score after e epochs is curve[e - 1]; each epoch costs `pace`
    seconds of a shared fake clock; it stops by itself after `last` epochs."""

    def __init__(self, name, curve, clock, pace=1.0, last=None, family="softmax"):
        self.name, self.curve, self.clock, self.pace = name, curve, clock, pace
        self.family, self.max_epochs = family, len(curve)
        self.last = last or len(curve)
        self.epochs, self.score, self.seconds, self.stopped = 0, -math.inf, 0.0, False
        self.advanced_to: list[int] = []

    def advance(self, epochs):
        self.advanced_to.append(epochs)
        target = min(epochs, self.last)
        spent = (target - self.epochs) * self.pace
        self.clock[0] += spent
        self.seconds += spent
        self.epochs = target
        self.score = max(self.curve[: self.epochs])
        self.stopped = self.epochs >= self.last


def test_the_better_half_goes_on_until_one_is_left():
    clock = [0.0]
    late = Planted("late", [0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], clock)
    early = Planted("early", [0.3, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], clock)
    weak = Planted("weak", [0.05] * 8, clock)
    weaker = Planted("weaker", [0.01] * 8, clock)
    search = successive_halving([weak, early, late, weaker], first_epochs=2, clock=lambda: clock[0])
    # rung 1 at 2 epochs: early 0.4, late 0.2 go on; rung 2 at 4 epochs: late 0.6 beats early 0.4.
    assert [r.epochs for r in search.rungs] == [2, 4]
    assert search.rungs[0].kept == ["early", "late"]
    assert search.rungs[1].scores == {"early": 0.4, "late": 0.6}
    assert search.winner is late and not search.out_of_budget
    assert weak.advanced_to == [2] and weaker.advanced_to == [2]
    assert late.advanced_to == [2, 4] and late.epochs == 4
    assert clock[0] == 4 * 2 + 2 * 2  # epochs trained in all


def test_a_trial_that_stopped_by_itself_keeps_its_score_and_is_not_advanced():
    clock = [0.0]
    stops = Planted("stops", [0.5, 0.6, 0.6, 0.6], clock, last=2)
    grows = Planted("grows", [0.1, 0.2, 0.3, 0.4], clock)
    other = Planted("other", [0.0] * 4, clock)
    search = successive_halving([stops, grows, other], first_epochs=2, clock=lambda: clock[0])
    assert stops.advanced_to == [2] and search.winner is stops


def test_the_budget_stops_the_search_before_a_rung_it_cannot_pay_for():
    clock = [0.0]
    a = Planted("a", [0.1, 0.2, 0.3, 0.9], clock, pace=10.0)
    b = Planted("b", [0.2, 0.3, 0.3, 0.3], clock, pace=10.0)
    c = Planted("c", [0.0] * 4, clock, pace=10.0)
    d = Planted("d", [0.0] * 4, clock, pace=10.0)
    # The first rung costs 4 x 2 x 10 = 80 s; the second would cost 2 x 2 x 10 = 40 s more.
    search = successive_halving([a, b, c, d], 2, budget_seconds=100, clock=lambda: clock[0])
    assert search.out_of_budget and search.winner is b
    assert len(search.rungs) == 1 and a.epochs == 2
    search = successive_halving(
        [Planted(n, [0.1, 0.2, 0.3, 0.9], [0.0]) for n in "wxyz"], 2, budget_seconds=0.0
    )
    assert len(search.rungs) == 1 and search.out_of_budget  # the first rung always runs


def test_one_candidate_wins_after_the_first_rung_and_no_candidates_is_an_error():
    clock = [0.0]
    only = Planted("only", [0.1, 0.2, 0.3], clock)
    assert successive_halving([only], 2, clock=lambda: clock[0]).winner is only
    with pytest.raises(ValueError, match="no candidates"):
        successive_halving([], 2)
    with pytest.raises(ValueError, match="first_epochs"):
        successive_halving([only], 0)


def test_families_halve_apart_and_their_finalists_meet_at_full_length():
    clock = [0.0]
    fast = Planted("fast", [0.30, 0.40, 0.42, 0.43, 0.44, 0.45], clock)
    fast_small = Planted("fast_small", [0.25, 0.35, 0.36, 0.37, 0.38, 0.39], clock)
    fast_weak = Planted("fast_weak", [0.10, 0.20, 0.21, 0.22, 0.23, 0.24], clock)
    slow = Planted("slow", [0.05, 0.10, 0.20, 0.30, 0.40, 0.50], clock, family="contrastive")
    slower = Planted("slower", [0.01, 0.02, 0.03, 0.04, 0.05, 0.06], clock, family="contrastive")
    trials = [fast, fast_small, fast_weak, slow, slower]
    search = successive_halving(trials, first_epochs=1, clock=lambda: clock[0])
    # Overall at one epoch the slow family trails; within it, slow beats slower and goes on.
    assert search.rungs[0].kept == ["fast", "fast_small", "slow"]
    assert search.rungs[1].epochs == 2 and search.rungs[1].kept == ["fast", "slow"]
    final = search.rungs[2]
    assert final.epochs == 6 and final.scores == {"fast": 0.45, "slow": 0.50}
    assert search.winner is slow and slow.epochs == 6 and fast.epochs == 6
    assert slower.advanced_to == [1] and fast_weak.advanced_to == [1]


@pytest.mark.parametrize(
    ("first_epochs", "first_steps", "steps_per_epoch", "expected"),
    [
        (2, 500, [72, 145], 2),  # a small log: every candidate needs the rung's two epochs
        (2, 500, [712, 1424], 1),  # a Gowalla-sized log: one epoch is already 712 steps or more
        (2, 500, [400, 1424], 2),  # the candidate with the fewest steps decides
        (3, 0, [10], 1),  # no step floor: one epoch
        (1, 10_000, [5], 1),  # never more than first_epochs
    ],
)
def test_the_first_rung_gives_every_candidate_enough_steps(
    first_epochs, first_steps, steps_per_epoch, expected
):
    assert first_rung_epochs(first_epochs, first_steps, steps_per_epoch) == expected
    brute = next(
        (e for e in range(1, first_epochs) if all(e * s >= first_steps for s in steps_per_epoch)),
        first_epochs,
    )
    assert expected == brute
