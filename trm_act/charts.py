"""Evaluation charts as (H, W, 3) uint8 images for TensorBoard's Images tab.

Drawn with matplotlib (the optional ``render`` extra) on an Agg canvas, never through pyplot, so no GUI
backend or global figure state is involved. Without matplotlib the charts are skipped with one warning:
TensorBoard is a view of the run, and the scalars still carry the numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

# Line colours per equity curve, fixed so the same policy keeps its colour from one evaluation to the next.
EQUITY_STYLE = {
    "equity/model": ("model (adaptive)", "tab:blue"),
    "equity/best_fixed": ("best fixed", "tab:orange"),
    "equity/regime_oracle": ("regime oracle", "tab:green"),
    "equity/random": ("random", "tab:gray"),
}
DPI = 100
SIZE = (7.0, 3.6)  # inches: 700 x 360 pixels, readable at TensorBoard's default image width

_warned = False


def _figure_module() -> Any:
    """matplotlib.figure, or None after one warning when matplotlib is not installed."""
    global _warned
    try:
        import matplotlib.figure
    except ImportError:
        if not _warned:
            _warned = True
            warnings.warn(
                "matplotlib is not installed, so TensorBoard gets no evaluation charts; "
                'pip install "trm-act[render]" to draw them.',
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    return matplotlib.figure


def _to_rgb(figure: Any) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8


def equity_chart(equity: Mapping[str, np.ndarray], step: int) -> np.ndarray | None:
    """Cumulative held-out PnL per decision of the model and its baselines; None without matplotlib."""
    figure_module = _figure_module()
    if figure_module is None:
        return None
    figure = figure_module.Figure(figsize=SIZE, dpi=DPI)
    axes = figure.add_subplot()
    for tag, curve in equity.items():
        label, colour = EQUITY_STYLE.get(tag, (tag.removeprefix("equity/"), None))
        axes.plot(np.arange(1, len(curve) + 1), curve, label=label, color=colour, linewidth=1.2)
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.set(
        title=f"held-out equity at step {step}",
        xlabel="test decision",
        ylabel="cumulative PnL (fraction of capital)",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return _to_rgb(figure)


def halting_chart(
    steps: np.ndarray, max_steps: int, steps_by_regime: Mapping[str, float] | None, step: int
) -> np.ndarray | None:
    """Histogram of reasoning steps, and mean steps per true regime when known; None without matplotlib."""
    figure_module = _figure_module()
    if figure_module is None:
        return None
    figure = figure_module.Figure(figsize=SIZE, dpi=DPI)
    panels = figure.subplots(1, 2 if steps_by_regime else 1, squeeze=False)[0]
    counts = np.bincount(np.asarray(steps, dtype=np.int64), minlength=max_steps + 1)[1:]  # (max_steps,)
    histogram = panels[0]
    histogram.bar(np.arange(1, max_steps + 1), counts, color="tab:blue")
    histogram.set(
        title=f"halting step (mean {np.mean(steps):.2f} of {max_steps})",
        xlabel="reasoning steps",
        ylabel="test decisions",
        xticks=np.arange(1, max_steps + 1),
    )
    if steps_by_regime:
        regimes = panels[1]
        names = list(steps_by_regime)
        regimes.barh(names, [steps_by_regime[name] for name in names], color="tab:purple")
        regimes.set(title="mean steps per true regime", xlabel="reasoning steps", xlim=(0, max_steps))
        regimes.invert_yaxis()
    figure.suptitle(f"step {step}", fontsize=9, x=0.99, ha="right")
    figure.tight_layout()
    return _to_rgb(figure)


def eval_images(
    equity: Mapping[str, np.ndarray],
    steps: np.ndarray | None,
    max_steps: int,
    steps_by_regime: Mapping[str, float] | None,
    step: int,
) -> dict[str, np.ndarray]:
    """``{tag: (H, W, 3) uint8}`` of one evaluation: ``eval/equity_chart`` and ``eval/halting_chart``."""
    images = {"eval/equity_chart": equity_chart(equity, step) if equity else None}
    if steps is not None:
        images["eval/halting_chart"] = halting_chart(steps, max_steps, steps_by_regime, step)
    return {tag: image for tag, image in images.items() if image is not None}
