"""Adaptive computation time (ACT) around :class:`~trm_act.model.RecurrentTRM`.

Three pieces, each written once:

- :func:`halt_rule`: the only place that decides whether a sample stops after a reasoning step.
- :class:`ACTState` + :func:`act_step`: TRM's training carry. B slots each hold one sample; every call
  runs one reasoning step on the full batch, and slots that halt are reset to a fresh carry (with
  ``torch.where``, no data-dependent shapes) so that the trainer can load a new sample into them.
- :func:`act_predict`: inference that really halts per sample. TRM and HRM train a halt head and
  then run every sample for the full 16 steps at evaluation (TinyRecursiveModels issue 64, HRM
  issue 7); here, in adaptive mode, halted rows are dropped from later steps, so the cost follows
  the mean number of steps instead of the maximum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trm_act.model import RecurrentTRM, StepOutput, TRMCarry

__all__ = [
    "ACTResult",
    "ACTState",
    "act_every_depth",
    "act_predict",
    "act_step",
    "checked_belief",
    "draw_min_steps",
    "first_halt_step",
    "halt_rows",
    "halt_rule",
]


def _check_max_steps(max_steps: int) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}.")


def _check_prob(exploration_prob: float) -> None:
    if not (isinstance(exploration_prob, (int, float)) and 0.0 <= exploration_prob <= 1.0):
        raise ValueError(f"exploration_prob must lie in [0, 1], got {exploration_prob!r}.")


def halt_rule(
    halt_logits: torch.Tensor,
    steps: torch.Tensor,
    max_steps: int,
    min_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """THE halting rule: does each sample stop after the reasoning step it just finished?

    ``steps`` (B,) counts the steps already taken, including the one that produced ``halt_logits``
    (B,) or (B, 1). A sample halts when ``(halt_logit > 0 and steps >= min_steps) or steps >= max_steps``.
    ``min_steps`` (B,) is the exploration floor used in training (None: no floor, as at inference).
    Returns a (B,) bool tensor.
    """
    _check_max_steps(max_steps)
    if halt_logits.dim() == 2 and halt_logits.shape[1] == 1:
        halt_logits = halt_logits.squeeze(1)  # (B,)
    if halt_logits.dim() != 1 or steps.shape != halt_logits.shape:
        raise ValueError(
            f"halt_logits must be (B,) or (B, 1) and steps (B,), got {tuple(halt_logits.shape)} and "
            f"{tuple(steps.shape)}."
        )
    wants_to_halt = halt_logits > 0  # (B,)
    if min_steps is not None:
        wants_to_halt = wants_to_halt & (steps >= min_steps)  # (B,) exploration: think at least min_steps
    return wants_to_halt | (steps >= max_steps)  # (B,) forced halt at the cap


def first_halt_step(halt_logits: torch.Tensor, max_steps: int) -> torch.Tensor:
    """The first reasoning step (1-based) at which :func:`halt_rule` fires, per sample: (B,) long.

    ``halt_logits`` (B, S) holds each sample's halt logit after steps 1..S of a run that did not stop
    (deep supervision, or a recorded trajectory). A row on which the rule never fires (S < max_steps)
    gets ``max_steps``. No exploration floor, as at inference.
    """
    if halt_logits.dim() != 2 or halt_logits.shape[1] < 1:
        raise ValueError(f"halt_logits must be (B, S) with S >= 1, got {tuple(halt_logits.shape)}.")
    b, s = halt_logits.shape
    steps = torch.arange(1, s + 1, device=halt_logits.device).expand(b, s)  # (B, S) step of each column
    fired = halt_rule(halt_logits.reshape(-1), steps.reshape(-1), max_steps).view(b, s)  # (B, S)
    first = fired.long().argmax(dim=1) + 1  # (B,) argmax returns the first maximum: the first firing
    return torch.where(fired.any(dim=1), first, torch.full_like(first, max_steps))  # (B,)


def draw_min_steps(
    batch_size: int,
    max_steps: int,
    exploration_prob: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Minimum step counts (B,) long for new samples: with probability ``exploration_prob`` a uniform
    integer in [2, max_steps] (TRM/HRM's halt exploration, which makes the halt head see long runs),
    otherwise 1 (no floor).

    Randomness comes only from ``generator`` (drawn on its device, then moved), so a seeded
    generator gives the same draws on every device. Always draws 2 x batch_size numbers, whatever
    the outcome, so the generator's stream does not depend on the data.
    """
    _check_max_steps(max_steps)
    _check_prob(exploration_prob)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    explore = torch.rand(batch_size, generator=generator, device=gen_device) < exploration_prob  # (B,)
    # max(max_steps, 2) keeps the range non-empty when max_steps == 1; such floors never bind.
    floor = torch.randint(
        2, max(max_steps, 2) + 1, (batch_size,), generator=generator, device=gen_device
    )  # (B,)
    ones = torch.ones(batch_size, dtype=torch.long, device=gen_device)  # (B,)
    return torch.where(explore, floor, ones).to(device)  # (B,)


@dataclass
class ACTState:
    """Training carry of B slots (TRM's ``Carry``): model carry (detached), steps taken so far in the
    current sample, and each slot's minimum step count (exploration floor)."""

    carry: TRMCarry
    steps: torch.Tensor
    """(B,) long: reasoning steps the slot's current sample has taken (0 for a fresh sample)."""
    min_steps: torch.Tensor
    """(B,) long: the slot's sample may not halt on its own before this many steps."""

    @classmethod
    def initial(
        cls,
        model: RecurrentTRM,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        exploration_prob: float = 0.0,
        generator: torch.Generator | None = None,
        max_steps: int | None = None,
    ) -> ACTState:
        """All slots fresh: steps = 0, minimum steps drawn as in :func:`draw_min_steps`
        (``max_steps`` defaults to ``model.config.max_steps``)."""
        device = device if device is not None else model.y_init.device
        max_steps = model.config.max_steps if max_steps is None else max_steps
        # Materialised, not init_carry's broadcast views: every later carry is a dense tensor, and a compiled
        # step would otherwise build a second graph for the first step's zero strides.
        return cls(
            carry=model.init_carry(batch_size, device=device).map(torch.Tensor.contiguous),
            steps=torch.zeros(batch_size, dtype=torch.long, device=device),
            min_steps=draw_min_steps(
                batch_size, max_steps, exploration_prob, generator=generator, device=device
            ),
        )

    @property
    def batch_size(self) -> int:
        return self.steps.shape[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The carry (with the belief and its proposal in belief mode), steps and minimum steps (for a checkpoint)."""
        state = {"y": self.carry.y, "z": self.carry.z, "steps": self.steps, "min_steps": self.min_steps}
        if self.carry.belief is not None:
            state |= {"belief": self.carry.belief, "proposal": self.carry.proposal}
        return state

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], device: torch.device | str | None = None
    ) -> ACTState:
        """Inverse of :meth:`state_dict`, on ``device``."""
        return cls(
            carry=TRMCarry(
                *(state[k].to(device) if k in state else None for k in ("y", "z", "belief", "proposal"))
            ),
            steps=state["steps"].to(device),
            min_steps=state["min_steps"].to(device),
        )


def act_step(
    model: RecurrentTRM,
    obs: torch.Tensor,
    state: ACTState,
    *,
    max_steps: int | None = None,
    exploration_prob: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[StepOutput, ACTState, torch.Tensor]:
    """One reasoning step on all B slots (a full batch, as in TRM's training loop).

    Returns ``(output, next_state, halted)``: ``output`` keeps its graph (apply TRMLoss to it);
    ``halted`` (B,) bool marks slots whose sample stopped after this step; in ``next_state`` those
    slots are already fresh (y and z reset, steps = 0, a new minimum step count drawn; in belief mode
    the halting step's proposal becomes the slot's belief), so the caller only has to put the next
    observation of the slot's stream into them, and to reset the belief where a new episode begins. ``max_steps`` defaults to ``model.config.max_steps``
    and ``exploration_prob`` to ``model.config.halt_exploration_prob`` (0.1).
    """
    max_steps = model.config.max_steps if max_steps is None else max_steps
    exploration_prob = model.config.halt_exploration_prob if exploration_prob is None else exploration_prob
    _check_max_steps(max_steps)
    if obs.shape[0] != state.batch_size:
        raise ValueError(f"obs has {obs.shape[0]} rows but the ACT state has {state.batch_size} slots.")
    out = model(obs, state.carry)
    steps = state.steps + 1  # (B,)
    halted = halt_rule(out.halt_logits.detach(), steps, max_steps, state.min_steps)  # (B,)
    b, device = state.batch_size, steps.device
    fresh = model.init_carry(b, device=device)
    new_min = draw_min_steps(b, max_steps, exploration_prob, generator=generator, device=device)  # (B,)
    next_state = ACTState(
        carry=out.carry.advance(halted, fresh),
        steps=torch.where(halted, torch.zeros_like(steps), steps),  # (B,)
        min_steps=torch.where(halted, new_min, state.min_steps),  # (B,)
    )
    return out, next_state, halted


@dataclass
class ACTResult:
    """What :func:`act_predict` returns."""

    actions: torch.Tensor
    """(B,) long: argmax of each sample's task logits at the step it halted."""
    steps: torch.Tensor
    """(B,) long: reasoning steps each sample took (max_steps for all when adaptive=False)."""
    task_logits: torch.Tensor
    """(B, C) float32: task logits at the step each sample halted."""
    row_steps: int
    """Row-steps evaluated (sum over reasoning steps of the rows run), the cost adaptive mode saves."""
    step_actions: torch.Tensor | None = None
    """(max_steps, B) long, ``adaptive=False`` only: the argmax after each step, so one fixed-depth run
    also gives the answer of every shallower fixed depth (does each extra step pay?). In belief mode a
    shallower depth would also have carried another belief, so these answer this decision only."""
    belief: torch.Tensor | None = None
    """(B, D) belief mode only: the belief after this decision (the proposal of the step each sample
    halted at), to pass as ``belief`` with the next decision of the same stream."""
    halt_logits: torch.Tensor | None = None
    """(B,) float32: the halt logit at the step each sample halted."""


def halt_rows(
    step: Callable[[torch.Tensor, TRMCarry], StepOutput],
    x: torch.Tensor,
    carry: TRMCarry,
    max_steps: int,
    num_classes: int,
) -> ACTResult:
    """Adaptive inference's loop: run ``step`` on encoded tokens x (B, W, D) from ``carry`` until each row
    halts by :func:`halt_rule` (no exploration floor), dropping halted rows from later steps.

    ``step`` is ``model.step`` in :func:`act_predict`; ``trm_act.policy`` passes a variant whose answer does not
    depend on the rows beside it. Returns each row's answer, steps, halt logit and (belief mode) belief at the
    step it halted.
    """
    _check_max_steps(max_steps)
    b = x.shape[0]
    if b == 1:  # one stream: nothing to compact, so none of the index bookkeeping below (the same answer)
        return _halt_one_row(step, x, carry, max_steps)
    logits = torch.zeros(b, num_classes, device=x.device)  # (B, C) filled as rows halt
    halt_logits = torch.zeros(b, device=x.device)  # (B,)
    beliefs = None if carry.belief is None else torch.empty_like(carry.belief)  # (B, D)
    steps = torch.full((b,), max_steps, dtype=torch.long, device=x.device)  # (B,)
    active = torch.arange(b, device=x.device)  # (A,) original row of each active row
    row_steps = 0
    for s in range(1, max_steps + 1):
        out = step(x, carry)
        row_steps += active.numel()
        halted = halt_rule(out.halt_logits, torch.full_like(active, s), max_steps)  # (A,)
        keep = (~halted).nonzero().squeeze(1)  # (A',) one host sync per step: the price of compaction
        if keep.numel() == active.numel():  # nobody stops: nothing to record or compact
            carry = out.carry
            continue
        rows = active[halted]  # (H,) original rows that stop now
        logits[rows] = out.task_logits[halted]
        halt_logits[rows] = out.halt_logits[halted]
        if beliefs is not None:
            beliefs[rows] = out.carry.proposal[halted]
        steps[rows] = s
        if keep.numel() == 0:
            break
        active, x, carry = active[keep], x[keep], out.carry.select(keep)  # later steps see the active rows
    return ACTResult(
        logits.argmax(-1), steps, logits, row_steps=row_steps, belief=beliefs, halt_logits=halt_logits
    )


def checked_belief(belief: torch.Tensor, initial: torch.Tensor | None) -> torch.Tensor:
    """A caller's belief (B, D), checked against the model's initial one (None: the model has no belief)
    and cast to its dtype and device."""
    if initial is None:
        raise ValueError("belief was given but the model has no belief (TRMConfig.carry='fresh').")
    if belief.shape != initial.shape:
        raise ValueError(
            f"belief must have shape {tuple(initial.shape)} (batch, d_model), got {tuple(belief.shape)}."
        )
    return belief.to(initial)


def _halt_one_row(
    step: Callable[[torch.Tensor, TRMCarry], StepOutput], x: torch.Tensor, carry: TRMCarry, max_steps: int
) -> ACTResult:
    """:func:`halt_rows` for a batch of one row: step until :func:`halt_rule` fires. The per-step masks and
    scatters of the general loop cost more than a reasoning step of a compiled model (one streaming update)."""
    taken = torch.arange(1, max_steps + 1, device=x.device)  # (S,) steps taken after each step
    for s in range(max_steps):
        out = step(x, carry)
        if halt_rule(out.halt_logits, taken[s : s + 1], max_steps).item():  # one host sync, as the loop's
            break
        carry = out.carry
    return ACTResult(
        out.task_logits.argmax(-1),
        taken[s : s + 1].clone(),
        out.task_logits,
        row_steps=s + 1,
        belief=out.carry.proposal,
        halt_logits=out.halt_logits,
    )


@torch.no_grad()
def act_predict(
    model: RecurrentTRM,
    obs: torch.Tensor,
    max_steps: int | None = None,
    adaptive: bool = True,
    belief: torch.Tensor | None = None,
) -> ACTResult:
    """Run each sample until it halts (``adaptive=True``) or every sample for ``max_steps`` steps.

    Adaptive mode halts per sample with :func:`halt_rule` (no exploration floor) and indexes the
    still-active rows out of the batch after each step, so later steps run on fewer rows and the cost
    follows the mean step count. ``adaptive=False`` is what TRM and HRM do at evaluation: all rows
    run to ``max_steps`` and the last step's logits are used. The model is put in eval mode for the
    call and its previous mode restored.

    ``belief`` (B, D), for a model with ``carry="belief"``: each sample's belief before this decision
    (None = the initial belief, as at the start of a stream); ``ACTResult.belief`` is the belief after it.
    Walking a stream is ``r = act_predict(m, obs_t, belief=r.belief)`` decision after decision.
    """
    max_steps = model.config.max_steps if max_steps is None else max_steps
    _check_max_steps(max_steps)
    was_training = model.training
    model.eval()
    try:
        b = obs.shape[0]
        x = model.encode(obs)  # (B, W, D): encoded once, the input is the same at every step
        carry = model.init_carry(b, device=x.device)
        if belief is not None:
            carry = carry.with_belief(checked_belief(belief, carry.belief))
        if not adaptive:
            step_actions = []
            for _ in range(max_steps):
                out = model.step(x, carry)
                carry = out.carry
                step_actions.append(out.task_logits.argmax(-1))  # (B,)
            logits = out.task_logits  # (B, C)
            steps = torch.full((b,), max_steps, dtype=torch.long, device=x.device)  # (B,)
            return ACTResult(
                logits.argmax(-1),
                steps,
                logits,
                row_steps=b * max_steps,
                step_actions=torch.stack(step_actions),
                belief=carry.proposal,
                halt_logits=out.halt_logits,
            )

        return halt_rows(model.step, x, carry, max_steps, model.config.num_classes)
    finally:
        model.train(was_training)


@torch.no_grad()
def act_every_depth(
    model: RecurrentTRM, obs: torch.Tensor, max_steps: int, belief: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-depth answers at every depth k = 1..max_steps at once, each depth carrying its own belief.

    ``belief`` (B, K, D), K = max_steps: before this decision, the belief the depth-k walk carries in
    ``belief[:, k - 1]`` (None = the initial belief for every depth). Returns the answers (K, B), row k - 1 being
    ``act_predict(model, obs, max_steps=k, adaptive=False, belief=belief[:, k - 1]).actions``, and the beliefs after
    this decision (B, K, D). The K runs share one encoding and one batch: K * B rows at the first step, and the B
    rows of depth k leave after step k, so a walk over a stream calls the model K times per decision instead of
    1 + 2 + ... + K times (what keeps a belief's per-depth evaluation fast on small batches).
    """
    _check_max_steps(max_steps)
    was_training = model.training
    model.eval()
    try:
        b = obs.shape[0]
        x = model.encode(obs)  # (B, W, D), or another encoding with rows first (e.g. a peer's (B, W * F))
        x = x.repeat(max_steps, *[1] * (x.dim() - 1))  # (K*B, ...) depth-major: rows [(k-1)B, kB) run depth k
        carry = model.init_carry(b * max_steps, device=x.device)
        if belief is not None:
            stacked = belief.transpose(0, 1).reshape(b * max_steps, -1)  # (K*B, D) depth-major
            carry = carry.with_belief(checked_belief(stacked, carry.belief))
        answers, beliefs = [], []
        for _ in range(max_steps):
            out = model.step(x, carry)
            answers.append(out.task_logits[:b].argmax(-1))  # (B,) the shallowest depth left ends at this step
            beliefs.append(out.carry.proposal[:b])  # (B, D)
            x, carry = x[b:], out.carry.select(slice(b, None))  # the deeper depths go on
        return torch.stack(answers), torch.stack(beliefs, dim=1)  # (K, B), (B, K, D)
    finally:
        model.train(was_training)
