"""Stable-Baselines3 adapter: trading statistics of the agent's decisions in SB3's own TensorBoard run.

Example::

    import gymnasium
    import trm_act  # registers trm_act/TradeReplay-v0
    from stable_baselines3 import PPO
    from trm_act.callbacks.sb3 import TRMSB3Callback

    model = PPO("MlpPolicy", gymnasium.make("trm_act/TradeReplay-v0"), tensorboard_log="runs/sb3")
    model.learn(total_timesteps=10_000, callback=TRMSB3Callback())

Needs stable-baselines3: ``pip install "trm-act[sb3]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._frameworks import missing_framework

try:
    from gymnasium import spaces
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecEnv
except ImportError as exc:  # pragma: no cover - exercised by tests with the import blocked
    raise missing_framework("sb3", "Stable-Baselines3") from exc

import numpy as np

__all__ = ["TAGS", "TRMSB3Callback"]

# Tags this callback records (usage: one per strategy name).
TAGS = ("trm/pnl", "trm/cumulative_pnl", "trm/accuracy", "trm/strategy_usage/<name>")


def _base_vec_env(env: VecEnv) -> VecEnv:
    """The innermost VecEnv (wrappers such as VecNormalize keep an empty ``reset_infos`` of their own)."""
    while hasattr(env, "venv"):
        env = env.venv
    return env


def _label(info: Any) -> int | None:
    if isinstance(info, dict) and info.get("label") is not None:
        return int(info["label"])
    return None


class TRMSB3Callback(BaseCallback):
    """Record what the agent's decisions earned into SB3's logger (and so its TensorBoard run).

    A decision is one env step: the action chooses a strategy for the decision point described by the
    previous ``info`` (from reset or from the previous step). Recorded at the end of each rollout and
    written by SB3 when it dumps its logs (at step ``num_timesteps``, SB3's own x-axis):

    - ``trm/pnl``: mean realized PnL per decision (the env reward, fraction of capital) over the
      decisions since SB3's last dump;
    - ``trm/cumulative_pnl``: sum of realized PnL over every decision this callback has seen;
    - ``trm/accuracy``: fraction of those decisions whose action equals ``info["label"]`` of the
      decision point (the hindsight-best strategy); decisions without a known label are left out;
    - ``trm/strategy_usage/<name>``: fraction of those decisions that chose each strategy
      (names from ``trm_act.envs.STRATEGIES``; hidden from SB3's stdout table).

    Labels of decision points that follow a reset come from the VecEnv's ``reset_infos``. When a later
    ``learn(reset_num_timesteps=False)`` continues without a reset, this callback keeps its labels
    (a new callback does not know them and leaves those first decisions out of the accuracy).

    Args:
        strategy_names: one name per action; default ``trm_act.envs.STRATEGIES`` when the action
            space has that many actions, else ``strategy_<i>``.
        verbose: SB3's verbosity.
    """

    def __init__(self, strategy_names: Sequence[str] | None = None, verbose: int = 0):
        super().__init__(verbose)
        self.strategy_names = None if strategy_names is None else tuple(strategy_names)
        self.cumulative_pnl = 0.0
        self._pending: list[int | None] = []  # label of each sub-env's current decision point
        self._usage: np.ndarray | None = None  # decisions per action in the current window
        self._reset_window()

    def _reset_window(self) -> None:
        self._decisions = 0
        self._pnl = 0.0
        self._labelled = 0
        self._correct = 0
        if self._usage is not None:
            self._usage[:] = 0

    def _on_training_start(self) -> None:
        space = self.training_env.action_space
        if not isinstance(space, spaces.Discrete):
            raise ValueError(
                f"TRMSB3Callback needs a Discrete action space (one action per strategy); got {space}. "
                "Use it with trm_act/TradeReplay-v0."
            )
        n_actions = int(space.n)
        if self.strategy_names is None:
            from trm_act.envs import STRATEGIES

            names = (
                STRATEGIES
                if len(STRATEGIES) == n_actions
                else tuple(f"strategy_{i}" for i in range(n_actions))
            )
            self.strategy_names = tuple(names)
        elif len(self.strategy_names) != n_actions:
            raise ValueError(
                f"strategy_names has {len(self.strategy_names)} names but the action space has {n_actions} actions; "
                "pass one name per action."
            )
        self._usage = np.zeros(n_actions, dtype=np.int64)
        n_envs = self.training_env.num_envs
        if self.model.num_timesteps == 0:
            # learn() has just reset the env: the first decision points are described by the reset infos.
            reset_infos = getattr(_base_vec_env(self.training_env), "reset_infos", None) or []
            self._pending = [_label(info) for info in reset_infos][:n_envs]
        elif len(self._pending) != n_envs:
            self._pending = []  # learn(reset_num_timesteps=False) went on without a reset: labels unknown
        self._pending += [None] * (n_envs - len(self._pending))

    def _on_rollout_start(self) -> None:
        # Stats cover the decisions since SB3's last dump (which clears the logger's values).
        if "trm/pnl" not in self.logger.name_to_value:
            self._reset_window()

    def _on_step(self) -> bool:
        actions = np.asarray(self.locals["actions"]).reshape(-1)
        rewards = np.asarray(self.locals["rewards"], dtype=np.float64).reshape(-1)
        dones = np.asarray(self.locals["dones"]).reshape(-1)
        infos = self.locals["infos"]
        reset_infos = None
        for i, action in enumerate(actions):
            action = int(action)
            self._decisions += 1
            self._pnl += rewards[i]
            self._usage[action] += 1
            label = self._pending[i]
            if label is not None:
                self._labelled += 1
                self._correct += int(action == label)
            if dones[i]:  # auto-reset: the next decision point is the reset observation's
                if reset_infos is None:
                    reset_infos = getattr(_base_vec_env(self.training_env), "reset_infos", None) or []
                self._pending[i] = _label(reset_infos[i]) if i < len(reset_infos) else None
            else:
                self._pending[i] = _label(infos[i])
        self.cumulative_pnl += float(rewards.sum())
        return True

    def _on_rollout_end(self) -> None:
        if self._decisions == 0:
            return
        self.logger.record("trm/pnl", self._pnl / self._decisions)
        self.logger.record("trm/cumulative_pnl", self.cumulative_pnl)
        if self._labelled:
            self.logger.record("trm/accuracy", self._correct / self._labelled)
        for name, count in zip(self.strategy_names, self._usage, strict=True):
            self.logger.record(f"trm/strategy_usage/{name}", count / self._decisions, exclude="stdout")
