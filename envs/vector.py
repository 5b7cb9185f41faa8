"""TradeReplayVectorEnv: N trade replays stepped together with numpy, no Python loop per sub-env.

Sub-env i behaves exactly like ``TradeReplayEnv`` reset with seed ``seed + i``. Episodes that end
are reset within the same ``step`` call (Gymnasium's SAME_STEP autoreset): the returned observation
and info are the new episode's first decision, and ``info["final_obs"]`` / ``info["final_info"]``
hold the last decision of the episode that ended.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .config import TradeReplayConfig, resolve_config
from .features import FEATURE_CLIP
from .render import episode_frame
from .replay import build_replay
from .strategies import N_STRATEGIES
from .trade_replay import check_render_mode, check_split

# Bit generators a saved state may name (Gymnasium seeds with PCG64).
_BIT_GENERATORS = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
    "MT19937": np.random.MT19937,
}


class TradeReplayVectorEnv(VectorEnv):
    """``num_envs`` TradeReplayEnv copies over one shared, precomputed replay, batched with numpy.

    Arguments are those of ``TradeReplayEnv`` (keyword options, or ``config=``) plus ``num_envs``. Observations are
    ``(num_envs, window, F)`` float32 (fresh each call), rewards ``(num_envs,)`` float64.

    ``info`` holds arrays over sub-envs: ``label`` (N,) int64, ``strategy_pnl`` (N, 8) float64,
    ``t`` (N,) int64, ``decision`` (N,) int64, on synthetic data ``regime`` (N,) int64, and on real data
    ``symbol`` (N,) object array of str (each sub-env's instrument; an episode stays within one), each with
    Gymnasium's ``_key`` mask (all True). When episodes end in a step, ``final_obs`` (object array,
    None where no episode ended), ``final_info`` (same keys, masked) and their masks are added.

    ``step_masked(actions, mask)`` advances only the sub-envs where mask is True; the others keep
    their decision point and return reward 0.0, no truncation, and their current observation/info.
    ``state_dict()`` / ``load_state_dict()`` save and restore the cursors and RNGs (exact resume).

    With ``render_mode="rgb_array"``, ``render()`` returns a tuple of one chart per sub-env, as
    ``TradeReplayEnv.render`` draws it (each sub-env's current episode; one that just ended shows
    its new, empty episode). Recording the episodes then adds a little work to every step.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": ["rgb_array"],
        "render_fps": 4,
    }

    def __init__(
        self,
        num_envs: int = 1,
        *,
        config: TradeReplayConfig | None = None,
        render_mode: str | None = None,
        **options: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r}: expected an int >= 1")
        self.config = resolve_config(config, options, "TradeReplayVectorEnv")
        self.render_mode = check_render_mode(render_mode, "TradeReplayVectorEnv")
        self.replay = build_replay(self.config)
        self._episodes = check_split(self.replay, self.config)

        self.num_envs = int(num_envs)
        replay = self.replay
        self.single_action_space = spaces.Discrete(N_STRATEGIES)
        self.single_observation_space = spaces.Box(
            -FEATURE_CLIP, FEATURE_CLIP, shape=(replay.window, replay.n_features), dtype=np.float32
        )
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

        self._pnl = replay.strategy_pnl  # (D, S)
        self._labels = replay.labels  # (D,)
        self._bars = replay.decision_bars  # (D,)
        self._regimes = replay.regimes  # (D,) or None
        self._label_pnl = None if replay.label_pnl is replay.strategy_pnl else replay.label_pnl  # (D, S)
        self._windows = replay.windows  # (D, W, F) or None
        # Real data names each sub-env's instrument in info["symbol"]; the synthetic market keeps its key set.
        # An object array of Python str: numeric-only consumers (checkpoints of info) skip it, as they skip final_obs.
        self._symbol_names = None if replay.source == "synthetic" else np.array(replay.symbols, dtype=object)
        self._symbol_index = replay.symbol_index  # (D,)
        self._rngs: list[np.random.Generator] | None = None
        self._decision: np.ndarray | None = None  # (N,) current decision index of each sub-env
        self._last = np.zeros(self.num_envs, dtype=np.int64)  # (N,) last decision of each episode
        # Episode record for render(): rewards/actions (N, capacity), grown by doubling; steps (N,) used.
        self._episode_rewards = np.zeros((self.num_envs, 0))
        self._episode_actions = np.zeros((self.num_envs, 0), dtype=np.int64)
        self._episode_steps = np.zeros(self.num_envs, dtype=np.int64)

    # --- internals -----------------------------------------------------------------------------
    def _observations(self, decisions: np.ndarray) -> np.ndarray:
        if self._windows is not None:
            return self._windows[decisions]  # (N, W, F) fancy indexing: a fresh copy
        return self.replay.observations(decisions)

    def _info_values(self, decisions: np.ndarray) -> dict[str, np.ndarray]:
        values = {
            "label": self._labels[decisions],  # (N,)
            "strategy_pnl": self._pnl[decisions],  # (N, S)
            "t": self._bars[decisions],  # (N,)
            "decision": decisions.copy(),  # (N,)
        }
        if self._label_pnl is not None:
            values["label_pnl"] = self._label_pnl[decisions]  # (N, S)
        if self._regimes is not None:
            values["regime"] = self._regimes[decisions]  # (N,)
        if self._symbol_names is not None:
            values["symbol"] = self._symbol_names[self._symbol_index[decisions]]  # (N,) str
        return values

    def _info(self, decisions: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        """Info arrays with Gymnasium's `_key` masks; with `mask`, rows outside it are zero (final_info layout)."""
        info: dict[str, Any] = self._info_values(decisions)
        for key in list(info):
            if mask is not None:
                info[key][~mask] = "" if key == "symbol" else 0
            info[f"_{key}"] = np.ones(self.num_envs, dtype=bool) if mask is None else mask.copy()
        return info

    def _new_episodes(self, envs: np.ndarray) -> None:
        """Start a new episode in each listed sub-env (a loop over resetting envs only)."""
        assert self._decision is not None and self._rngs is not None
        draws = self.config.episode_length is not None or len(self._episodes) > 1
        for i in envs.tolist():
            self._decision[i], self._last[i] = self._episodes.draw(self._rngs[i] if draws else None)

    def split_labels(self) -> np.ndarray:
        """Hindsight labels (D_split,) of this env's split (e.g. for class weights); read-only."""
        return self._labels[self.replay.split_indices(self.config.split)]

    def _record(self, envs: np.ndarray, rewards: np.ndarray, actions: np.ndarray) -> None:
        """Append one step to the episode record of each listed sub-env (render_mode only)."""
        at = self._episode_steps[envs]  # (E,)
        if at.size and int(at.max()) >= self._episode_rewards.shape[1]:
            grow = max(16, self._episode_rewards.shape[1])
            self._episode_rewards = np.pad(self._episode_rewards, ((0, 0), (0, grow)))
            self._episode_actions = np.pad(self._episode_actions, ((0, 0), (0, grow)))
        self._episode_rewards[envs, at] = rewards
        self._episode_actions[envs, at] = actions
        self._episode_steps[envs] += 1

    def render(self) -> tuple[np.ndarray, ...] | None:
        """With ``render_mode="rgb_array"``: one (H, W, 3) uint8 chart per sub-env (None otherwise)."""
        if self.render_mode is None:
            return None
        frames = []
        for i in range(self.num_envs):
            n = int(self._episode_steps[i])
            rewards = self._episode_rewards[i, :n]
            title = (
                f"{self.replay.source} · {self.config.split} · env {i} · step {n} · "
                f"equity {rewards.sum():+.4f}"
            )
            frames.append(episode_frame(rewards, self._episode_actions[i, :n], title))
        return tuple(frames)

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Cursors and RNG states of every sub-env, as plain Python values (safe for torch.load(weights_only=True)).

        ``load_state_dict`` on a vector env built with the same config continues exactly where this one is.
        """
        return {
            "num_envs": self.num_envs,
            "decision": None if self._decision is None else self._decision.tolist(),
            "last": self._last.tolist(),
            "rngs": None if self._rngs is None else [rng.bit_generator.state for rng in self._rngs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        if state.get("num_envs") != self.num_envs:
            raise ValueError(
                f"state: saved with num_envs={state.get('num_envs')}, this env has {self.num_envs}; "
                "build the vector env with the saved num_envs"
            )
        decision = state["decision"]
        if decision is not None and not self._episodes.contains(np.array(decision, dtype=np.int64)):
            raise ValueError(
                f"state: decision indices outside this env's split ranges {self._episodes.ranges.tolist()}; "
                "build the vector env with the saved config"
            )
        rngs = None
        if state["rngs"] is not None:
            rngs = []
            for saved in state["rngs"]:
                bit_generator = _BIT_GENERATORS.get(saved["bit_generator"])
                if bit_generator is None:
                    raise ValueError(
                        f"state: unknown bit generator {saved['bit_generator']!r}; expected one of {list(_BIT_GENERATORS)}"
                    )
                rng = np.random.Generator(bit_generator())
                rng.bit_generator.state = saved
                rngs.append(rng)
        self._rngs = rngs
        self._decision = None if decision is None else np.array(decision, dtype=np.int64)
        self._last = np.array(state["last"], dtype=np.int64)

    # --- gymnasium API -------------------------------------------------------------------------
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-env; with seed s, sub-env i is seeded s + i (or seed[i] for a list)."""
        if isinstance(seed, list | tuple):
            if len(seed) != self.num_envs:
                raise ValueError(
                    f"seed: a list of {len(seed)} seeds for {self.num_envs} sub-envs; pass one per sub-env"
                )
            seeds = list(seed)
        elif seed is None:
            seeds = [None] * self.num_envs
        else:
            super().reset(seed=int(seed))
            seeds = [int(seed) + i for i in range(self.num_envs)]
        if self._rngs is None:
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        else:  # like Env.reset: seed=None keeps a sub-env's generator
            self._rngs = [
                rng if s is None else seeding.np_random(s)[0]
                for rng, s in zip(self._rngs, seeds, strict=True)
            ]
        self._decision = np.zeros(self.num_envs, dtype=np.int64)
        self._new_episodes(np.arange(self.num_envs))
        self._episode_steps[:] = 0
        return self._observations(self._decision), self._info(self._decision)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every sub-env by one decision (``step_masked`` with an all-True mask)."""
        return self.step_masked(actions, None)

    def step_masked(
        self, actions: Any, mask: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance only the sub-envs where ``mask`` is True; they commit ``actions[i]``.

        The others do not move: reward 0.0, terminated/truncated False, observation and info of their
        current decision (their actions are ignored and not validated). ``mask=None`` means all.
        """
        decision = self._decision
        if decision is None:
            raise ResetNeeded("call reset() before step()")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu":
            raise ValueError(
                f"actions: expected an integer array of shape ({self.num_envs},), got {a.dtype} {a.shape}"
            )
        if mask is None:
            bad = (a < 0) | (a >= N_STRATEGIES)  # (N,)
            active = None
        else:
            active = np.asarray(mask)
            if active.shape != (self.num_envs,) or active.dtype != np.bool_:
                raise ValueError(
                    f"mask: expected a bool array of shape ({self.num_envs},), got {active.dtype} {active.shape}"
                )
            bad = active & ((a < 0) | (a >= N_STRATEGIES))
            a = np.where(active, a, 0)  # ignored actions still index safely
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"actions[{i}]={a[i]}: expected an int in [0, {N_STRATEGIES}) (index into STRATEGIES)"
            )

        rewards = self._pnl[decision, a]  # (N,) exactly strategy_pnl[d, a]
        if active is None:
            decision += 1
        else:
            rewards[~active] = 0.0
            decision += active
        truncated = decision == self._last  # (N,) only advanced envs can newly reach their last decision
        if active is not None:
            truncated &= active
        terminated = np.zeros(self.num_envs, dtype=bool)  # (N,)
        if self.render_mode is not None:
            moved = np.arange(self.num_envs) if active is None else np.flatnonzero(active)  # (E,)
            self._record(moved, rewards[moved], a[moved])

        obs = self._observations(decision)  # (N, W, F)
        info = self._info(decision)
        if truncated.any():
            ended = np.flatnonzero(truncated)  # (E,)
            final_obs = np.full(self.num_envs, None, dtype=object)  # Gymnasium's layout: per-env arrays
            final_rows = obs[ended]  # (E, W, F) copies, before the rows are overwritten
            for j, i in enumerate(ended.tolist()):
                final_obs[i] = final_rows[j]
            info["final_obs"], info["_final_obs"] = final_obs, truncated.copy()
            info["final_info"], info["_final_info"] = self._info(decision, truncated), truncated.copy()
            self._new_episodes(ended)
            self._episode_steps[ended] = 0
            obs[ended] = self._observations(decision[ended])
            for key, value in self._info_values(decision[ended]).items():
                info[key][ended] = value
        return obs, rewards, terminated, truncated, info
