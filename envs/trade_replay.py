"""TradeReplayEnv: pick one of 8 trading strategies at each decision point of a market replay."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from .config import TradeReplayConfig, resolve_config
from .features import FEATURE_CLIP
from .render import episode_frame
from .replay import ReplayData, build_replay
from .strategies import N_STRATEGIES

_INTEGER_TYPES = (int, np.integer)  # bool is an int too: excluded separately


class EpisodeStarts:
    """Where episodes of one split may start: per instrument, a contiguous range of decisions.

    An episode stays within one instrument. Its instrument and first decision are drawn together
    with one ``rng.integers`` call (the vector env makes the same call, so seeded episodes agree):
    with episode_length set, uniformly among every (instrument, first decision) that fits; with
    episode_length None, an episode is an instrument's whole split, the instrument drawn in proportion
    to its decisions (a single market needs no draw: its episode is the whole split).
    """

    def __init__(self, ranges: np.ndarray, episode_length: int | None) -> None:
        need = 2 if episode_length is None else episode_length
        sizes = ranges[:, 1] - ranges[:, 0]  # (K,)
        fits = sizes >= need
        self.episode_length = episode_length
        self.largest = int(sizes.max(initial=0))
        self.ranges = ranges[fits]  # (K', 2) instruments an episode fits in
        self.counts = (
            sizes[fits] - need + 1 if episode_length is not None else sizes[fits]
        )  # (K',) draw weights
        self.ends = np.cumsum(self.counts)  # (K',)

    def __len__(self) -> int:
        return int(self.ranges.shape[0])

    def draw(self, rng: np.random.Generator | None) -> tuple[int, int]:
        """(first, last) decision index of a new episode."""
        if self.episode_length is None and len(self) == 1:
            return int(self.ranges[0, 0]), int(self.ranges[0, 1]) - 1
        assert rng is not None
        j = int(rng.integers(0, int(self.ends[-1])))
        k = int(np.searchsorted(self.ends, j, side="right"))
        if self.episode_length is None:
            return int(self.ranges[k, 0]), int(self.ranges[k, 1]) - 1
        first = int(self.ranges[k, 0]) + j - int(self.ends[k] - self.counts[k])
        return first, first + self.episode_length - 1

    def contains(self, decisions: np.ndarray) -> bool:
        """Whether every decision index lies in a range an episode can be in."""
        d = np.asarray(decisions, dtype=np.int64)[:, None]  # (N, 1)
        return bool(((d >= self.ranges[:, 0]) & (d < self.ranges[:, 1])).any(axis=1).all())


def check_render_mode(render_mode: str | None, owner: str) -> str | None:
    """The render mode after checking that it is None or "rgb_array" (the only one drawn)."""
    if render_mode is not None and render_mode != "rgb_array":
        raise ValueError(
            f"render_mode={render_mode!r}: {owner} renders only 'rgb_array' (an equity and strategy chart as an "
            "(H, W, 3) uint8 array); pass render_mode='rgb_array' and show the frame yourself, "
            "e.g. matplotlib.pyplot.imshow(env.render()), or pass None"
        )
    return render_mode


def check_split(replay: ReplayData, config: TradeReplayConfig) -> EpisodeStarts:
    """Where the split's episodes may start, after checking that at least one episode fits."""
    episodes = EpisodeStarts(replay.split_ranges(config.split), config.episode_length)
    need = 2 if config.episode_length is None else config.episode_length
    if not len(episodes):
        where = "" if replay.n_symbols == 1 else f"the largest of its {replay.n_symbols} instruments "
        raise ValueError(
            f"split={config.split!r} of {replay.source} has {where}{episodes.largest} decision point(s) but an "
            f"episode needs {need} (episode_length={config.episode_length}); "
            + _bars_for_one_episode(replay, config.split, need)
        )
    return episodes


def _bars_for_one_episode(replay: ReplayData, split: str, decisions: int) -> str:
    """How many bars an instrument needs for ``decisions`` decisions of ``split``, and the options that lower it."""
    # Decisions run from bar `window` every `stride` bars. A train decision's trade and label end before the test
    # split's first bar (reach bars ahead); a test decision's trade ends by the last bar.
    reach = max(replay.horizon, replay.label_horizon)
    span = (decisions - 1) * replay.stride + 1
    if split == "train":
        bars = math.ceil((replay.window + reach + span) / (1 - replay.test_fraction))
    elif split == "test":
        # The test split's first decision is the first of the grid at or after its first bar: up to stride - 1 later.
        bars = math.ceil((replay.horizon + span + replay.stride - 1) / replay.test_fraction)
    else:
        bars = replay.window + replay.horizon + span
    return (
        f"that takes about {bars:,} bars (window={replay.window}, stride={replay.stride}, trades and labels "
        f"reaching {reach} bars ahead, test_fraction={replay.test_fraction}); use more bars, or a smaller "
        "episode_length (--env.episode-length), stride (--env.stride), label_horizon (--env.label-horizon) or "
        "window (--env.window)"
    )


class TradeReplayEnv(gym.Env[np.ndarray, np.int64]):
    """Replay a market and choose, at each decision point, which of 8 trading strategies to run.

    At decision bar t the agent sees the causal features of bars t-window+1..t and picks a strategy;
    the strategy trades over bars t+1..t+horizon (entering from flat, exiting to flat) and its
    realized PnL, net of costs, is the reward. The environment then moves `stride` bars on.
    Every strategy's PnL is precomputed once (see ``ReplayData``), so a step is an index lookup.

    ## Action Space

    ``Discrete(8)``; the action is an index into ``STRATEGIES``:

    | action | strategy       | rule (position held over bar j+1, decided from bars <= j)           |
    |--------|----------------|---------------------------------------------------------------------|
    | 0      | flat           | 0                                                                   |
    | 1      | long           | +1                                                                  |
    | 2      | short          | -1                                                                  |
    | 3      | momentum       | tanh(5-bar return / (short-run vol * sqrt 5))                      |
    | 4      | mean_reversion | -tanh(2 * (log close - its 4-bar mean) / short-run vol)            |
    | 5      | ma_trend       | tanh(2 * (EWM_4 - EWM_16 of log close) / short-run vol)            |
    | 6      | breakout       | position of the close in its 20-bar high-low channel, -1 .. +1      |
    | 7      | vol_target     | min(0.8 * long-run vol / short-run vol, 2): a volatility-targeted long |

    ## Observation Space

    ``Box(-10, 10, (window, 10), float32)``: for bars t-window+1..t, the features ``ret``, ``range``,
    ``body``, ``close_loc``, ``gap``, ``volume_z``, ``vol_ratio``, ``momentum``, ``trend``,
    ``autocorr`` (see ``trm_act.envs.features.FEATURE_NAMES``). Each is computed from past bars only,
    with causal (EWM / trailing) normalisation, so the observation at t never changes when a later
    bar does. A fresh array is returned every time.

    ## Rewards

    The reward of ``step(a)`` is ``info["strategy_pnl"][a]`` of the decision just acted on, exactly:
    ``sum_k p_k * r_{t+k+1} - cost * (|p_0| + sum_k |p_k - p_{k-1}| + |p_{h-1}|)``, in fractions of
    capital (0.05 = 5%), with r the close-to-close log return and p the strategy's positions.

    ``info`` (from ``reset`` and ``step``) describes the decision point of the returned observation:
    ``label`` (int, best strategy in hindsight, ties to the lowest index), ``strategy_pnl``
    (float64[8], each strategy's PnL over the coming horizon; supervision, never model input), ``t``
    (bar index), ``decision`` (decision index into ``env.replay``), ``regime`` (int, the true
    regime; synthetic data only) and ``symbol`` (str, the instrument; real data only: the file stem,
    dict key or Symbol value, "DataFrame" for a single DataFrame). With a ``label_horizon`` other than ``horizon``, ``label`` is the argmax of
    ``label_pnl`` (float64[8], each strategy's PnL over ``label_horizon`` bars, costs charged as ``label_costs``
    says), which info then also holds.
    With ``label_source="hmm"``, ``label`` is instead the strategy with the best mean PnL on the train split in
    the decision's state of a regime model fitted to the train split (``trm_act.envs.regimes``); with
    ``label_source="regime"`` (synthetic data only, a research control), the same for its true regime.

    ## Starting State

    The first decision of the split (episode_length None), or one drawn uniformly from
    ``self.np_random`` among the starts that leave room for episode_length decisions. With a universe
    of instruments an episode stays within one instrument: drawn with its start (uniformly among all
    instruments' starts that fit), or, with episode_length None, drawn in proportion to its decisions
    in the split, whose whole split the episode then replays (see ``EpisodeStarts``).

    ## Episode End

    ``terminated`` is always False (a market has no terminal state). ``truncated`` is True on the step
    that reaches the episode's last decision point: the end of the split, or episode_length decision
    points after the start. An episode of L decision points therefore has L - 1 steps.

    ## Arguments

    ```python
    gymnasium.make("trm_act/TradeReplay-v0", data="synthetic", window=32, horizon=8, label_horizon=32,
                   label_source="hindsight", stride=None, cost=0.0005, split="train", test_fraction=0.2,
                   episode_length=64, synthetic=SyntheticMarketConfig(), skip_bad_files=False)
    ```

    Every option is a keyword and a field of ``TradeReplayConfig`` (which holds the defaults and the checks);
    an unknown keyword raises a ValueError that names it and lists the valid ones.

    * ``data``: ``"synthetic"`` (the embedded regime-switching market), an OHLCV CSV path, a DataFrame,
      or a universe: a directory or glob of CSVs (one instrument each, file stem = symbol), a long
      CSV/Parquet with a Symbol/Ticker column, or a dict {symbol: DataFrame} (see ``trm_act.envs.universe``).
    * ``window``, ``horizon``, ``label_horizon``, ``label_costs``, ``label_source``, ``stride``, ``cost``, ``split``,
      ``test_fraction``, ``episode_length``, ``synthetic``, ``skip_bad_files``: see ``TradeReplayConfig``. Or pass a whole
      ``config=TradeReplayConfig(...)`` instead (not both).
    * ``render_mode``: None or ``"rgb_array"``: ``render()`` then returns an (H, W, 3) uint8 chart of the
      episode so far (equity = cumulative reward, and the strategy chosen at each step), drawn with
      matplotlib when installed (``pip install "trm-act[render]"``), else as a plain numpy raster.
      ``"human"`` is not supported: show the frame yourself, e.g. ``plt.imshow(env.render())``.

    ## Version History

    * v0: initial release; universes of instruments and ``info["symbol"]`` added without a version bump
      (single-market episodes are unchanged). The defaults later became what ``python -m trm_act.train`` trains:
      64-decision episodes from random starts and labels over 32 bars (``episode_length=None, label_horizon=None``
      give the whole split and labels over the trade's horizon, the earlier defaults).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self, *, config: TradeReplayConfig | None = None, render_mode: str | None = None, **options: Any
    ) -> None:
        self.config = resolve_config(config, options, type(self).__name__)
        self.render_mode = check_render_mode(render_mode, type(self).__name__)
        self.replay = build_replay(self.config)
        self._episodes = check_split(self.replay, self.config)

        replay = self.replay
        self.action_space = spaces.Discrete(N_STRATEGIES)
        self.observation_space = spaces.Box(
            -FEATURE_CLIP, FEATURE_CLIP, shape=(replay.window, replay.n_features), dtype=np.float32
        )
        # Plain Python containers make the per-step lookups a few list indexings (no numpy scalars).
        self._pnl_list: list[list[float]] = replay.strategy_pnl.tolist()
        self._pnl_rows = list(replay.strategy_pnl)  # read-only row views, copied into each info
        self._labels: list[int] = replay.labels.tolist()
        self._bars: list[int] = replay.decision_bars.tolist()
        self._regimes: list[int] | None = None if replay.regimes is None else replay.regimes.tolist()
        # Real data names its instrument in info["symbol"]; the synthetic market keeps its key set.
        self._symbols: list[str] | None = (
            None
            if replay.source == "synthetic"
            else [replay.symbols[k] for k in replay.symbol_index.tolist()]
        )
        # Only a separate label horizon adds info["label_pnl"]; otherwise it would repeat strategy_pnl.
        self._label_pnl_rows = None if replay.label_pnl is replay.strategy_pnl else list(replay.label_pnl)
        windows = replay.windows
        self._windows = None if windows is None else list(windows)  # (W, F) read-only views, copied per step
        self._actions = {a: a for a in range(N_STRATEGIES)}
        self._decision = -1  # -1: reset() not called yet; -2: the episode has ended
        self._last = -1
        self._episode: tuple[list[float], list[int]] = ([], [])  # rewards, actions; kept only for render()

    # --- internals -----------------------------------------------------------------------------
    def _observation(self, d: int) -> np.ndarray:
        if self._windows is not None:
            return self._windows[d].copy()  # (W, F) fresh
        t = self._bars[d]
        return self.replay.features[t - self.replay.window + 1 : t + 1].copy()  # (W, F) fresh

    def _info(self, d: int) -> dict[str, Any]:
        info = {
            "label": self._labels[d],
            "strategy_pnl": self._pnl_rows[d].copy(),
            "t": self._bars[d],
            "decision": d,
        }
        if self._label_pnl_rows is not None:
            info["label_pnl"] = self._label_pnl_rows[d].copy()
        if self._regimes is not None:
            info["regime"] = self._regimes[d]
        if self._symbols is not None:
            info["symbol"] = self._symbols[d]
        return info

    def _action(self, action: Any) -> int:
        # Integers only, like the vector env: 1.0 == 1 and True == 1 would otherwise pass the dict lookup.
        if isinstance(action, _INTEGER_TYPES) and not isinstance(action, bool):
            a = self._actions.get(action)
        elif isinstance(action, np.ndarray) and action.ndim == 0 and action.dtype.kind in "iu":
            a = self._actions.get(int(action))
        else:
            a = None
        if a is None:
            raise ValueError(
                f"action={action!r} ({type(action).__name__}): expected an int in [0, {N_STRATEGIES}) "
                "(index into STRATEGIES)"
            )
        return a

    # --- gymnasium API -------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # A single market's whole-split episode draws nothing, so its seeded generator stays untouched.
        draws = self.config.episode_length is not None or len(self._episodes) > 1
        self._decision, self._last = self._episodes.draw(self.np_random if draws else None)
        d = self._decision
        self._episode = ([], [])
        return self._observation(d), self._info(d)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        d = self._decision
        if d < 0:
            raise ResetNeeded(
                "call reset() before step()" if d == -1 else "the episode has ended (truncated); call reset()"
            )
        a = self._action(action)
        reward = self._pnl_list[d][a]  # Python float, exactly strategy_pnl[d, a]
        if self.render_mode is not None:
            self._episode[0].append(reward)
            self._episode[1].append(a)
        d += 1
        truncated = d == self._last
        self._decision = -2 if truncated else d
        return self._observation(d), reward, False, truncated, self._info(d)

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``: an (H, W, 3) uint8 chart of the current episode (None otherwise)."""
        if self.render_mode is None:
            return None
        rewards, actions = self._episode
        title = (
            f"{self.replay.source} · {self.config.split} · step {len(rewards)} · equity {sum(rewards):+.4f}"
        )
        return episode_frame(np.array(rewards), np.array(actions, dtype=np.int64), title)
