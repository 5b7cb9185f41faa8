"""Experiment configuration: one typed dataclass per component, composed into ``ExperimentConfig``.

Each field carries its default and a docstring; tyro reads both for ``python -m trm_act.train --help``.
Precedence when building a config: dataclass defaults < config file (TOML or JSON) < CLI flags.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from trm_act.envs import STRATEGIES, TradeReplayConfig
from trm_act.envs.config import ABSENT_FIELDS as ABSENT_ENV_FIELDS
from trm_act.envs.config import data_exists
from trm_act.envs.features import FEATURE_SETS
from trm_act.evaluation import EVAL_BATCH_SIZE
from trm_act.loss import LossConfig, recipe_loss
from trm_act.model import ABSENT_FIELDS as ABSENT_MODEL_FIELDS
from trm_act.model import TRMConfig

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


MIN_BATCH_SIZE = 4
"""Smallest train.batch_size accepted: batch 1 ran to the end and collapsed to PnL 0.000, accuracy 0.007."""
WARN_BATCH_SIZE = 8
"""Below this (the number of strategies) a step cannot see every label once; the trainer warns."""
EVALS_PER_RUN = 4
"""Evaluations a run makes when ``train.eval_every`` is None (the last one at the final step)."""


@dataclass
class TrainConfig:
    """Optimisation, evaluation and logging of one training run."""

    steps: int = 1500
    """Optimizer steps; each runs one reasoning step on every slot (every reasoning step with --unroll)."""
    batch_size: int = 128
    """Slots (= sub-environments) reasoning in parallel."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    halt_lr_scale: float = 10.0
    """Learning-rate multiplier of the halt head: Adam moves a parameter ~lr per step, so the -5 halt bias
    (TRM's init) would need ~5k steps at lr to reach 0; short runs need the head to learn faster."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up steps, then cosine decay to 10% of lr."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 = off)."""
    ema_decay: float = 0.99
    """Decay of the EMA weights that evaluation uses (0 = off; TRM uses 0.999 on long runs; 0.99 averages about
    the last 100 steps, which smooths the noisy PnL gradients of a short run)."""
    bf16: bool = False
    """Run the model under bfloat16 autocast."""
    device: Annotated[str, tyro.conf.arg(metavar="{auto,cpu,cuda,cuda:N}")] = "auto"
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'."""
    seed: int = 0
    """Seed for weights, environment starts and halting exploration."""
    train_stride: int | None = None
    """Bars between training decision points; None = 1 with a fresh carry, env.stride with a belief (a belief
    learns the cadence it is updated at, so it trains at the one evaluation walks). Above 1, each slot walks its
    episode's decisions that many bars apart from a random phase of the 1-bar grid, and env.episode_length counts
    those decisions. Evaluation always uses env.stride, a true backtest."""
    eval_burn_in: int = 64
    """Belief mode: decisions each chunk of the time-ordered evaluation walk replays, unscored, before the
    decisions it scores (chunks run in parallel; the burn-in lets each chunk's belief forget its start)."""
    eval_every: int | None = None
    """Evaluate on the held-out split every N steps (0 = only at the end; None = steps // 4, so a run draws
    4 points per eval chart; an evaluation of the 999 test decisions takes well under a second)."""
    eval_sample: int | None = 1024
    """Held-out decisions each periodic evaluation scores: a fixed, seeded sample (train.seed), the same decisions
    every time and in a resumed run; 0 or None = all. The final evaluation (metrics.json) scores all of them.
    With a belief the sample is contiguous runs of each instrument's decisions, each walked after its burn-in.
    1024 is about the default market's whole test split (999 decisions, all scored), so a periodic evaluation of
    big data is as informative as the default run's and costs as little: a 2,000,000-row CSV at horizon 16 has
    25,000 test decisions, ~30 s per evaluation of them all on one thread."""
    checkpoint_every: int = 250
    """Write a checkpoint every N steps (and always at the end or on Ctrl-C)."""
    log_every: int = 25
    """Write histograms and refresh aggregated statistics every N steps."""
    eval_batch_size: int = EVAL_BATCH_SIZE
    """Rows per forward pass at evaluation (raise it on a GPU; 512 keeps a large CSV's peak memory down)."""
    progress: bool = True
    """Show a progress bar."""
    threads: int | None = None
    """torch intra-op threads per process; None = 1 (measured: on 2 shared cores torch's one thread per core
    thrashes; on 2 idle cores 2 threads ran the compiled default step 1.71x as fast, but a second thread changes
    float sums, so a run's figures would depend on it). Under torchrun at most cores / local processes."""
    unroll: bool = False
    """Each optimizer step takes a fresh batch of decisions through all max_steps reasoning steps, every step
    supervised (the adapters' loop, trm_act.supervision.deep_supervision), instead of one reasoning step per
    slot with a carry that continues into the next optimizer step. It sees batch_size decisions per optimizer
    step at any max_steps, as a one-step model does, for max_steps times the compute; the continual carry sees
    batch_size / (mean steps). With a belief, each slot walks its episode's decisions in order (see
    bptt_decisions). One process."""
    bptt_decisions: int = 1
    """With --unroll and --carry belief: consecutive decisions of each slot's episode per optimizer step, the
    belief handed from one to the next with its graph, so backpropagation reaches back that many decisions
    (truncated BPTT over the stream; the belief still carries on, detached, into the next optimizer step).
    1 = each decision's gradient stops at its own belief. Costs bptt_decisions times the compute per step:
    lower batch_size to keep the decisions per step."""
    depth_warmup: float = 0.0
    """Share of the optimizer steps, from the start, in which every decision halts after its first reasoning step:
    the model trains exactly as at max_steps 1, without forced extra steps, and its halt head learns as a one-step
    model's does (at the cap, where "gain" halting's target is to stop). The later steps train after it. A model that
    may think spends part of every batch on second and later steps, so its first step learns from fewer decisions
    than a one-step model's; a warm-up gives the first step a one-step model's start (docs/thinking.md, section 21).
    0 = off. The continual trainer only (--unroll runs every step of every decision)."""
    later_step_weight: float = 1.0
    """Weight of a decision's second and later reasoning steps in the gradient, against 1 for its first: every
    step shares one network, so what the later steps learn also moves the first step's answer. Below 1 the first
    step's loss leads. The losses logged are unweighted (docs/thinking.md, section 21). The continual trainer only."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the training step (inductor): "auto" = on for single-process runs long enough to repay it
    (trm_act.compiled.AUTO_MIN_STEPS = 1000 steps) where inductor finds a C++ compiler (CPU) or runs on CUDA; the first
    run on a machine spends ~30 s compiling, later runs load the cached kernels in ~3 s (README, speed)."""

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "train_stride",
            "checkpoint_every",
            "log_every",
            "eval_batch_size",
            "bptt_decisions",
        )
        for name in positive:
            value = getattr(self, name)
            if name == "train_stride" and value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name} must be a positive int; got {value!r}.")
        for name in ("warmup_steps", "eval_every", "eval_burn_in", "eval_sample"):
            value = getattr(self, name)
            if name in ("eval_every", "eval_sample") and value is None:
                continue
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"train.{name} must be an int >= 0; got {value!r}.")
        if self.batch_size < MIN_BATCH_SIZE:
            raise ValueError(
                f"--batch-size {self.batch_size} is too small to learn: each optimizer step averages TRMLoss "
                f"over that many slots, and a batch of 1 collapses (held-out PnL 0.000). Use --batch-size "
                f">= {MIN_BATCH_SIZE} (32 or more learns reliably; the default is 128)."
            )
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"train.compile must be 'auto', 'on' or 'off'; got {self.compile!r}.")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"train.threads must be a positive int or None (= 1); got {self.threads!r}.")
        if not self.halt_lr_scale > 0:
            raise ValueError(f"train.halt_lr_scale must be > 0; got {self.halt_lr_scale!r}.")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0; got {self.lr!r}.")
        if not (self.weight_decay >= 0 and self.grad_clip >= 0):
            raise ValueError("train.weight_decay and train.grad_clip must be >= 0.")
        if isinstance(self.depth_warmup, bool) or not (
            isinstance(self.depth_warmup, (int, float)) and 0.0 <= self.depth_warmup < 1.0
        ):
            raise ValueError(
                f"train.depth_warmup must be a share of the steps in [0, 1) (0 = off); got {self.depth_warmup!r}."
            )
        if isinstance(self.later_step_weight, bool) or not (
            isinstance(self.later_step_weight, (int, float)) and 0.0 <= self.later_step_weight <= 1.0
        ):
            raise ValueError(
                f"train.later_step_weight must lie in [0, 1] (1 = every step weighs the same); got "
                f"{self.later_step_weight!r}."
            )
        for name, off in (("depth_warmup", 0.0), ("later_step_weight", 1.0)):
            if self.unroll and getattr(self, name) != off:
                raise ValueError(
                    f"train.{name}={getattr(self, name)} shapes the continual trainer's reasoning steps, but --unroll "
                    f"supervises every step of every decision alike; drop one of them (or set {name} to {off})."
                )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1) (0 = off); got {self.ema_decay!r}.")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}.")

    @property
    def depth_warmup_steps(self) -> int:
        """Optimizer steps of the depth warm-up: ``depth_warmup`` of ``steps``, rounded to a whole step."""
        return round(self.depth_warmup * self.steps)

    @property
    def eval_interval(self) -> int:
        """Steps between held-out evaluations before the final one (0 = only the final one)."""
        return self.steps // EVALS_PER_RUN if self.eval_every is None else self.eval_every


# Fields that follow from other sections; never read from flags or files (see ExperimentConfig).
DERIVED_FIELDS = {"env": ("split",), "model": ("window", "n_features", "num_classes")}


@dataclass
class ExperimentConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory and inside checkpoints.

    Each section defaults to its config class's defaults, except the loss: ``LossConfig()`` is the seed's loss and
    the CLI trains ``recipe_loss()``. So ``TRMConfig()`` and ``TradeReplayConfig()`` are what a default run trains.

    The model's input shape and output width follow the data: ``model.window`` = ``env.window``,
    ``model.n_features`` = the env's feature count and ``model.num_classes`` = the 8 strategies, set
    here in ``__post_init__``. ``env.split`` is chosen by the trainer (train for training, test for
    evaluation).
    """

    env: TradeReplayConfig = field(default_factory=TradeReplayConfig)
    model: Annotated[TRMConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=TRMConfig)
    loss: Annotated[LossConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=recipe_loss)
    train: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.bptt_decisions > 1 and not (self.train.unroll and self.model.carry == "belief"):
            raise ValueError(
                f"train.bptt_decisions={self.train.bptt_decisions} backpropagates through a belief carried "
                "across decisions, which needs --unroll and --carry belief; add both, or set "
                "--bptt-decisions 1."
            )
        derived = {
            "window": self.env.window,
            "n_features": len(FEATURE_SETS[self.env.features]),
            "num_classes": len(STRATEGIES),
        }
        if any(getattr(self.model, name) != value for name, value in derived.items()):
            self.model = dataclasses.replace(self.model, **derived)

    @property
    def train_stride(self) -> int:
        """Bars between training decisions: ``train.train_stride``, or its default for the model's carry."""
        if self.train.train_stride is not None:
            return self.train.train_stride
        return self.env.effective_stride if self.model.carry == "belief" else 1

    def to_dict(self) -> dict[str, Any]:
        """Plain sections without the derived fields (they follow from the others)."""
        out = {}
        for name in SECTIONS:
            values = _jsonable(getattr(self, name))
            out[name] = {k: v for k, v in values.items() if k not in DERIVED_FIELDS.get(name, ())}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ExperimentConfig:
        """Sections given in ``data`` override the experiment defaults field by field."""
        # A run's config.json also lists its resume changes under "history" and the processes and threads
        # it ran with under "runtime": records, not settings.
        data = {key: value for key, value in data.items() if key not in ("history", "runtime")}
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ValueError(
                f"{source}: unknown section(s) {sorted(unknown)}; valid sections: {list(SECTIONS)}."
            )
        defaults = cls()
        sections = {}
        for name in SECTIONS:
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise ValueError(f"{source}: [{name}] must be a table of keys, got {values!r}.")
            fields = {f.name for f in dataclasses.fields(SECTIONS[name])} - set(DERIVED_FIELDS.get(name, ()))
            unknown = set(values) - fields
            if unknown:
                raise ValueError(
                    f"{source}: [{name}] unknown key(s) {sorted(unknown)}; valid keys: {sorted(fields)}."
                )
            try:
                sections[name] = dataclasses.replace(getattr(defaults, name), **values)
            except ValueError as exc:  # a value the section refuses: say which file said it
                raise ValueError(f"{source}: [{name}] {exc}") from None
        return cls(**sections)

    @classmethod
    def from_saved(cls, data: dict[str, Any], source: str = "config") -> ExperimentConfig:
        """The config a run saved (its checkpoint, ``config.json``, a walk-forward's plan), read through
        :func:`with_absent_fields`, so that a resumed run goes on with the labels it trained on."""
        return cls.from_dict(with_absent_fields(data), source)


def with_absolute_data(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with a relative ``env.data`` path (or glob) made absolute, so that the run's saved config finds
    its data when it is resumed from another directory; "synthetic" and in-memory data are kept as they are."""
    data = config.env.data
    if not isinstance(data, (str, Path)) or str(data) == "synthetic" or Path(data).is_absolute():
        return config
    return dataclasses.replace(config, env=dataclasses.replace(config.env, data=str(Path(data).absolute())))


def missing_data(saved: dict[str, Any]) -> str | None:
    """The ``env.data`` path of a saved config when no file, directory or glob match is there now, else None."""
    env = saved.get("env")
    data = env.get("data") if isinstance(env, dict) else None
    if not isinstance(data, str) or data == "synthetic":
        return None
    return None if data_exists(data) else data


def with_absent_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config's sections with each env or model field the saving version did not have set to the value
    that version used (``envs.config.ABSENT_FIELDS``, ``model.ABSENT_FIELDS``), not today's default."""
    out = dict(saved)
    for section, absent in (("env", ABSENT_ENV_FIELDS), ("model", ABSENT_MODEL_FIELDS)):
        values = saved.get(section)
        if isinstance(values, dict):
            out[section] = {**{k: v for k, v in absent.items() if k not in values}, **values}
    return out


SECTIONS: dict[str, type] = {
    "env": TradeReplayConfig,
    "model": TRMConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return f"<{type(value).__name__}>"  # e.g. an in-memory DataFrame: not reproducible from the file


def load_config_file(path: str | Path) -> ExperimentConfig:
    """Read a TOML (``.toml``) or JSON (``.json``) file with [env]/[model]/[loss]/[train] sections."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: file not found: {path}")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ValueError(f"--config: {path} must end in .toml or .json; got suffix {path.suffix!r}.")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--config: cannot parse {path}: {exc}") from None
    return ExperimentConfig.from_dict(data, source=f"--config {path}")
