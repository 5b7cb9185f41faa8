"""The walk-forward's fold schedule: McNaughton's wrap-around rule, cut only where a piece repays its set-up."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trm_act.schedule import Piece, wrap_around


def makespan(pieces: list[Piece]) -> int:
    return max(p.begins + p.steps for p in pieces)


def test_five_equal_folds_on_two_cores_take_two_and_a_half_rounds():
    pieces = wrap_around({k: 1500 for k in range(5)}, cores=2)
    assert makespan(pieces) == 3750  # whole folds: 3 rounds, 4500
    assert [(p.fold, p.start, p.stop, p.core, p.begins) for p in pieces] == [
        (0, 0, 1500, 0, 0),
        (2, 0, 750, 1, 0),  # the cut fold's first half starts the second core...
        (3, 0, 1500, 1, 750),
        (1, 0, 1500, 0, 1500),
        (4, 0, 1500, 1, 2250),
        (2, 750, 1500, 0, 3000),  # ...and its second half, resumed from the checkpoint, ends the first
    ]


def test_one_round_and_one_core_cut_nothing():
    assert all(p.steps == 1500 for p in wrap_around({0: 1500, 1: 1500}, cores=2))
    assert all(p.steps == 1500 for p in wrap_around({0: 1500, 1: 1500}, cores=3))
    serial = wrap_around({k: 100 for k in range(4)}, cores=1)
    assert [(p.fold, p.begins) for p in serial] == [(0, 0), (1, 100), (2, 200), (3, 300)]


def test_a_cut_that_leaves_a_short_piece_is_not_made():
    # C = 1000: fold 1 would be cut 50 + 950 at a 10% minimum of 100 steps, so it starts the next core whole
    pieces = wrap_around({0: 950, 1: 1000, 2: 50}, cores=2)
    assert all(p.start == 0 and p.stop in (950, 1000, 50) for p in pieces)
    assert {p.fold: p.core for p in pieces} == {0: 0, 1: 1, 2: 1}


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="cores=0"):
        wrap_around({0: 10}, cores=0)
    with pytest.raises(ValueError, match="at least one optimizer step"):
        wrap_around({0: 0}, cores=2)
    assert wrap_around({}, cores=2) == []


@given(
    steps=st.lists(st.integers(1, 2000), min_size=1, max_size=9),
    cores=st.integers(1, 5),
    min_piece=st.integers(1, 300),
)
def test_every_schedule_is_complete_ordered_and_short(steps, cores, min_piece):
    folds = dict(enumerate(sorted(steps, reverse=True)))
    pieces = wrap_around(folds, cores, min_piece)
    for fold, n in folds.items():
        own = sorted((p for p in pieces if p.fold == fold), key=lambda p: p.start)
        assert own[0].start == 0 and own[-1].stop == n
        assert all(a.stop == b.start for a, b in itertools.pairwise(own))  # contiguous, each step once
        assert all(b.begins >= a.begins + a.steps for a, b in itertools.pairwise(own))  # a piece after the one before
        assert len(own) == 1 or all(p.steps >= min_piece for p in own)
    for core in range(cores):
        mine = sorted((p for p in pieces if p.core == core), key=lambda p: p.begins)
        assert all(b.begins >= a.begins + a.steps for a, b in itertools.pairwise(mine))  # one piece at a time
    assert [(p.begins, p.core) for p in pieces] == sorted((p.begins, p.core) for p in pieces)  # start order
    bound = max(max(steps), math.ceil(sum(steps) / cores))  # no schedule can be shorter
    assert bound <= makespan(pieces) <= bound + cores * min_piece  # a core skips or overruns < min_piece
