"""Experiment configuration: one typed dataclass per component, composed into ``ExperimentConfig``.

Each field carries its default and a docstring (the string literal under it); ``field_docs`` reads
those docstrings from the source so the CLI's ``--help`` documents every field without a second copy.
Precedence when building a config: dataclass defaults < config file (TOML or JSON) < CLI flags.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trm_act.envs import SyntheticMarketConfig, TradeReplayConfig
from trm_act.model import TRMConfig

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class LossConfig:
    """TRMLoss hyperparameters (see ``trm_act.loss.TRMLoss``)."""

    lambda_halt: float = 0.5
    """Weight of the halt loss (BCE toward 'confident and correct'; TRMLoss's own default is 0.01)."""
    lambda_profit: float = 0.1
    """Weight of the profit-weighted task loss, CE x (1 - tanh(pnl / pnl_scale)) (TRMLoss default 1.0)."""
    lambda_reward: float = 10.0
    """Weight of the expected-PnL term over all 8 strategies (0 = the seed's loss; see README for the comparison)."""
    confidence_threshold: float = 0.7
    """Halt target is 1 when max softmax probability exceeds this and the answer is correct."""
    pnl_scale: float = 0.05
    """PnL (fraction of capital) that sets the profit-weight and reward scale."""
    class_weights: bool = False
    """Weight the cross-entropy by inverse label frequency on the train split."""

    def __post_init__(self) -> None:
        for name in ("lambda_halt", "lambda_profit", "lambda_reward"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"loss.{name} must be >= 0; got {value!r}.")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(
                f"loss.confidence_threshold must lie in [0, 1]; got {self.confidence_threshold!r}."
            )
        if not self.pnl_scale > 0:
            raise ValueError(
                f"loss.pnl_scale must be > 0 (e.g. 0.05 = 5% of capital); got {self.pnl_scale!r}."
            )


@dataclass
class TrainConfig:
    """Optimisation, evaluation and logging of one training run."""

    steps: int = 1500
    """Optimizer steps; each runs one reasoning step on every slot."""
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
    ema_decay: float = 0.0
    """Decay of EMA weights used for evaluation (0 = off; TRM uses 0.999 on long runs)."""
    bf16: bool = False
    """Run the model under bfloat16 autocast."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'."""
    seed: int = 0
    """Seed for weights, environment starts and halting exploration."""
    train_stride: int = 1
    """Bars between training decision points (evaluation always uses env.stride, a true backtest)."""
    eval_every: int = 0
    """Evaluate on the held-out split every N steps (0 = only at the end)."""
    checkpoint_every: int = 250
    """Write a checkpoint every N steps (and always at the end or on Ctrl-C)."""
    log_every: int = 25
    """Write histograms and refresh aggregated statistics every N steps."""
    eval_batch_size: int = 2048
    """Rows per forward pass at evaluation."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "train_stride", "checkpoint_every", "log_every", "eval_batch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name} must be a positive int; got {value!r}.")
        for name in ("warmup_steps", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"train.{name} must be an int >= 0; got {value!r}.")
        if not self.halt_lr_scale > 0:
            raise ValueError(f"train.halt_lr_scale must be > 0; got {self.halt_lr_scale!r}.")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0; got {self.lr!r}.")
        if not (self.weight_decay >= 0 and self.grad_clip >= 0):
            raise ValueError("train.weight_decay and train.grad_clip must be >= 0.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1) (0 = off); got {self.ema_decay!r}.")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}.")


def _default_env() -> TradeReplayConfig:
    # 64-decision episodes at random starts let the slots cover the whole train split; a 16-bar window
    # (features already carry longer rolling statistics) halves the tokens per reasoning step.
    return TradeReplayConfig(window=16, episode_length=64)


def _default_model() -> TRMConfig:
    # Sized so the default run finishes in about 70 s on 2 CPU cores (measured; see README).
    return TRMConfig(window=16, d_model=32, mixer="attention", n_heads=4, n_latent=1, max_steps=4)


@dataclass
class ExperimentConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory and inside checkpoints."""

    env: TradeReplayConfig = field(default_factory=_default_env)
    model: TRMConfig = field(default_factory=_default_model)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {name: _section_to_dict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ExperimentConfig:
        # A run's config.json also lists its resume changes under "history": a record, not a setting.
        data = {key: value for key, value in data.items() if key != "history"}
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ValueError(
                f"{source}: unknown section(s) {sorted(unknown)}; valid sections: {list(SECTIONS)}."
            )
        data = merge(cls().to_dict(), data)  # unspecified keys keep the experiment defaults
        return cls(
            **{
                name: _section_from_dict(SECTIONS[name], data[name], f"{source}: [{name}]")
                for name in SECTIONS
            }
        )


SECTIONS: dict[str, type] = {
    "env": TradeReplayConfig,
    "model": TRMConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}
NESTED: dict[str, type] = {"synthetic": SyntheticMarketConfig}


def _section_to_dict(section: Any) -> dict[str, Any]:
    return {f.name: _jsonable(getattr(section, f.name)) for f in dataclasses.fields(section)}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _section_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return f"<{type(value).__name__}>"  # e.g. an in-memory DataFrame: not reproducible from the file


def _section_from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    """Build dataclass ``cls`` from plain data, recursing into nested dataclasses and tuples of them."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a table of keys, got {data!r}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}.")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _from_plain(hints[name], value, f"{source}.{name}") for name, value in data.items()})


def _from_plain(hint: Any, value: Any, source: str) -> Any:
    hint, _ = unwrap_optional(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _section_from_dict(hint, value, source)
    if (hint is tuple or typing.get_origin(hint) is tuple) and isinstance(value, list):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_from_plain(item, element, source) for element in value)  # JSON/TOML have no tuples
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON (``.json``) config into nested ``{section: {key: value}}``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: file not found: {path}")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        if path.suffix == ".json":
            return json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--config: cannot parse {path}: {exc}") from None
    raise ValueError(f"--config: {path} must end in .toml or .json; got suffix {path.suffix!r}.")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values in ``override`` win."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal placed under each field of a dataclass."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. frozen app): help falls back to the name
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return (args[0] if len(args) == 1 else str), optional
    return hint, False
