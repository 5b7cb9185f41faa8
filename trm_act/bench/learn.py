"""``python -m trm_act.bench learn``: what each training recipe learns, over seeds and unseen markets.

Every recipe trains on the default synthetic market's train split with several seeds. Each trained model
is then scored on that market's held-out split and on ``--markets`` further synthetic markets drawn from
the same regime spec with other market seeds (whole series; training never saw any bar of them). The
headline figure is the share of the regime oracle's PnL a model captures (the regime oracle plays, in
each true regime, the strategy that was best there on the train split: a realistic ceiling for a
policy that can only infer the regime). Recipes are compared on the same seeds and markets.

Recipes (``--recipes``):
- ``default``: the CLI default (``ExperimentConfig()``);
- ``seed_loss``: the same, trained with ``TRMLoss()``'s own defaults (the seed's loss);
- ``one_step``: the default at ``max_steps=1``: does thinking for more steps pay?
- ``mlp``: a recursion-free MLP over the flattened window, same loss, trainer and budget;
- ``mlp_window16``: the same MLP over a 16-bar window, the window it does best with on validation markets;
- ``mlp_last_bar`` (not run unless named): the same MLP on the decision bar's features alone, whose EWMs are
  the only memory it has;
- ``seed_loss_hmm``: the seed's loss on labels from a regime model fitted to the train split
  (``env.label_source="hmm"``, see ``trm_act.envs.regimes``), which real data allows too;
- ``regime_labels``: the seed's loss with clean supervision, each decision labelled with its true regime's
  best strategy (``env.label_source="regime"``, synthetic data only), and ``regime_labels_one_step``, the same
  at ``max_steps=1``: does thinking pay once the labels are not the bottleneck?
- ``unrolled``: the default trained with ``train.unroll`` (every reasoning step of a fresh batch of decisions
  per optimizer step, so it sees as many decisions as ``one_step``), compared with ``one_step``;
- ``--market slow`` recipes (issue "make reasoning steps pay"): ``belief_priced`` / ``belief_profitable`` (a
  belief carried across decisions, with halting that prices computation or the old halting), ``fresh_*`` (the
  same without the belief), their ``*_one_step`` twins, ``belief_unrolled`` (a belief trained with ``train.unroll``,
  walking each slot's episode in order), ``belief_bptt`` (a belief trained through 8 consecutive decisions,
  ``train.bptt_decisions``) and its one-step twin ``belief_bptt_one_step``, and the recurrent peers ``gru`` and
  ``gru_bptt``;
- ``fresh_gain`` / ``belief_gain``: halting whose head regresses the gain of one more reasoning step net of
  its cost (``loss.halt_target="gain"`` with its own step cost, 0.1 of a typical decision's absolute PnL), and both
  at ``max_steps=2`` (``*_gain_two_steps``);
- ``warm_depth``: the default with its first half of training at one reasoning step (``train.depth_warmup``), so
  that its first step learns from as many decisions as ``one_step``'s; ``evidence_warm_quiet`` the same warm-up on
  ``evidence_belief_quiet_halt`` (twin: ``evidence_belief_one_step``); ``later_steps_quarter`` and
  ``later_steps_unweighted``: the default with a decision's later steps weighing 0.25 or 0 in the gradient
  (``train.later_step_weight``), and ``evidence_later_unweighted``, whose first step differs from its one-step twin's
  only in its share of each batch;
- ablations, run only when named: ``short_labels`` (labels over the 8-bar trade, not 32 bars) and
  ``correct_halt`` (the seed's halt target, "confident (> 0.7) and correct", instead of the default's).

``--validation`` scores the validation markets instead (synthetic seeds 2000, 2001, ...; ``--markets 2``
for two of them): the only data recipes are chosen on. The candidate-recipe ablations ``post_norm``,
``global_attention``, ``window16``, ``no_ema`` and ``no_label_loss`` each undo one choice of the default;
``max_steps8`` doubles its reasoning steps; ``seed_loss_hmm<n>`` (n in ``HMM_STATE_COUNTS``) gives the regime
model of ``seed_loss_hmm`` n states.

``--features bar`` gives every recipe ``env.features="bar"``: each bar's own shape only, without the features
that summarise earlier bars, so a recipe must integrate the evidence of its window (and, with a belief, of its
past) itself.

Writes ``learn.json`` and ``learn.md`` into ``--out`` and prints the markdown table. Run it with
``--threads 1`` on a shared machine; ``--quick`` is a smoke test, not a measurement.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import math
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trm_act.bench import bench_parser, saved_results, single_label_costs_note
from trm_act.config import ExperimentConfig
from trm_act.envs import TradeReplayConfig, build_replay
from trm_act.envs.features import FEATURE_SETS
from trm_act.evaluation import evaluate
from trm_act.loss import LossConfig
from trm_act.model import StepOutput, TRMCarry, TRMConfig
from trm_act.trainer import Trainer

FRESH_MARKET_SEED = 1000  # fresh market k uses synthetic seed FRESH_MARKET_SEED + k
VALIDATION_MARKET_SEED = 2000  # --validation: market k uses synthetic seed VALIDATION_MARKET_SEED + k
# The slow market's regimes last 600 bars, so 40,000 bars hold ~67 regime spells, ~53 of them in the train split:
# too few to learn memory from. On the validation markets every model with memory overfit them (a GRU over
# decisions captured 23% of the regime oracle, less the longer it trained), and at 160,000 bars the same GRU
# captured 41% against 34% for the memoryless MLP (docs/thinking.md).
SLOW_MARKET_BARS = 160_000
DEFAULT_COST = TradeReplayConfig().cost


class MLPControl(nn.Module):
    """Recursion-free control: an MLP over the flattened observation window, with task and halt heads.

    It has RecurrentTRM's step interface, so the same trainer, loss and evaluation run it; its carry is
    a dummy and it always answers after one step (``config.max_steps == 1``).
    """

    has_belief = False

    def __init__(self, config: TRMConfig, hidden: int = 128) -> None:
        super().__init__()
        self.config = dataclasses.replace(config, max_steps=1)
        self.body = nn.Sequential(
            nn.Linear(config.window * config.n_features, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.task_head = nn.Linear(hidden, config.num_classes)
        self.halt_head = nn.Linear(hidden, 1)
        self.register_buffer("y_init", torch.zeros(1))  # where the trainer looks up the model's device

    def init_carry(self, batch_size: int, device: torch.device | str | None = None) -> TRMCarry:
        empty = torch.zeros(batch_size, 1, 1, device=device)  # (B, 1, 1): nothing is carried
        return TRMCarry(empty, empty)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.flatten(1).float()  # (B, W * F)

    def step(self, x: torch.Tensor, carry: TRMCarry) -> StepOutput:
        h = self.body(x)  # (B, hidden)
        return StepOutput(self.task_head(h).float(), self.halt_head(h).float().squeeze(-1), carry)

    def forward(self, obs: torch.Tensor, carry: TRMCarry) -> StepOutput:
        return self.step(self.encode(obs), carry)


class GRUControl(MLPControl):
    """Recurrent peer: the MLP's window summary feeds a GRU cell whose state persists across decisions.

    The usual recurrent policy of this field (a GRU over the stream of decisions), with the belief carry
    of ``RecurrentTRM(carry="belief")``: the state is reset at episode starts, carried by the same
    trainer and evaluation walk, and trained the same way (``gru``: one decision of backpropagation;
    ``gru_bptt``: eight). One step per decision, no recursion: what a belief buys without thinking.
    """

    has_belief = True

    def __init__(self, config: TRMConfig, hidden: int = 128) -> None:
        super().__init__(config, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.register_buffer("belief_init", torch.zeros(hidden))

    def init_carry(self, batch_size: int, device: torch.device | str | None = None) -> TRMCarry:
        empty = torch.zeros(batch_size, 1, 1, device=device)  # (B, 1, 1): no answer state within a decision
        belief = self.belief_init.to(device).expand(batch_size, -1)  # (B, hidden)
        return TRMCarry(empty, empty, belief, belief)

    def step(self, x: torch.Tensor, carry: TRMCarry) -> StepOutput:
        state = self.cell(self.body(x), carry.belief)  # (B, hidden) the revised belief
        next_carry = TRMCarry(carry.y, carry.z, carry.belief, state.detach())
        task, halt = self.task_head(state).float(), self.halt_head(state).float().squeeze(-1)  # (B, C), (B,)
        return StepOutput(task, halt, next_carry, state)


def _default(config: ExperimentConfig) -> ExperimentConfig:
    return config


def _seed_loss(config: ExperimentConfig) -> ExperimentConfig:
    return dataclasses.replace(config, loss=LossConfig())  # TRMLoss()'s own defaults: the seed's loss


def _one_step(config: ExperimentConfig) -> ExperimentConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, max_steps=1))


def _edit(section: str, **changes: Any) -> Callable[[ExperimentConfig], ExperimentConfig]:
    """A recipe edit: ``changes`` to the fields of one section (env, model, loss or train) of the config."""

    def edit(config: ExperimentConfig) -> ExperimentConfig:
        return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **changes)})

    return edit


_env_edit = functools.partial(_edit, "env")
_model_edit = functools.partial(_edit, "model")
_loss_edit = functools.partial(_edit, "loss")
_train_edit = functools.partial(_edit, "train")


def _window16(config: ExperimentConfig) -> ExperimentConfig:
    return dataclasses.replace(config, env=dataclasses.replace(config.env, window=16))


def _one_step_window16(config: ExperimentConfig) -> ExperimentConfig:
    return _one_step(_window16(config))


def _one_step_last_bar(config: ExperimentConfig) -> ExperimentConfig:
    return _one_step(dataclasses.replace(config, env=dataclasses.replace(config.env, window=1)))


def _no_ema(config: ExperimentConfig) -> ExperimentConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, ema_decay=0.0))


def _no_label_loss(config: ExperimentConfig) -> ExperimentConfig:
    return dataclasses.replace(config, loss=dataclasses.replace(config.loss, lambda_profit=0.0))


def _regime_labels(config: ExperimentConfig) -> ExperimentConfig:
    # The seed's loss told each decision's true regime (its oracle strategy) instead of the noisy hindsight
    # label: what the same model learns from clean supervision, which real data never offers.
    env = dataclasses.replace(config.env, label_source="regime")
    return dataclasses.replace(_seed_loss(config), env=env)


def _hmm_labels(n_states: int | None = None) -> Callable[[ExperimentConfig], ExperimentConfig]:
    # The seed's loss on labels a user can have on real data: each decision's state in a regime model fitted
    # to the train split (env.label_source="hmm"); n_states None keeps env.label_states' default.
    def edit(config: ExperimentConfig) -> ExperimentConfig:
        changes: dict[str, Any] = {"label_source": "hmm"}
        if n_states is not None:
            changes["label_states"] = n_states
        return dataclasses.replace(_seed_loss(config), env=dataclasses.replace(config.env, **changes))

    return edit


def _regime_labels_one_step(config: ExperimentConfig) -> ExperimentConfig:
    return _one_step(_regime_labels(config))


def _chain(*edits: Callable[[ExperimentConfig], ExperimentConfig]) -> Callable[[ExperimentConfig], ExperimentConfig]:
    def edit(config: ExperimentConfig) -> ExperimentConfig:
        for one in edits:
            config = one(config)
        return config

    return edit


def _belief(config: ExperimentConfig) -> ExperimentConfig:
    # A belief needs episodes long enough to form one: 256 decisions (2,048 bars at stride 8) instead of 64.
    env = dataclasses.replace(config.env, episode_length=256)
    return dataclasses.replace(config, env=env, model=dataclasses.replace(config.model, carry="belief"))


_fresh = _model_edit(carry="fresh")


def _unrolled(config: ExperimentConfig) -> ExperimentConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, unroll=True))


def _bptt(decisions: int) -> Callable[[ExperimentConfig], ExperimentConfig]:
    """A belief trained by backpropagation through ``decisions`` consecutive decisions of each slot's episode
    (train.unroll + train.bptt_decisions), at the default's decisions per optimizer step: batch_size / decisions
    slots (at least 4), each walking ``decisions`` decisions."""

    def edit(config: ExperimentConfig) -> ExperimentConfig:
        train = dataclasses.replace(
            config.train,
            unroll=True,
            bptt_decisions=decisions,
            batch_size=max(config.train.batch_size // decisions, 4),
        )
        return dataclasses.replace(_belief(config), train=train)

    return edit


_with_values = _loss_edit(lambda_value=1.0)  # the value regression beside the recipe's own terms
_value = _chain(_with_values, _loss_edit(lambda_reward=0.0, lambda_profit=0.0))  # the values alone
_priced = _loss_edit(halt_target="priced")
_gain = _loss_edit(halt_target="gain")  # its own step cost (loss.STEP_COSTS): a tenth of a typical decision's PnL

_profitable = _loss_edit(halt_target="profitable", confidence_threshold=0.9)


def _correct_halt(config: ExperimentConfig) -> ExperimentConfig:
    seed = LossConfig()
    loss = dataclasses.replace(
        config.loss, halt_target=seed.halt_target, confidence_threshold=seed.confidence_threshold
    )
    return dataclasses.replace(config, loss=loss)


HMM_STATE_COUNTS = (4, 6, 8, 12, 16, 24)
"""State counts of the regime model compared on validation (recipes seed_loss_hmm<n>)."""

# name -> (config edit, model factory or None for RecurrentTRM)
RECIPES: dict[
    str, tuple[Callable[[ExperimentConfig], ExperimentConfig], Callable[[TRMConfig], nn.Module] | None]
] = {
    "default": (_default, None),
    "seed_loss": (_seed_loss, None),
    "one_step": (_one_step, None),
    "mlp": (_one_step, MLPControl),
    # The same control over the 16-bar window it does best with on the validation markets (a fair peer).
    "mlp_window16": (_one_step_window16, MLPControl),
    # The same control on the decision bar's features alone: what the features' own memory (their EWMs of
    # trend, autocorrelation and volatility) hands every model before any model remembers anything.
    "mlp_last_bar": (_one_step_last_bar, MLPControl),
    # Value regression: every strategy's logit regresses its realized PnL, and the argmax picks the highest
    # expected PnL (no hindsight label, no softmax policy); "_with_recipe" adds it to the default's terms.
    "mlp_window16_value": (_chain(_one_step_window16, _value), MLPControl),
    "mlp_window16_value_with_recipe": (_chain(_one_step_window16, _with_values), MLPControl),
    "value": (_value, None),
    # The same with halting that values an answer by what its argmax plays (a value's softmax means nothing).
    "value_played": (_chain(_value, _loss_edit(answer_value="played")), None),
    # The default's own terms (labels, expected PnL, gain halting on the softmax) plus the value regression.
    "with_value": (_with_values, None),
    "with_value_one_step": (_chain(_with_values, _one_step), None),
    "value10_one_step": (_chain(_value, _loss_edit(lambda_value=10.0), _one_step), None),
    "mlp_value": (_chain(_one_step, _value), MLPControl),
    "value_one_step_fresh": (_chain(_value, _one_step, _fresh), None),
    "value_one_step_window16": (_chain(_value, _one_step_window16), None),
    "value_one_step_wide": (_chain(_value, _one_step, _model_edit(d_model=64)), None),
    "value_one_step": (_chain(_value, _one_step), None),
    # The belief revised from the decision's own tokens rather than from the halting step's answer, so that depth
    # refines the answer without changing what later decisions inherit; and its one-step twin.
    "evidence_belief": (_model_edit(belief_source="evidence"), None),
    "evidence_belief_one_step": (_chain(_model_edit(belief_source="evidence"), _one_step), None),
    # ... with neither the halt loss's gradient in the shared network nor forced extra steps: does the 4-step model's
    # first step then learn as the one-step twin's does?
    "evidence_belief_quiet_halt": (
        _model_edit(belief_source="evidence", halt_grad=0.0, halt_exploration_prob=0.0),
        None,
    ),
    # The first half of training at one reasoning step, so that the first step learns from as many decisions as the
    # one-step twin's before later steps share the batch (the twin of both is one_step / evidence_belief_one_step).
    "warm_depth": (_train_edit(depth_warmup=0.5), None),
    "evidence_warm_quiet": (
        _chain(
            _model_edit(belief_source="evidence", halt_grad=0.0, halt_exploration_prob=0.0),
            _train_edit(depth_warmup=0.5),
        ),
        None,
    ),
    # The first reasoning step's loss leads the gradient: a decision's later steps weigh a quarter, or nothing.
    "later_steps_quarter": (_train_edit(later_step_weight=0.25), None),
    "later_steps_unweighted": (_train_edit(later_step_weight=0.0), None),
    # A diagnostic: the evidence belief, whose first step differs from its one-step twin's only in the share of the
    # batch it gets (no later step, halt loss or belief written by a later step reaches the shared network).
    "evidence_later_unweighted": (
        _chain(_model_edit(belief_source="evidence", halt_grad=0.0), _train_edit(later_step_weight=0.0)),
        None,
    ),
    "seed_loss_hmm": (_hmm_labels(), None),
    # The default recipe (its loss and halting) on the same regime-model labels.
    "hmm_labels": (_env_edit(label_source="hmm"), None),
    # Controls with clean supervision: does thinking pay once the labels are not the bottleneck?
    "regime_labels": (_regime_labels, None),
    "regime_labels_one_step": (_regime_labels_one_step, None),
    # Ablations of the default recipe (not run unless named in --recipes):
    "short_labels": (_env_edit(label_horizon=None), None),  # labels over the 8-bar trade horizon
    # Labels that charge a round trip per trade, as the policy pays, or one per label horizon.
    "realized_costs": (_env_edit(label_costs="realized"), None),
    "single_costs": (_env_edit(label_costs="single"), None),
    # Gain halting at half its step cost (a twentieth of a typical decision's PnL): do more second steps pay?
    "step_cost05": (_loss_edit(halt_step_cost=0.05), None),
    "correct_halt": (_correct_halt, None),  # the seed's halt target: confident (> 0.7) and correct
    "no_label_loss": (_no_label_loss, None),  # the expected-PnL term alone (lambda_profit 0)
    "max_steps8": (_model_edit(max_steps=8), None),  # twice the reasoning steps
    # One cycle per reasoning step, all of it backpropagated (TRM's no-grad cycle removed): do later steps learn?
    "one_cycle": (_chain(_profitable, _model_edit(n_cycles=1)), None),
    # The halt loss trains the halt head only (TRMConfig.halt_grad 0): does a noisy halt target hurt the answer?
    "halt_detached": (_model_edit(halt_grad=0.0), None),
    # ... or only a share of its gradient reaches the shared network: the ACT test's later steps still learn?
    "halt_grad30": (_model_edit(halt_grad=0.3), None),
    # No halting exploration (no sample is made to think at least 2 steps): do the forced steps cost the first?
    "no_exploration": (_model_edit(halt_exploration_prob=0.0), None),
    # One block per reasoning step instead of two, at 4 steps and at 1: a step too shallow to finish alone is
    # where recursion should pay (TRM's tiny network, deepened by recursion).
    "one_layer": (_model_edit(n_layers=1), None),
    "one_layer_one_step": (_chain(_model_edit(n_layers=1), _one_step), None),
    # The CLI default before "gain" halting and one cycle per step: two cycles, "confident and not losing" halting.
    "previous_default": (_chain(_profitable, _model_edit(n_cycles=2)), None),
    # The architecture choices of the default, each undone on its own (compared with --validation):
    "post_norm": (_model_edit(norm="post"), None),  # TRM's post-norm blocks
    "global_attention": (_model_edit(attn_radius=0, pool="mean"), None),  # every bar sees every bar at once
    "global_attention_one_step": (_chain(_model_edit(attn_radius=0, pool="mean"), _one_step), None),
    "window16": (_window16, None),  # 16 bars of past instead of 32
    "no_ema": (_no_ema, None),  # evaluate the raw weights, not their moving average
    # Issue "make reasoning steps pay": fresh vs persistent belief, each with the old halting ("confident and
    # not losing") and the halting that prices computation, at max_steps 4 and 1; and the recurrent peer.
    "fresh_profitable": (_chain(_fresh, _profitable), None),
    "fresh_priced": (_chain(_fresh, _priced), None),
    # Halting that regresses the gain of one more step (halt_target "gain": a mean test where "priced" is a
    # median test), fresh and with a belief.
    "fresh_gain": (_chain(_fresh, _gain), None),
    "belief_gain": (_chain(_belief, _gain), None),
    # The same at max_steps 2: the belief recipes' second step is their best on the slow markets.
    "belief_gain_two_steps": (_chain(_belief, _gain, _model_edit(max_steps=2)), None),
    "fresh_gain_two_steps": (_chain(_fresh, _gain, _model_edit(max_steps=2)), None),
    # A belief over the default's 64-decision episodes: does it keep its slow-market gain and stop costing on today's?
    "belief_gain_episode64": (_chain(_belief, _gain, _env_edit(episode_length=64)), None),
    "belief_one_step_episode64": (_chain(_belief, _one_step, _env_edit(episode_length=64)), None),
    # The default (a fresh carry) trained on that belief's walk: decisions 8 bars apart from a random phase of the
    # 1-bar grid, 64 of them an episode. Is the belief's gain the belief's, or the walk's?
    "fresh_walk8": (_train_edit(train_stride=8), None),
    # ... and the 16-bar MLP control on that walk: does the TRM still beat it there?
    "mlp_window16_walk8": (_chain(_one_step_window16, _train_edit(train_stride=8)), MLPControl),
    "belief_profitable": (_chain(_belief, _profitable), None),
    "belief_priced": (_chain(_belief, _priced), None),
    "fresh_one_step": (_chain(_fresh, _one_step), None),
    "belief_one_step": (_chain(_belief, _one_step), None),
    "gru": (_chain(_belief, _one_step), GRUControl),
    # Every reasoning step of a fresh batch per optimizer step (train.unroll): as many decisions per step as
    # one_step sees, for max_steps times the compute.
    "unrolled": (_unrolled, None),
    # A belief trained through 8 consecutive decisions (64 bars at stride 8), batch_size / 8 slots, and its
    # one-step twin and recurrent peer trained the same way.
    "belief_unrolled": (_bptt(1), None),  # every step of batch_size decisions per optimizer step, walked in order
    "belief_bptt": (_bptt(8), None),
    "belief_bptt_one_step": (_chain(_bptt(8), _one_step), None),
    "gru_bptt": (_chain(_bptt(8), _one_step), GRUControl),
    # The regime model's number of states, for seed_loss_hmm (compared with --validation):
    **{f"seed_loss_hmm{n}": (_hmm_labels(n), None) for n in HMM_STATE_COUNTS},
}
DEFAULT_RECIPES = (
    "default",
    "seed_loss",
    "one_step",
    "mlp",
    "mlp_window16",
    "gru",
    "seed_loss_hmm",
    "regime_labels",
    "regime_labels_one_step",
)
THINKING_PAIRS = (
    ("Thinking pays?", "default", "one_step"),
    ("Thinking pays with a belief?", "belief_priced", "belief_one_step"),
    ("Thinking pays with a belief (old halting)?", "belief_profitable", "belief_one_step"),
    ("Thinking pays without a belief?", "fresh_priced", "fresh_one_step"),
    ("Thinking pays with halting that regresses the gain?", "fresh_gain", "fresh_one_step"),
    ("Thinking pays with a belief and halting that regresses the gain?", "belief_gain", "belief_one_step"),
    ("Thinking pays with clean labels?", "regime_labels", "regime_labels_one_step"),
    ("Thinking pays when every step sees fresh decisions?", "unrolled", "one_step"),
    ("Thinking pays with a belief, every step seeing fresh decisions?", "belief_unrolled", "belief_one_step"),
)
"""(question, recipe, the same recipe at one reasoning step): the paired lines under the table."""


def fresh_market_replays(
    config: ExperimentConfig, n_markets: int, first_seed: int = FRESH_MARKET_SEED
) -> list[Any]:
    """Replays of synthetic markets with other seeds, same regimes and env options as training."""
    replays = []
    for k in range(n_markets):
        synthetic = dataclasses.replace(config.env.synthetic, seed=first_seed + k)
        # Scoring reads PnL only, so these markets keep hindsight labels: a regime model's labels would cost
        # a fit per market and change no figure of the benchmark.
        env = dataclasses.replace(config.env, synthetic=synthetic, label_source="hindsight")
        replays.append(build_replay(env))
    return replays


def _capture(metrics: dict[str, Any]) -> float:
    return metrics["model"]["pnl"] / metrics["baselines"]["regime_oracle"]["pnl"]


def run_one(
    recipe: str, config: ExperimentConfig, seed: int, n_markets: int, workdir: Path, validation: bool = False
) -> dict[str, Any]:
    """Train one recipe with one seed, score it on the held-out split and the fresh markets.

    With ``validation`` it scores only the validation markets (seeds ``VALIDATION_MARKET_SEED + k``), the
    data recipes are chosen on: neither the held-out split nor the benchmark's fresh markets.
    """
    edit, model_factory = RECIPES[recipe]
    config = edit(config)
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, seed=seed, progress=False, eval_every=0)
    )
    started = time.perf_counter()
    trainer = Trainer(config, workdir / f"{recipe}-{seed}")
    if model_factory is not None:
        trainer = Trainer(config, workdir / f"{recipe}-{seed}", model=model_factory(trainer.model_config))
    trainer.fit()
    train_s = time.perf_counter() - started
    model = trainer.ema if trainer.ema is not None else trainer.model
    max_steps = trainer.model.config.max_steps
    first_seed = VALIDATION_MARKET_SEED if validation else FRESH_MARKET_SEED
    scored = [] if validation else [("held-out", trainer.last_report.metrics)]
    for k, replay in enumerate(fresh_market_replays(config, n_markets, first_seed)):
        # The whole per-depth curve: the tables compare it with the adaptive PnL of the same decisions.
        report = evaluate(
            model, replay, max_steps=max_steps, device=trainer.device, seed=seed, split="all", depth_sample=None
        )
        scored.append((f"market {first_seed + k}", report.metrics))
    rows = []
    for name, metrics in scored:
        model_metrics, baselines = metrics["model"], metrics["baselines"]
        rows.append(
            {
                "market": name,
                "capture": _capture(metrics),
                "pnl": model_metrics["pnl"],
                "fixed_max_pnl": model_metrics["fixed_max_steps"]["pnl"],
                "pnl_by_fixed_steps": model_metrics["pnl_by_fixed_steps"],
                "best_fixed_pnl": baselines["best_fixed"]["pnl"],
                "random_pnl": baselines["random"]["pnl"],
                "regime_oracle_pnl": baselines["regime_oracle"]["pnl"],
                "filter_bound_pnl": baselines.get("filter_bound", {}).get("pnl"),
                "mean_steps": model_metrics["mean_steps"],
                "steps_histogram": model_metrics["steps_histogram"],
                "steps_by_regime_age": model_metrics.get("steps_by_regime_age"),
                "by_regime": model_metrics.get("by_regime"),
            }
        )
    return {
        "recipe": recipe, "seed": seed, "max_steps": max_steps, "train_s": train_s, "compiled": trainer.compiled,
        "steps": trainer.step, "features": config.env.features, "cost": config.env.cost,
        "label_costs": config.env.label_costs, "markets": rows,
    }  # fmt: skip


def _mean_se(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else float("nan")
    return float(array.mean()), se


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def _per_seed(runs: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]) -> list[float]:
    """``value`` of each market row, averaged over the markets of each run (one run per seed)."""
    return [float(np.mean([value(m) for m in run["markets"]])) for run in runs]


def _by_regime(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per true regime, means over the market rows: the PnL below the regime oracle, and how often the model
    plays the oracle's strategy (empty when the rows carry no per-regime figures)."""
    if not all(m.get("by_regime") for m in rows):
        return {}
    names = dict.fromkeys(name for m in rows for name in m["by_regime"])
    out = {}
    for name in names:
        cells = [m["by_regime"][name] for m in rows if name in m["by_regime"]]
        out[name] = {
            # the regime oracle is fit on each market's train split, so markets may disagree: name the usual one
            "oracle_strategy": Counter(c["regime_oracle_strategy"] for c in cells).most_common(1)[0][0],
            "pnl_gap": float(np.mean([c["regime_oracle_pnl"] - c["pnl"] for c in cells])),
            "picks_oracle_strategy": float(np.mean([c["picks_oracle_strategy"] for c in cells])),
        }
    return out


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per recipe: capture mean ± standard error over seeds (each seed averaged over its markets), and more."""
    out = []
    for recipe in dict.fromkeys(run["recipe"] for run in runs):
        mine = [run for run in runs if run["recipe"] == recipe]
        per_seed = _per_seed(mine, lambda m: m["capture"])
        rows = [m for run in mine for m in run["markets"]]
        by_age = [m["steps_by_regime_age"] for m in rows if m["steps_by_regime_age"]]
        histogram = np.sum([m["steps_histogram"] for m in rows], axis=0)
        mean, se = _mean_se(per_seed)
        # Capture when every decision runs exactly k steps, k = 1..max_steps: does each extra step pay?
        by_steps = []
        if all("pnl_by_fixed_steps" in m for m in rows):
            by_steps = [
                _mean_se(_per_seed(mine, lambda m, k=k: m["pnl_by_fixed_steps"][k] / m["regime_oracle_pnl"]))
                for k in range(mine[0]["max_steps"])
            ]
        out.append(
            {
                "recipe": recipe,
                "capture_mean": mean,
                "capture_se": se,
                "capture_worst_seed": min(per_seed),
                "capture_per_seed": per_seed,
                "pnl": float(np.mean([m["pnl"] for m in rows])),
                "fixed_max_pnl": float(np.mean([m["fixed_max_pnl"] for m in rows])),
                "best_fixed_pnl": float(np.mean([m["best_fixed_pnl"] for m in rows])),
                "random_pnl": float(np.mean([m["random_pnl"] for m in rows])),
                "regime_oracle_pnl": float(np.mean([m["regime_oracle_pnl"] for m in rows])),
                "filter_bound_pnl": _mean_or_none([m.get("filter_bound_pnl") for m in rows]),
                "beats_best_fixed": f"{sum(m['pnl'] > m['best_fixed_pnl'] for m in rows)}/{len(rows)}",
                "mean_steps": float(np.mean([m["mean_steps"] for m in rows])),
                "max_steps": mine[0]["max_steps"],
                "steps_histogram": (histogram / histogram.sum()).round(3).tolist(),
                "capture_by_fixed_steps": [mean_k for mean_k, _ in by_steps],
                "capture_by_fixed_steps_se": [se_k for _, se_k in by_steps],
                # Mean steps within 16 bars after a true regime change, once a regime has held 48 bars, and
                # the mean of the per-market ratios (None without true regimes).
                **{
                    key: float(np.mean([age[field] for age in by_age])) if by_age else None
                    for key, field in (
                        ("steps_after_change", "recent_change"),
                        ("steps_settled", "settled"),
                        ("recent_vs_settled_steps", "ratio"),
                    )
                },
                "by_regime": _by_regime(rows),
                "train_s": float(np.mean([run["train_s"] for run in mine])),
            }
        )
    return out


def paired_gain(runs: list[dict[str, Any]], recipe: str, baseline: str) -> tuple[float, float, int] | None:
    """Mean PnL per market of ``recipe`` minus ``baseline``, paired by seed: (mean, standard error, seeds)."""
    pnl = {(run["recipe"], run["seed"]): float(np.mean([m["pnl"] for m in run["markets"]])) for run in runs}
    seeds = sorted(
        {seed for name, seed in pnl if name == recipe} & {seed for name, seed in pnl if name == baseline}
    )
    if len(seeds) < 2:
        return None
    mean, se = _mean_se([pnl[recipe, seed] - pnl[baseline, seed] for seed in seeds])
    return mean, se, len(seeds)


def _share(mean: float, se: float) -> str:
    """A capture as "53% ± 1%", or "53% (one seed)" where one seed gives no standard error."""
    return f"{mean:.0%} (one seed)" if math.isnan(se) else f"{mean:.0%} ± {se:.0%}"


def markdown(summary: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """The benchmark's table (and the paired "thinking pays" line when both recipes ran)."""
    n_seeds = len({run["seed"] for run in runs})
    markets = ", ".join(m["market"] for m in runs[0]["markets"])
    header = (
        "| recipe | capture (mean ± se) | worst seed | PnL / market | of filter bound | fixed-max PnL | best fixed "
        "| random | beats best fixed | mean steps | steps histogram | steps after change / settled | train s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|---:|---:|"
    )
    bounds = [row["filter_bound_pnl"] for row in summary if row.get("filter_bound_pnl") is not None]
    cost = runs[0].get("cost", DEFAULT_COST)  # learn.json files before --cost ran at the default
    lines = [
        f"{n_seeds} seeds x ({markets}); PnL columns are means per market; the regime oracle earns "
        f"{summary[0]['regime_oracle_pnl']:+.2f} per market"
        + (f", the filter bound {bounds[0]:+.2f}." if bounds else ".")
        + (" Features: each bar's own shape only (`--features bar`)." if runs[0].get("features") == "bar" else "")
        + (f" Costs: {cost * 1e4:g} bp (`--cost {cost:g}`)." if cost != DEFAULT_COST else "")
        + single_label_costs_note(runs),
        "",
        header,
    ]
    for row in summary:
        ratio = row["recent_vs_settled_steps"]
        by_age = (
            "n/a"
            if ratio is None
            else f"{row['steps_after_change']:.2f} / {row['steps_settled']:.2f} ({ratio:.2f}x)"
        )
        bound = row.get("filter_bound_pnl")
        of_filter = "n/a" if not bound or bound <= 0 else f"{row['pnl'] / bound:.0%}"
        lines.append(
            f"| {row['recipe']} | {_share(row['capture_mean'], row['capture_se'])} | "
            f"{row['capture_worst_seed']:.0%} | {row['pnl']:+.2f} | {of_filter} | {row['fixed_max_pnl']:+.2f} | "
            f"{row['best_fixed_pnl']:+.2f} | {row['random_pnl']:+.2f} | {row['beats_best_fixed']} | "
            f"{row['mean_steps']:.2f} / {row['max_steps']} | {row['steps_histogram']} | "
            f"{by_age} | {row['train_s']:.0f} |"
        )
    deep = [row for row in summary if len(row.get("capture_by_fixed_steps", [])) > 1]
    if deep:
        width = max(len(row["capture_by_fixed_steps"]) for row in deep)
        lines += [
            "",
            "Capture when every decision runs exactly k reasoning steps (the same trained model, mean ± se over seeds):",
            "",
            "| recipe | " + " | ".join(f"k = {k}" for k in range(1, width + 1)) + " |",
            "|---|" + "---:|" * width,
        ]
        for row in deep:
            cells = [
                _share(mean, se)
                for mean, se in zip(
                    row["capture_by_fixed_steps"], row["capture_by_fixed_steps_se"], strict=True
                )
            ]
            lines.append(f"| {row['recipe']} | " + " | ".join(cells + [""] * (width - len(cells))) + " |")
    regimes = [row for row in summary if row.get("by_regime")]
    if regimes:
        names = list(regimes[0]["by_regime"])
        lines += [
            "",
            "Where PnL is lost, per true regime: the regime oracle's PnL minus the model's (mean per market), and "
            "the share of decisions on the oracle's strategy:",
            "",
            "| recipe | "
            + " | ".join(f"{n} ({regimes[0]['by_regime'][n]['oracle_strategy']})" for n in names)
            + " |",
            "|---|" + "---:|" * len(names),
        ]
        for row in regimes:
            cells = [row["by_regime"].get(n) for n in names]
            lines.append(
                f"| {row['recipe']} | "
                + " | ".join(
                    "" if c is None else f"{c['pnl_gap']:+.2f} ({c['picks_oracle_strategy']:.0%})"
                    for c in cells
                )
                + " |"
            )
    gains = [(q, r, b, paired_gain(runs, r, b)) for q, r, b in THINKING_PAIRS]
    gains = [(q, r, b, gain) for q, r, b, gain in gains if gain is not None]
    if gains:
        lines.append("")
    for question, recipe, baseline, (mean, se, n) in gains:
        lines.append(
            f"{question} {recipe} - {baseline}: {mean:+.2f} ± {se:.2f} PnL per market "
            f"({mean / se:.1f} standard errors, paired by seed, {n} seeds)."
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("learn", __doc__)
    parser.add_argument(
        "--recipes",
        default=",".join(DEFAULT_RECIPES),
        help=f"comma-separated, from {list(RECIPES)} (default: {','.join(DEFAULT_RECIPES)})",
    )
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per recipe (0, 1, ...)")
    parser.add_argument("--markets", type=int, default=3, help="fresh synthetic markets to score on")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the CLI default)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, in separate processes")
    parser.add_argument(
        "--compile", choices=("auto", "on", "off"), default="auto",
        help="torch.compile the training step, as train.compile (auto: as the CLI does; the learn.json files "
        "committed before issue 24 were trained eagerly, learn-compiled compares both)",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/bench-learn", help="directory for learn.json and learn.md")
    parser.add_argument(
        "--validation",
        action="store_true",
        help=f"score on the validation markets (synthetic seeds {VALIDATION_MARKET_SEED}, ...) only, where "
        "recipes are chosen; the default scores the held-out split and the fresh markets",
    )
    parser.add_argument(
        "--market",
        choices=("default", "slow"),
        default="default",
        help="market family: the default synthetic market, or the slow preset (regimes a 32-bar window cannot "
        "tell apart); held-out, fresh and validation markets all come from it",
    )
    parser.add_argument(
        "--bars",
        type=int,
        default=None,
        help="bars per market (default: 40,000 for the default market, "
        f"{SLOW_MARKET_BARS:,} for the slow one, whose 40,000 bars hold too few regime spells to learn memory from)",
    )
    parser.add_argument(
        "--features",
        choices=tuple(FEATURE_SETS),
        default="all",
        help="env.features of every recipe: all (the default features, some of them EWMs of many earlier bars) "
        "or bar (each bar's own shape only, so that integrating evidence is left to the model)",
    )
    parser.add_argument(
        "--cost",
        type=float,
        default=DEFAULT_COST,
        help=f"env.cost of every recipe and market (default {DEFAULT_COST:g}, 5 bp): a market where costs weigh more",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1 seed, 1 market, 30 steps (or --steps)"
    )
    parser.add_argument(
        "--from-json", default=None, help="print the tables of a saved learn.json again, without training"
    )
    args = parser.parse_args(argv)
    args.recipes = [name.strip() for name in args.recipes.split(",") if name.strip()]
    unknown = [name for name in args.recipes if name not in RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    if args.seeds < 1 or args.markets < 0 or args.threads < 1 or args.jobs < 1:
        parser.error("--seeds, --threads and --jobs must be >= 1 and --markets >= 0")
    if not 0.0 <= args.cost < 1.0:
        parser.error(f"--cost {args.cost}: expected a fraction of capital in [0, 1), e.g. 0.002 for 20 bp")
    if args.bars is not None and args.bars < 2_000:
        parser.error(f"--bars {args.bars}: a market needs at least 2,000 bars to split into train and test")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps {args.steps}: expected a positive number of optimizer steps")
    if args.quick:
        args.seeds, args.markets = 1, 1
        args.steps = 30 if args.steps is None else args.steps
    if args.from_json is not None:
        args.saved = saved_results(
            args.from_json, parser, "the learn.json that python -m trm_act.bench learn writes in its --out directory"
        )
    return args


def base_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config every recipe edits: the CLI default on the chosen market family, length, features, budget and
    compile."""
    config = ExperimentConfig()
    bars = args.bars or (SLOW_MARKET_BARS if args.market == "slow" else config.env.synthetic.n_bars)
    synthetic = dataclasses.replace(config.env.synthetic, preset=args.market, regimes=None, n_bars=bars)
    train = dataclasses.replace(config.train, compile=args.compile)
    if args.steps is not None:
        train = dataclasses.replace(train, steps=args.steps)
    env = dataclasses.replace(config.env, synthetic=synthetic, features=args.features, cost=args.cost)
    return dataclasses.replace(config, env=env, train=train)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        runs = args.saved["runs"]
        print(markdown(summarize(runs), runs))
        return 0
    torch.set_num_threads(args.threads)
    config = base_config(args)
    jobs = [(recipe, seed) for recipe in args.recipes for seed in range(args.seeds)]
    with tempfile.TemporaryDirectory(prefix="trm-bench-learn-") as workdir:
        # Every run is deterministic on its own (one thread, its own seed), so running several at once
        # changes the wall time, not the figures.
        with concurrent.futures.ProcessPoolExecutor(
            args.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=torch.set_num_threads,
            initargs=(args.threads,),
        ) as pool:
            futures = [
                pool.submit(run_one, recipe, config, seed, args.markets, Path(workdir), args.validation)
                for recipe, seed in jobs
            ]
            for future in concurrent.futures.as_completed(futures):
                run = future.result()
                captures = ", ".join(f"{m['capture']:.0%}" for m in run["markets"])
                print(
                    f"{run['recipe']} seed {run['seed']}: capture {captures} ({run['train_s']:.0f} s)",
                    file=sys.stderr,
                )
    runs = [future.result() for future in futures]  # in recipe, seed order
    summary = summarize(runs)
    table = markdown(summary, runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learn.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))
    (out / "learn.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
