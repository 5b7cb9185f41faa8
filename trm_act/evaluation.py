"""Held-out evaluation: the model (adaptive halting and fixed max steps) against trading baselines.

Every policy is scored on the same decision points of the chronological test split, none of which
the trainer saw. PnL per decision is the env's realized strategy PnL (fraction of capital, net of
costs), so a policy's total here equals the sum of rewards a ``TradeReplayEnv`` episode would pay.

On a universe of instruments the headline figures are pooled over every instrument's test decisions
(taken in time order), ``best_fixed`` picks one strategy per instrument on that instrument's train
decisions, and ``metrics["per_instrument"]`` breaks the PnL down by symbol (its rows sum to the pooled
totals).

This module walks the decisions and runs the model (:func:`predict`); the baselines are in
:mod:`trm_act.baselines`, the figures in :mod:`trm_act.metrics` and the printed table in :mod:`trm_act.report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from trm_act.act import act_every_depth, act_predict, halt_rule
from trm_act.baselines import baseline_actions
from trm_act.envs import STRATEGIES, ReplayData
from trm_act.metrics import (
    by_regime,
    per_instrument_table,
    steps_by_regime,
    steps_by_regime_age,
    trading_metrics,
)

EVAL_BATCH_SIZE = 512
"""Rows per forward pass at evaluation. On the 2,000,000-bar CSV of ``bench memory`` 2048 rows raised the run's
peak RSS from 1.24 to 1.43 GiB (torch's intermediates for 2048 rows) and evaluated no faster on one CPU thread
(34-36 s against 31-33 s per evaluation); on a GPU, larger batches pay (``--eval-batch-size``)."""

TIMED_DECISIONS = 2048
"""A split of more decisions than this, scored by a model with a fresh carry, is run once, at full depth (see
:func:`predict_full_depth`), instead of once adaptively and once at fixed depth; the adaptive and fixed-depth wall
times are then measured on a fixed sample of this many decisions (``model.timed_decisions`` in the metrics). On the
2,000,000-row CSV of ``bench memory`` (25,000 test decisions) this halves the final evaluation."""

DEPTH_DECISIONS = 4096
"""A model with a belief walks the split once per fixed depth for the ``pnl_by_fixed_steps`` curve (the belief at
depth k differs from the belief at depth max_steps), which costs 1 + 2 + ... + max_steps reasoning steps per
decision against max_steps for a fresh carry's one full-depth pass. On a split of more decisions than this, the
curve's walk (every depth at once, :func:`trm_act.act.act_every_depth`) scores a fixed sample of this many decisions
(``model.fixed_depth_decisions`` in the metrics); the adaptive and fixed-max answers still score every decision, and
each sampled decision gets at depth max_steps the answer the whole fixed-depth walk gives it."""


class Walk(NamedTuple):
    """How evaluation walks N decisions: contiguous chunks of each instrument's stream, run in lockstep.

    ``order`` (N,) lists the decisions stream by stream (one instrument's decisions in time order); chunk c
    covers ``order[begin[c] : end[c]]`` and first replays, unscored, the ``burn[c]`` decisions before
    ``begin[c]`` of its own stream (so its belief has forgotten where it started). With a fresh carry every
    decision is a chunk of its own (no state crosses decisions), which makes a lockstep batch a plain batch.
    """

    order: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    burn: np.ndarray


def plan_walk(streams: np.ndarray, chunk: int, burn_in: int) -> Walk:
    """Cut the decisions into chunks of at most ``chunk`` decisions, each with up to ``burn_in`` decisions of
    burn-in from its own stream. ``streams`` (N,) names each decision's stream (e.g. its instrument);
    decisions of one stream are taken in the order given."""
    order = np.argsort(streams, kind="stable")  # (N,) stream by stream, time order within a stream
    sorted_streams = streams[order]
    stream_start = np.flatnonzero(np.r_[True, sorted_streams[1:] != sorted_streams[:-1]])  # (S,)
    stream_end = np.r_[stream_start[1:], len(order)]  # (S,)
    # Without a Python loop over streams (a fresh carry makes every decision a stream of its own):
    counts = -(-(stream_end - stream_start) // chunk)  # (S,) chunks of each stream
    first = np.repeat(stream_start, counts)  # (C,) first decision of each chunk's stream
    before = np.repeat(np.cumsum(counts) - counts, counts)  # (C,) chunks of the streams before this chunk's
    within = np.arange(int(counts.sum())) - before  # (C,) chunk number within its stream
    begin = first + within * chunk  # (C,) first scored decision of each chunk
    end = np.minimum(begin + chunk, np.repeat(stream_end, counts))  # (C,)
    return Walk(order, begin, end, np.minimum(begin - first, burn_in))


def walk_chunk(n: int, batch_size: int, burn_in: int) -> int:
    """Decisions per chunk: enough chunks to fill a batch of ``batch_size`` rows, but at least 2 x ``burn_in``
    decisions each, so the replayed burn-in adds at most half again to the rows run."""
    return max(-(-n // batch_size), 2 * burn_in, 1)


def evaluation_walk(
    model: torch.nn.Module, replay: ReplayData, indices: np.ndarray, batch_size: int, burn_in: int
) -> Walk:
    """The walk :func:`predict` runs over decisions ``indices`` (N,): one chunk per decision with a fresh carry;
    with a belief (``model.has_belief``), contiguous chunks of each instrument's decisions (:func:`walk_chunk`),
    each after up to ``burn_in`` unscored decisions of its own instrument."""
    if not getattr(model, "has_belief", False):
        return plan_walk(np.arange(len(indices)), 1, 0)
    chunk = walk_chunk(len(indices), batch_size, burn_in)
    return plan_walk(replay.symbol_index[indices], chunk, burn_in)


def sample_walk(walk: Walk, size: int, seed: int) -> Walk:
    """A fixed, seeded sample of ``walk``'s chunks that scores exactly ``size`` decisions (the whole walk when it
    scores no more than that).

    Chunks are drawn in a random order from ``numpy.random.default_rng(seed)`` until they cover ``size``
    decisions; the last one drawn is cut short. With a fresh carry every chunk is one decision, so this is a
    uniform sample of decisions. With a belief a drawn chunk is walked exactly as the whole walk walks it (same
    burn-in, same start), so each sampled decision gets the answer the whole walk would give it. The sample
    depends only on the walk and the seed: every call (and a resumed run) scores the same decisions.
    """
    lengths = walk.end - walk.begin  # (C,) decisions each chunk scores
    if size >= int(lengths.sum()):
        return walk
    drawn = np.random.default_rng(seed).permutation(len(lengths))  # (C,)
    covered = np.cumsum(lengths[drawn])  # (C,) decisions scored by the first i + 1 chunks drawn
    k = int(np.searchsorted(covered, size)) + 1  # chunks needed to cover size decisions
    end = walk.end.copy()
    end[drawn[k - 1]] -= int(covered[k - 1]) - size  # cut the last chunk drawn to size decisions in all
    chosen = np.sort(drawn[:k])  # (k,) in walk order
    return Walk(walk.order, walk.begin[chosen], end[chosen], walk.burn[chosen])


def walk_positions(walk: Walk) -> np.ndarray:
    """(M,) sorted positions (into the ``indices`` the walk was planned on) of the decisions ``walk`` scores."""
    lengths = walk.end - walk.begin  # (C,)
    first = np.repeat(walk.begin - np.cumsum(lengths) + lengths, lengths)  # (M,) begin - decisions before it
    return np.sort(walk.order[first + np.arange(int(lengths.sum()))])


class Prediction(NamedTuple):
    """ACT inference over N decisions."""

    actions: np.ndarray
    """(N,) chosen strategy."""
    steps: np.ndarray
    """(N,) reasoning steps taken."""
    seconds: float
    """Wall time of the forward passes."""
    step_actions: np.ndarray | None
    """(max_steps, N) fixed depth only: the answer at each depth k = 1..max_steps (row k - 1). With a fresh carry
    it is the answer after each step of the one run; with a belief, that of each depth's own walk
    (``every_depth``), else None."""


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    replay: ReplayData,
    indices: np.ndarray,
    *,
    max_steps: int,
    adaptive: bool,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
    burn_in: int = 0,
    walk: Walk | None = None,
    every_depth: bool = False,
) -> Prediction:
    """ACT inference on decisions ``indices`` (N,) of ``replay``, walked in time order per instrument.

    A model with a belief (``model.has_belief``) carries it from each decision to the next of the same
    instrument. To keep that fast, each instrument's decisions are cut into about ``batch_size`` contiguous
    chunks that run side by side, each starting ``burn_in`` decisions early from the initial belief; the
    burn-in decisions are not scored. Observations are built one lockstep batch at a time, never the whole
    split's (N, W, F) at once. Returns the answers in the order of ``indices``.

    ``walk`` (default: ``evaluation_walk(model, replay, indices, batch_size, burn_in)``) runs only some chunks,
    e.g. a :func:`sample_walk`; the decisions it does not score (not in ``walk_positions(walk)``) answer 0.

    ``every_depth`` (fixed depth, a belief): walk every depth 1..max_steps at once, each carrying its own belief
    (:func:`trm_act.act.act_every_depth`), for ``step_actions``; the answers are those of depth max_steps.
    """
    n = len(indices)
    has_belief = bool(getattr(model, "has_belief", False))
    every_depth = every_depth and has_belief and not adaptive
    if walk is None:
        walk = evaluation_walk(model, replay, indices, batch_size, burn_in)
    actions = np.zeros(n, dtype=np.int64)
    steps = np.zeros(n, dtype=np.int64)
    with_steps = every_depth or not (has_belief or adaptive)
    step_actions = np.zeros((max_steps, n), dtype=np.int64) if with_steps else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    seconds = 0.0
    for group in range(0, len(walk.begin), batch_size):
        begin, end = walk.begin[group : group + batch_size], walk.end[group : group + batch_size]  # (G,)
        first = begin - walk.burn[group : group + batch_size]  # (G,) where each chunk starts walking
        rows = np.arange(len(begin))  # (A,) chunks still walking
        belief = None  # (A, D) each walking chunk's belief; None = the initial one
        for p in range(int((end - first).max())):
            alive = first[rows] + p < end[rows]  # (A,) a chunk that has ended never walks again
            if not alive.all():
                rows = rows[alive]
                if belief is not None:
                    belief = belief[torch.from_numpy(alive).to(device)]
            pos = first[rows] + p  # (A,) positions in walk.order
            at = walk.order[pos]  # (A,) positions in indices
            obs = torch.from_numpy(replay.observations(indices[at])).to(device)  # (A, W, F)
            _sync(device)
            start = time.perf_counter()  # time the model only, not building the batch
            with autocast:
                if every_depth:  # belief (A, K, D): one per depth; the answer is depth max_steps'
                    answers, belief = act_every_depth(model, obs, max_steps, belief)  # (K, A)
                    chosen, taken = answers[-1], None  # (A,); every row took max_steps
                else:
                    result = act_predict(model, obs, max_steps=max_steps, adaptive=adaptive, belief=belief)
                    answers, belief, chosen, taken = result.step_actions, result.belief, result.actions, result.steps
            _sync(device)
            seconds += time.perf_counter() - start
            scored = pos >= begin[rows]  # (A,) burn-in answers belong to the chunk before
            actions[at[scored]] = chosen.cpu().numpy()[scored]
            steps[at[scored]] = max_steps if taken is None else taken.cpu().numpy()[scored]
            if step_actions is not None:
                step_actions[:, at[scored]] = answers.cpu().numpy()[:, scored]
    return Prediction(actions, steps, seconds, step_actions)


@torch.no_grad()
def predict_full_depth(
    model: torch.nn.Module,
    replay: ReplayData,
    indices: np.ndarray,
    *,
    max_steps: int,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
) -> tuple[Prediction, Prediction]:
    """Adaptive and fixed-depth answers of a fresh-carry model on decisions ``indices`` (N,), from one pass.

    Every row runs ``max_steps`` reasoning steps, as ``act_predict(adaptive=False)`` runs them (in the same
    batches as :func:`predict`, so the fixed-depth answers are the same to the bit). A row's adaptive answer is
    its answer at the first step where :func:`trm_act.act.halt_rule` fires, the step at which an adaptive batch
    drops it; it can differ from ``predict(adaptive=True)``'s only where a halt logit lies within float rounding
    of 0 (the shrinking batches of an adaptive pass round the halt head differently: see ``trm_act.policy``).
    Returns ``(adaptive, fixed)``; both hold the pass's wall time.
    """
    if getattr(model, "has_belief", False):
        raise ValueError(
            "predict_full_depth needs a fresh carry (a belief carried adaptively differs from one carried at "
            "full depth); use predict(adaptive=True) and predict(adaptive=False)"
        )
    n = len(indices)
    step_actions = np.zeros((max_steps, n), dtype=np.int64)
    halt_steps = np.zeros(n, dtype=np.int64)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    seconds = 0.0
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, n, batch_size):
            obs = torch.from_numpy(replay.observations(indices[lo : lo + batch_size])).to(device)  # (B, W, F)
            b = obs.shape[0]
            _sync(device)
            start = time.perf_counter()  # time the model only, as predict does
            with autocast:
                x = model.encode(obs)  # (B, W, D)
                carry = model.init_carry(b, device=x.device)
                answers = []
                halted_at = torch.zeros(b, dtype=torch.long, device=x.device)  # (B,) 0 = not yet
                for s in range(1, max_steps + 1):
                    out = model.step(x, carry)
                    carry = out.carry
                    answers.append(out.task_logits.argmax(-1))  # (B,)
                    stops = halt_rule(out.halt_logits, torch.full_like(halted_at, s), max_steps)  # (B,)
                    halted_at = torch.where((halted_at == 0) & stops, s, halted_at)
            _sync(device)
            seconds += time.perf_counter() - start
            step_actions[:, lo : lo + b] = torch.stack(answers).cpu().numpy()  # (S, B)
            halt_steps[lo : lo + b] = halted_at.cpu().numpy()
    finally:
        model.train(was_training)
    adaptive = step_actions[halt_steps - 1, np.arange(n)]  # (N,) the answer at each row's halting step
    fixed = Prediction(step_actions[-1].copy(), np.full(n, max_steps, dtype=np.int64), seconds, step_actions)
    return Prediction(adaptive, halt_steps, seconds, None), fixed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class EvalReport:
    """Held-out results: ``metrics`` is what ``metrics.json`` holds."""

    metrics: dict[str, Any]
    equity: dict[str, np.ndarray] = field(default_factory=dict)
    """Cumulative PnL per decision for the model and the main baselines."""
    steps: np.ndarray | None = None
    """Reasoning steps per test decision under adaptive halting."""
    steps_by_regime: dict[str, float] | None = None
    """Mean adaptive reasoning steps per true regime (synthetic data only), in regime order."""

    def scalars(self) -> dict[str, float]:
        model = self.metrics["model"]
        scalars = {
            "eval/pnl": model["pnl"],
            "eval/accuracy": model["accuracy"],
            "eval/mean_steps": model["mean_steps"],
            "eval/sharpe": model["sharpe"],
            "eval/max_drawdown": model["max_drawdown"],
            "eval/fixed_steps_accuracy": model["fixed_max_steps"]["accuracy"],
            # Reasoning steps run / steps a fixed-depth model would run: the compute adaptive halting saves,
            # deterministic (a wall-time ratio is timing noise on a 999-decision split).
            "eval/row_steps_ratio": model["mean_steps"] / model["max_steps"],
        }
        # Does halting track difficulty? (synthetic data: the true regimes are known)
        by_age = model.get("steps_by_regime_age") or {}
        if by_age.get("ratio") is not None:
            scalars["eval/steps_after_regime_change"] = by_age["recent_change"]
            scalars["eval/steps_settled_regime"] = by_age["settled"]
            scalars["eval/steps_change_ratio"] = by_age["ratio"]
        for name, steps in (self.steps_by_regime or {}).items():
            scalars[f"eval/steps_by_regime/{name}"] = steps
        for k, pnl in enumerate(model["pnl_by_fixed_steps"], start=1):
            scalars[f"eval/fixed_depth_pnl/{k}"] = pnl
        return scalars


def evaluate(
    model: torch.nn.Module,
    replay: ReplayData,
    *,
    max_steps: int,
    device: torch.device,
    batch_size: int = EVAL_BATCH_SIZE,
    bf16: bool = False,
    seed: int = 0,
    split: str = "test",
    burn_in: int = 64,
    sample: int | None = None,
    depth_sample: int | None = DEPTH_DECISIONS,
) -> EvalReport:
    """Score the model (adaptive and fixed max steps) and every baseline on ``split`` (default: held out).

    ``split="all"`` scores a whole market the model never saw (e.g. a synthetic market of another seed).
    A model with a belief walks each instrument's decisions in time order (see :func:`predict`;
    ``burn_in`` decisions per parallel chunk).

    ``sample`` (None or 0 = all): score only that many of the split's decisions, a fixed sample drawn with
    ``seed`` (:func:`sample_walk`: the same decisions on every call), as the trainer's periodic evaluations do;
    every figure, the baselines' too, is then over the sample, and ``test_split`` says so (``sampled_from``).

    ``depth_sample`` (None or 0 = all): with a belief, the decisions the fixed depths (the fixed-max answers and
    the per-depth curve) score when more are scored (:data:`DEPTH_DECISIONS`); ``fixed_depth_sample_adaptive_pnl``
    is then the adaptive PnL on the same decisions. Benchmarks that compare the curve with the adaptive PnL of the
    whole split pass None.
    """
    test_idx = replay.split_indices(split)
    if replay.n_symbols > 1:  # pool the instruments' decisions in time order: one calendar equity curve
        times = replay.timestamps[replay.decision_bars[test_idx]].asi8  # (N,)
        test_idx = test_idx[np.argsort(times, kind="stable")]
    split_decisions = len(test_idx)
    walk = evaluation_walk(model, replay, test_idx, batch_size, burn_in)
    kept = None  # (M,) positions in test_idx of the sampled decisions; None = all of them
    if sample and sample < split_decisions:
        walk = sample_walk(walk, sample, seed)
        kept = walk_positions(walk)

    def run(depth: int, adaptive: bool, on: Walk | None = None, every_depth: bool = False) -> Prediction:
        """The answers of the decisions walk ``on`` (default: ``walk``) scores, in time order."""
        on = walk if on is None else on
        out = predict(
            model, replay, test_idx, max_steps=depth, adaptive=adaptive, batch_size=batch_size,
            device=device, bf16=bf16, burn_in=burn_in, walk=on, every_depth=every_depth,
        )  # fmt: skip
        scored = kept if on is walk else walk_positions(on)
        if scored is None:
            return out
        step_actions = None if out.step_actions is None else out.step_actions[:, scored]
        return out._replace(actions=out.actions[scored], steps=out.steps[scored], step_actions=step_actions)

    has_belief = bool(getattr(model, "has_belief", False))
    scored_decisions = split_decisions if kept is None else len(kept)
    timed = None  # decisions the wall times are measured on, when not all of them
    depth_rows = None  # (K,) rows of the scored decisions the fixed depths score; None = all of them
    if has_belief:
        # A belief carried at depth k is another belief than at depth max_steps, so the fixed depths take a walk of
        # their own, every depth at once; on a large split that walk covers a fixed sample (DEPTH_DECISIONS).
        adaptive = run(max_steps, adaptive=True)
        depth_walk = walk
        if depth_sample and scored_decisions > depth_sample:
            depth_walk = sample_walk(walk, depth_sample, seed)
            positions = walk_positions(depth_walk)  # (K,) sorted positions in test_idx
            depth_rows = positions if kept is None else np.searchsorted(kept, positions)
        fixed = run(max_steps, adaptive=False, on=depth_walk, every_depth=True)
    elif kept is None and split_decisions > TIMED_DECISIONS:
        # One pass at full depth gives both answers; the wall times come from both kinds of pass on a sample.
        adaptive, fixed = predict_full_depth(
            model, replay, test_idx, max_steps=max_steps, batch_size=batch_size, device=device, bf16=bf16
        )
        timed, walk = TIMED_DECISIONS, sample_walk(walk, TIMED_DECISIONS, seed)
        adaptive = adaptive._replace(seconds=run(max_steps, adaptive=True).seconds)
        fixed = fixed._replace(seconds=run(max_steps, adaptive=False).seconds)
    else:
        adaptive = run(max_steps, adaptive=True)
        fixed = run(max_steps, adaptive=False)
    adaptive_actions, adaptive_steps, adaptive_s, _ = adaptive
    fixed_actions, fixed_steps, fixed_s, step_actions = fixed
    if kept is not None:
        test_idx = test_idx[kept]  # (M,) still in time order
    pnl_matrix = replay.strategy_pnl[test_idx]  # (N, 8)
    labels = replay.labels[test_idx]  # (N,)
    periods = replay.bars_per_year / replay.stride
    rows = np.arange(len(test_idx))

    def score(actions: np.ndarray, at: np.ndarray | None = None) -> dict[str, float]:
        """Metrics of ``actions`` on the scored decisions, or on their rows ``at``."""
        at = rows if at is None else at
        return trading_metrics(pnl_matrix[at, actions], actions, labels[at], periods)

    model_metrics: dict[str, Any] = score(adaptive_actions)
    model_metrics |= {
        "mean_steps": float(adaptive_steps.mean()),
        "max_steps": max_steps,
        "steps_histogram": np.bincount(adaptive_steps, minlength=max_steps + 1)[1:].tolist(),
        "wall_time_s": adaptive_s,
        "fixed_max_steps": score(fixed_actions, depth_rows)
        | {"mean_steps": float(fixed_steps.mean()), "wall_time_s": fixed_s}
        # A belief's fixed-depth walk ran every depth 1..max_steps at once: its time is theirs, not max_steps' alone.
        | ({"every_depth": True} if has_belief else {}),
        "time_ratio_adaptive_vs_fixed": None
        if has_belief
        else adaptive_s / fixed_s if fixed_s > 0 else float("nan"),
        # Does each extra reasoning step pay? PnL when every decision runs exactly k = 1..max_steps steps.
        "pnl_by_fixed_steps": [score(actions, depth_rows)["pnl"] for actions in step_actions],
        "strategy_usage": np.bincount(adaptive_actions, minlength=len(STRATEGIES)).tolist(),
    }
    if timed is not None:  # the wall times are those of a fixed sample of the decisions (TIMED_DECISIONS)
        model_metrics["timed_decisions"] = timed
    if depth_rows is not None:  # the fixed depths scored a fixed sample of them (DEPTH_DECISIONS) ...
        model_metrics["fixed_depth_decisions"] = len(depth_rows)
        # ... where the adaptive answers earn this: the figure to read the fixed depths' PnL against.
        model_metrics["fixed_depth_sample_adaptive_pnl"] = score(adaptive_actions[depth_rows], depth_rows)["pnl"]
    if replay.bar_regimes is not None:
        model_metrics["steps_by_regime_age"] = steps_by_regime_age(replay, test_idx, adaptive_steps)
    baselines_actions = baseline_actions(replay, test_idx, seed)
    if "regime_oracle" in baselines_actions:
        model_metrics["by_regime"] = by_regime(
            replay, test_idx, pnl_matrix, adaptive_actions, baselines_actions
        )
    baselines: dict[str, Any] = {name: score(actions) for name, actions in baselines_actions.items()}
    chosen = np.unique(baselines_actions["best_fixed"])
    baselines["best_fixed"]["strategy"] = STRATEGIES[int(chosen[0])] if len(chosen) == 1 else "per instrument"
    baselines["fixed"] = {name: score(np.full(len(rows), index)) for index, name in enumerate(STRATEGIES)}

    metrics = {
        "model": model_metrics,
        "baselines": baselines,
        "test_split": {
            "decisions": len(test_idx),
            "first_bar": int(replay.decision_bars[test_idx[0]]),
            "last_bar": int(replay.decision_bars[test_idx[-1]]),
            "periods_per_year": periods,
        },
    }
    if kept is not None:
        metrics["test_split"]["sampled_from"] = split_decisions
    if replay.universe:
        metrics["test_split"] |= {
            "instruments": replay.n_symbols,
            "cutoff": str(replay.boundary_time),
            "skipped_files": list(replay.skipped),
        }
        metrics["per_instrument"] = per_instrument_table(
            replay, test_idx, pnl_matrix, labels, adaptive_actions, baselines_actions
        )
    equity = {"equity/model": np.cumsum(pnl_matrix[rows, adaptive_actions])}
    for name in ("best_fixed", "regime_oracle", "random"):
        if name in baselines_actions:
            equity[f"equity/{name}"] = np.cumsum(pnl_matrix[rows, baselines_actions[name]])
    return EvalReport(
        metrics=metrics,
        equity=equity,
        steps=adaptive_steps,
        steps_by_regime=steps_by_regime(replay, test_idx, adaptive_steps),
    )
