"""Episode charts for ``render_mode="rgb_array"``: the equity curve above, the strategy of each step below.

Drawn with matplotlib when it is installed (``pip install "trm-act[render]"``), otherwise with a small
numpy raster (lines and blocks, no text), so rendering never needs an extra dependency. Both return an
(H, W, 3) uint8 RGB array of the same size.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from .strategies import N_STRATEGIES, STRATEGIES

FRAME_HEIGHT, FRAME_WIDTH = 480, 640  # pixels of every frame
BACKENDS = ("auto", "matplotlib", "raster")
# One colour per strategy (index = action), the same in both backends.
STRATEGY_COLORS: tuple[tuple[int, int, int], ...] = (
    (127, 127, 127),  # flat
    (44, 160, 44),  # long
    (214, 39, 40),  # short
    (31, 119, 180),  # momentum
    (148, 103, 189),  # mean_reversion
    (255, 127, 14),  # ma_trend
    (23, 190, 207),  # breakout
    (140, 86, 75),  # vol_target
)
_EQUITY_COLOR = (31, 119, 180)
_GRID_COLOR = (190, 190, 190)
_DPI = 100


def _matplotlib_frame(equity: np.ndarray, actions: np.ndarray, title: str) -> np.ndarray:
    # The object-oriented API (no pyplot): no global figure state, no GUI backend, safe in any thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FRAME_WIDTH / _DPI, FRAME_HEIGHT / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 2)})
    fig.subplots_adjust(left=0.17, right=0.97, top=0.92, bottom=0.1, hspace=0.08)
    steps = np.arange(equity.shape[0])  # (n + 1,) equity after 0..n steps
    top.axhline(0.0, color=np.array(_GRID_COLOR) / 255, linewidth=0.8)
    top.plot(steps, equity, color=np.array(_EQUITY_COLOR) / 255, linewidth=1.2)
    top.set_ylabel("equity (cum. reward)")
    top.set_title(title, fontsize=9)
    colors = np.array(STRATEGY_COLORS, dtype=np.float64)[actions] / 255  # (n, 3)
    bottom.scatter(steps[1:], actions, c=colors, marker="s", s=12)
    bottom.set_yticks(range(N_STRATEGIES), STRATEGIES, fontsize=7)
    bottom.set_ylim(-0.5, N_STRATEGIES - 0.5)
    bottom.set_xlim(0, max(1, equity.shape[0] - 1))
    bottom.set_xlabel("step")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8


def raster_frame(equity: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The chart as a plain numpy raster: equity polyline (with its zero line) above, strategy blocks below."""
    img = np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), 255, dtype=np.uint8)  # (H, W, 3) white
    x0, x1 = 12, FRAME_WIDTH - 12
    eq_top, eq_bottom = 12, int(FRAME_HEIGHT * 0.62)
    st_top, st_bottom = int(FRAME_HEIGHT * 0.68), FRAME_HEIGHT - 12
    for top, bottom in ((eq_top, eq_bottom), (st_top, st_bottom)):  # panel frames
        img[[top, bottom], x0 : x1 + 1] = _GRID_COLOR
        img[top : bottom + 1, [x0, x1]] = _GRID_COLOR

    n = max(1, equity.shape[0] - 1)  # steps on the x axis
    columns = np.arange(x0 + 1, x1)  # (C,) drawable pixel columns
    t = (columns - x0) / (x1 - x0) * n  # (C,) step position of each column

    lo, hi = min(0.0, float(equity.min())), max(0.0, float(equity.max()))
    span = hi - lo if hi > lo else 1.0

    def to_row(values: np.ndarray) -> np.ndarray:
        return np.round(eq_bottom - 2 - (values - lo) / span * (eq_bottom - eq_top - 4)).astype(np.int64)

    img[to_row(np.zeros(1))[0], columns] = _GRID_COLOR  # zero line
    y = to_row(np.interp(t, np.arange(equity.shape[0]), equity))  # (C,)
    prev = np.concatenate((y[:1], y[:-1]))  # (C,) joins each column to the previous: a connected line
    rows = np.arange(FRAME_HEIGHT)[:, None]  # (H, 1)
    line = (rows >= np.minimum(y, prev)) & (rows <= np.maximum(y, prev))  # (H, C)
    block = img[:, columns]  # (H, C, 3) fancy indexing copies, so it is written back
    block[line] = _EQUITY_COLOR
    img[:, columns] = block

    if actions.shape[0]:
        step = np.minimum((t * actions.shape[0] / n).astype(np.int64), actions.shape[0] - 1)  # (C,)
        chosen = actions[step]  # (C,) strategy shown in each column
        band = (st_bottom - st_top - 2) / N_STRATEGIES
        for s in range(N_STRATEGIES):  # one horizontal band per strategy, index 0 at the bottom
            row = N_STRATEGIES - 1 - s
            top = st_top + 1 + round(row * band)
            bottom = st_top + round((row + 1) * band)
            img[top:bottom, columns[chosen == s]] = STRATEGY_COLORS[s]
    return img


def episode_frame(rewards: np.ndarray, actions: np.ndarray, title: str, backend: str = "auto") -> np.ndarray:
    """(H, W, 3) uint8 chart of one episode so far.

    Args:
        rewards: (n,) reward of each step; the equity curve is their running sum, starting at 0.
        actions: (n,) strategy index of each step.
        title: the chart's title (matplotlib only; the raster has no text).
        backend: "matplotlib", "raster", or "auto" (matplotlib when installed).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    equity = np.concatenate(([0.0], np.cumsum(np.asarray(rewards, dtype=np.float64))))  # (n + 1,)
    actions = np.asarray(actions, dtype=np.int64)  # (n,)
    if backend == "auto":
        backend = "matplotlib" if importlib.util.find_spec("matplotlib") is not None else "raster"
    if backend == "matplotlib":
        try:
            return _matplotlib_frame(equity, actions, title)
        except ImportError as exc:
            raise ValueError(
                f"backend='matplotlib': {exc}; install it with pip install \"trm-act[render]\" or use 'raster'"
            ) from None
    return raster_frame(equity, actions)
