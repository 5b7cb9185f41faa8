"""Which fold trains where: a walk-forward's folds cut into pieces that keep every core busy.

Five folds of equal length on two cores are three rounds of training if each fold runs whole: the last round leaves
a core idle for a whole fold. A fold's training can stop at a checkpoint and resume in another process exactly
(``tests/test_trainer.py``), so it can be cut. McNaughton's wrap-around rule (1959) fills each core in turn up to
``C = max(longest fold, total / cores)`` steps and wraps the fold that overflows a core onto the next one: its first
part runs at the start of the next core and its rest at the end of this one, which is later, since no fold is longer
than C. That schedule is as short as any: five equal folds take 2.5 rounds on two cores instead of 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MIN_PIECE_SHARE", "Piece", "wrap_around"]

MIN_PIECE_SHARE = 0.1
"""Shortest piece a fold is cut into, as a share of the longest fold: a piece pays a model set-up and a checkpoint
round trip (~3 s), which a tenth of a default fold (150 steps, ~3 s) repays."""


@dataclass(frozen=True)
class Piece:
    """Optimizer steps ``[start, stop)`` of fold ``fold``, planned on core ``core`` from step ``begins`` of it."""

    fold: int
    start: int
    stop: int
    core: int
    begins: int

    @property
    def steps(self) -> int:
        return self.stop - self.start


def wrap_around(steps: dict[int, int], cores: int, min_piece: int | None = None) -> list[Piece]:
    """Cut folds of ``steps[k]`` optimizer steps into pieces for ``cores`` cores, in the order to start them.

    Folds are placed in the order of ``steps`` (put the longest first). A fold is cut only where both parts are at
    least ``min_piece`` steps (None: ``MIN_PIECE_SHARE`` of the longest fold); otherwise it goes whole to the next
    core, or stays whole on this one, which then ends less than ``min_piece`` steps late.
    Every fold's pieces cover ``[0, steps[k])`` in order, and a later piece never starts before an earlier one ends.
    """
    if cores < 1:
        raise ValueError(f"cores={cores}: expected an int >= 1")
    if not steps:
        return []
    if any(n < 1 for n in steps.values()):
        raise ValueError(f"steps={steps}: every fold needs at least one optimizer step")
    longest = max(steps.values())
    limit = max(longest, math.ceil(sum(steps.values()) / cores))  # C
    if min_piece is None:
        min_piece = max(1, round(MIN_PIECE_SHARE * longest))
    pieces: list[Piece] = []
    core, used = 0, 0  # the core being filled, and its steps planned so far
    for fold, n in steps.items():
        room = limit - used
        last_core = core == cores - 1
        if not last_core and n > room and room >= min_piece and n - room >= min_piece:
            head = n - room  # runs first, at the start of the next core; the rest ends this core
            pieces += [Piece(fold, head, n, core, used), Piece(fold, 0, head, core + 1, 0)]
            core, used = core + 1, head
            continue
        if not last_core and n > room and room < min_piece:
            core, used = core + 1, 0  # too little room left to start a piece: the next core takes the fold
        pieces.append(Piece(fold, 0, n, core, used))  # whole (a head under min_piece: this core ends late)
        used += n
    return sorted(pieces, key=lambda p: (p.begins, p.core))
