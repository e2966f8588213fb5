"""Successive halving against planted learning curves: who is trained how far, who wins, how
families of recipes meet at full length, and where the budget stops it."""

from __future__ import annotations

import math

import pytest

from towers.halving import first_rung_epochs, reachable, successive_halving


class Planted:
    """A trial whose validation score after e epochs is curve[e - 1]; each epoch costs `pace`
    seconds of a shared fake clock; it stops by itself after `last` epochs, and, given a bar, after
    the first epoch from which `reachable` says it cannot reach it."""

    def __init__(self, name, curve, clock, pace=1.0, last=None, family="softmax"):
        self.name, self.curve, self.clock, self.pace = name, curve, clock, pace
        self.family, self.max_epochs = family, len(curve)
        self.last = last or len(curve)
        self.epochs, self.score, self.seconds, self.stopped = 0, -math.inf, 0.0, False
        self.history: list[float] = []
        self.advanced_to: list[int] = []

    def advance(self, epochs, bar=-math.inf):
        self.advanced_to.append(epochs)
        while self.epochs < min(epochs, self.last):
            self.clock[0] += self.pace
            self.seconds += self.pace
            self.epochs += 1
            self.history = self.curve[: self.epochs]
            if reachable(self.history, self.max_epochs - self.epochs) < bar:
                break
        self.score = max(self.history)
        self.stopped = self.epochs >= self.last


def test_the_better_half_goes_on_until_one_is_left():
    clock = [0.0]
    late = Planted("late", [0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], clock)
    early = Planted("early", [0.3, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], clock)
    weak = Planted("weak", [0.05] * 8, clock)
    weaker = Planted("weaker", [0.01] * 8, clock)
    search = successive_halving([weak, early, late, weaker], first_epochs=2, clock=lambda: clock[0])
    # rung 1 at 2 epochs: early 0.4, late 0.2 go on; rung 2 at 4 epochs: late 0.6 beats early 0.4
    # and, the one finalist left, trains to its end.
    assert [r.epochs for r in search.rungs] == [2, 4, 8]
    assert search.rungs[0].kept == ["early", "late"]
    assert search.rungs[1].scores == {"early": 0.4, "late": 0.6}
    assert search.rungs[2].scores == {"late": 0.95}
    assert search.winner is late and not search.out_of_budget
    assert weak.advanced_to == [2] and weaker.advanced_to == [2]
    assert late.advanced_to == [2, 4, 8] and late.epochs == 8
    assert clock[0] == 4 * 2 + 2 * 2 + 4  # epochs trained in all


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
    # The finals, an epoch a round: slow, still gaining 0.1 an epoch, is never out of reach.
    assert [r.epochs for r in search.rungs[2:]] == [3, 4, 5, 6]
    final = search.rungs[-1]
    assert final.scores == {"slow": 0.50, "fast": 0.45} and final.kept == ["slow"]
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


@pytest.mark.parametrize(
    ("history", "epochs_left", "expected"),
    [
        ([0.1, 0.3, 0.2, 0.4], 3, 0.4 + 3 * 0.1),  # best so far 0.3, 0.3, 0.4: largest gain 0.1
        ([0.1, 0.2, 0.25, 0.25], 2, 0.25 + 2 * 0.05),  # a flat last epoch: the gain before it
        ([0.5, 0.4, 0.3, 0.2], 5, 0.5),  # falling: the best so far, no gain
        ([0.1, 0.2], 4, math.inf),  # too short to judge
        ([0.1, 0.3, 0.2], 0, 0.3),  # no epochs left: its best
    ],
)
def test_reachable_extends_the_largest_recent_gain_of_the_best_score(
    history, epochs_left, expected
):
    assert reachable(history, epochs_left) == pytest.approx(expected)


# Gowalla's two finalists under recipe=auto, validation recall@20 after each of their 12 epochs.
GOWALLA_SOFTMAX = [0.1314, 0.1545, 0.1667, 0.1739, 0.1775, 0.1803, 0.1817, 0.1827, 0.1834,
                   0.1842, 0.1828, 0.184]  # fmt: skip
GOWALLA_CONTRASTIVE = [0.082, 0.1077, 0.1317, 0.1447, 0.1582, 0.1699, 0.1817, 0.1884, 0.1987,
                       0.205, 0.2106, 0.2165]  # fmt: skip


def by_hand_stop(curve, leader_curve, start):
    """The epoch at which a trailing finalist trained an epoch a round after the leader stops:
    the first e > start where its best plus (epochs left) x its largest best-score gain over the
    last two epochs is below the leader's best after e epochs."""
    for e in range(max(start + 1, 3), len(curve) + 1):
        best = [max(curve[:i]) for i in range(1, e + 1)]
        gain = max(best[-1] - best[-2], best[-2] - best[-3])
        if best[-1] + (len(curve) - e) * gain < max(leader_curve[:e]):
            return e
    return len(curve)


def test_a_finalist_that_cannot_catch_up_stops_early():
    clock = [0.0]
    softmax = Planted("softmax", GOWALLA_SOFTMAX, clock, pace=45.0)
    contrastive = Planted("contrastive", GOWALLA_CONTRASTIVE, clock, pace=45.0, family="ccl")
    search = successive_halving([softmax, contrastive], first_epochs=1, clock=lambda: clock[0])
    assert by_hand_stop(GOWALLA_SOFTMAX, GOWALLA_CONTRASTIVE, start=1) == 8
    assert search.winner is contrastive and contrastive.epochs == 12
    assert softmax.epochs == 8 and softmax.score == 0.1827
    assert search.rungs[-1].kept == ["contrastive"]
    # One candidate a family: the finals start after the first rung.
    assert [r.finals for r in search.rungs] == [False] + [True] * (len(search.rungs) - 1)
    assert clock[0] == (12 + 8) * 45.0  # four of the softmax's twelve epochs never trained


def test_the_finals_stop_when_the_budget_cannot_pay_for_the_next_round():
    clock = [0.0]
    softmax = Planted("softmax", GOWALLA_SOFTMAX, clock, pace=45.0)
    contrastive = Planted("contrastive", GOWALLA_CONTRASTIVE, clock, pace=45.0, family="ccl")
    search = successive_halving(
        [softmax, contrastive], first_epochs=1, budget_seconds=10 * 45.0, clock=lambda: clock[0]
    )
    # The first rung costs 2 epochs' time, each finals round (an epoch each) 2 more: four fit.
    assert search.out_of_budget and softmax.epochs == contrastive.epochs == 5
    assert search.winner is softmax  # 0.1775 against 0.1582 when the money ran out
