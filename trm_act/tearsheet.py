"""The walk-forward's tear sheet: ``DIR/NAME/report.html``, its PNG figures, and the same figures in TensorBoard.

The HTML file is self-contained (figures embedded as base64 PNG; without matplotlib an inline SVG of the
equity curves stands in for them). The PNGs also go to ``DIR/NAME/figures/`` and, as images, to the
TensorBoard run ``DIR/NAME/stitched`` (``tensorboard --logdir DIR/NAME`` shows it beside the fold runs).
Figures are drawn on an Agg canvas, never through pyplot (no GUI backend, no global figure state).
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from trm_act import stats
from trm_act.stitch import COMPARED, METHODS, Curves, verdict

FIGURES_DIR = "figures"
TENSORBOARD_RUN = "stitched"
DPI = 100
SIZE = (8.0, 3.6)
COLOURS = {
    "model": "tab:blue",
    "gated": "tab:purple",
    "long": "tab:green",
    "best_fixed": "tab:orange",
    "random": "tab:gray",
}
LABELS = {
    "model": "model (adaptive)",
    "gated": "gated model",
    "long": "long",
    "best_fixed": "best fixed",
    "random": "random",
}
LINESTYLES = {"gated": "--"}
"""Dashed where a policy's line may lie on another's (the gated model plays the model or best fixed)."""
POLICY_NAMES = {"model": "model", "gated": "gated model"}
"""How the statistics name the policies compared with the benchmarks."""


def _matplotlib_figure() -> Any:
    try:
        import matplotlib.figure
    except ImportError:
        return None
    return matplotlib.figure


def _dates(ns: np.ndarray) -> np.ndarray:
    return np.asarray(ns, dtype="datetime64[ns]")


def draw_figures(curves: Curves, result: dict[str, Any]) -> dict[str, Any]:
    """``{name: matplotlib Figure}``: equity, drawdown, per-fold PnL, reasoning steps, PnL per fixed depth."""
    figure_module = _matplotlib_figure()
    if figure_module is None:
        return {}
    out: dict[str, Any] = {}
    when = _dates(curves.time)
    starts = [when[i] for i in curves.fold_starts]

    def new(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
        figure = figure_module.Figure(figsize=SIZE, dpi=DPI)
        axes = figure.add_subplot()
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
        axes.grid(alpha=0.3)
        return figure, axes

    figure, axes = new(
        "stitched out-of-sample equity", "decision time", "cumulative PnL (log, fraction of capital)"
    )
    for name in ("model", "long", "best_fixed", "random", "gated"):  # gated last: dashed over what it plays
        axes.plot(
            when,
            np.cumsum(curves.pnl[name]),
            label=LABELS[name],
            color=COLOURS[name],
            linewidth=1.2,
            linestyle=LINESTYLES.get(name, "-"),
            alpha=0.6 if name == "random" else 1.0,
        )
    for fold, start in zip(curves.folds, starts, strict=True):
        axes.axvline(start, color="black", linewidth=0.5, linestyle=":")
        axes.annotate(
            f"fold {fold}",
            (start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            fontsize=7,
            va="top",
        )
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.legend(loc="best", fontsize=8)
    figure.autofmt_xdate()
    out["equity"] = figure

    figure, axes = new("drawdown from the running peak", "decision time", "drawdown (fraction of equity)")
    for name in ("model", "long", "best_fixed", "gated"):
        axes.plot(
            when,
            -stats.drawdown_curve(curves.pnl[name])[1:],
            label=LABELS[name],
            color=COLOURS[name],
            linewidth=1.0,
            linestyle=LINESTYLES.get(name, "-"),
        )
    axes.legend(loc="lower left", fontsize=8)
    figure.autofmt_xdate()
    out["drawdown"] = figure

    figure, axes = new("PnL per fold", "fold", "PnL over the fold's test span")
    folds = result["folds"]
    x = np.arange(len(folds))
    names = ("model", "gated", "long", "best_fixed", "random")
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        axes.bar(
            x + (j - (len(names) - 1) / 2) * width,
            [f[name]["pnl"] for f in folds],
            width,
            label=LABELS[name],
            color=COLOURS[name],
        )
    axes.set_xticks(x, [str(f["fold"]) for f in folds])
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.legend(fontsize=8)
    out["folds"] = figure

    if curves.steps is not None and len(curves.steps):
        figure, axes = new(
            f"reasoning steps (mean {curves.steps.mean():.2f} of {curves.max_steps})",
            "reasoning steps",
            "out-of-sample decisions",
        )
        counts = np.bincount(curves.steps, minlength=curves.max_steps + 1)[1:]
        axes.bar(np.arange(1, curves.max_steps + 1), counts, color="tab:blue")
        axes.set_xticks(np.arange(1, curves.max_steps + 1))
        out["steps"] = figure

    if curves.depth_pnl is not None:
        figure, axes = new("stitched PnL at each fixed depth", "reasoning steps (every decision)", "PnL")
        depths = np.arange(1, curves.depth_pnl.shape[0] + 1)
        axes.plot(depths, curves.depth_pnl.sum(axis=1), marker="o", color="tab:purple", label="fixed depth")
        axes.axhline(
            float(curves.pnl["model"].sum()), color=COLOURS["model"], linestyle="--", label="adaptive halting"
        )
        axes.set_xticks(depths)
        axes.legend(fontsize=8)
        out["depth"] = figure
    for figure in out.values():
        figure.tight_layout()
    return out


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _rgb(figure: Any) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8


def equity_svg(curves: Curves, width: int = 800, height: int = 300) -> str:
    """Inline SVG of the stitched equity curves (the fallback without matplotlib)."""
    lines = {
        name: np.concatenate([[0.0], np.cumsum(curves.pnl[name])])
        for name in ("model", "long", "best_fixed", "gated")
    }
    low = min(float(v.min()) for v in lines.values())
    high = max(float(v.max()) for v in lines.values())
    span = high - low or 1.0
    n = len(next(iter(lines.values())))
    colours = {"model": "#1f77b4", "long": "#2ca02c", "best_fixed": "#ff7f0e", "gated": "#9467bd"}
    dashes = {name: ' stroke-dasharray="6 3"' if name == "gated" else "" for name in lines}
    paths = []
    for name, values in lines.items():
        xs = np.linspace(10, width - 10, n)
        ys = height - 10 - (values - low) / span * (height - 20)
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        paths.append(
            f'<polyline fill="none" stroke="{colours[name]}" stroke-width="1.5"{dashes[name]} points="{points}">'
            f"<title>{LABELS[name]}</title></polyline>"
        )
    zero = height - 10 - (0.0 - low) / span * (height - 20)
    legend = " ".join(f'<tspan fill="{colours[name]}">{html.escape(LABELS[name])}</tspan>' for name in lines)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="stitched equity curves">'
        f'<line x1="10" x2="{width - 10}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="black" stroke-width="0.5"/>'
        + "".join(paths)
        + f'<text x="14" y="18" font-size="12">{legend}</text></svg>'
    )


def _fmt(value: Any, spec: str = "+.3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, spec)
    return html.escape(str(value))


def _stamp(value: Any) -> str:
    """An ISO timestamp as the table shows it: the date alone for a midnight (daily bars), else date and time."""
    text = str(value)
    for midnight in ("T00:00:00", " 00:00:00"):
        if text.endswith(midnight):
            return html.escape(text[: -len(midnight)])
    return html.escape(text.replace("T", " "))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _policy_rows(stitched: dict[str, Any]) -> list[list[str]]:
    from trm_act.envs import STRATEGIES

    model = stitched["model"]
    named = [
        ("model (adaptive)", model),
        (f"model (fixed {model['max_steps']} steps)", model["fixed_max_steps"]),
        ("gated model", stitched["gated"]),
        ("long", stitched["long"]),
        ("best fixed", stitched["best_fixed"]),
        ("random", stitched["random"]),
    ]
    named += [(f"fixed: {name}", stitched[name]) for name in STRATEGIES if name != "long"]
    return [
        [
            html.escape(name),
            _fmt(r["pnl"]),
            _fmt(r["sharpe"], ".2f"),
            _fmt(r["sortino"], ".2f"),
            _fmt(r["max_drawdown"], ".3f"),
            _fmt(r["turnover"], ".4f"),
            _fmt(r["exposure"], ".3f"),
            _fmt(r["hit_rate"], ".3f"),
        ]
        for name, r in named
    ]


def _fold_rows(folds: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for f in folds:
        best = f.get("best_fixed_strategy") or {}
        strategies = sorted(set(best.values()))
        rows.append(
            [
                str(f["fold"]),
                _stamp(f["train_start"]),
                _stamp(f["train_end"]),
                _stamp(f["test_start"]),
                _stamp(f["test_end"]),
                str(f.get("train_decisions", "")),
                str(f.get("purged", "")),
                str(f.get("embargoed", "")),
                str(f.get("test_decisions", "")),
                html.escape(", ".join(strategies) if len(strategies) <= 2 else "per instrument"),
                _fmt(f["model"]["pnl"]),
                html.escape(f["gated"]["plays"].replace("_", " ")),
                _fmt(f["long"]["pnl"]),
                _fmt(f["best_fixed"]["pnl"]),
                _fmt(f["random"]["pnl"]),
                _fmt(f["model"]["sharpe"], ".2f"),
                _fmt(f["model"]["mean_steps"], ".2f"),
            ]
        )
    return rows


def _statistics(stitched: dict[str, Any]) -> str:
    parts = []
    words = {
        "better": "significantly better",
        "worse": "significantly worse",
        "not different": "not significantly different",
    }
    for policy in ("model", "gated"):
        for name in COMPARED:
            ci = stitched.get(f"{policy}_minus_{name}")
            if ci is None:
                continue
            parts.append(
                f"<li><b>{POLICY_NAMES[policy]} &minus; {html.escape(name.replace('_', ' '))}</b>: "
                f"{ci['total']:+.4f} PnL over the record, 95% interval [{ci['total_ci_low']:+.4f}, "
                f"{ci['total_ci_high']:+.4f}] (per decision {ci['mean']:+.5f} [{ci['ci_low']:+.5f}, "
                f"{ci['ci_high']:+.5f}]; p = {ci['p_value']:.3f}; mean block {ci['block_length']:.0f} decisions): "
                f"<b>{words[verdict(ci)]}</b></li>"
            )
    psr, dsr = stitched.get("psr"), stitched.get("dsr")
    if psr is not None:
        parts.append(
            f"<li><b>PSR</b> {psr['value']:.3f}: the probability that the model's true Sharpe ratio is above 0 "
            f"(per-decision Sharpe {psr['sharpe_per_decision']:.4f}, annualised {psr['sharpe_annualised']:.2f}; "
            f"skewness {psr['skew']:.2f}, kurtosis {psr['kurtosis']:.2f}; {psr['n']} decisions)</li>"
        )
    if dsr is not None:
        if dsr["value"] is None:
            parts.append(f"<li><b>DSR</b> n/a: {html.escape(dsr['reason'])}</li>")
        else:
            parts.append(
                f"<li><b>DSR</b> {dsr['value']:.3f} over n_trials = {dsr['n_trials']} "
                f"({html.escape(dsr['n_trials_source'])}); the best of that many unskilled trials would show an "
                f"annualised Sharpe of {dsr['expected_max_sharpe_annualised']:.2f} "
                f"(trial Sharpe variance: {html.escape(dsr['sharpe_variance_source'])})</li>"
            )
    return "<ul>" + "".join(parts) + "</ul>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%} .note{color:#555;font-size:13px} dt{font-weight:bold;margin-top:0.4em}
"""


def render_html(result: dict[str, Any], images: dict[str, bytes], svg: str | None) -> str:
    """The tear sheet as one HTML page (``images``: name -> PNG bytes, embedded as base64)."""
    stitched = result["stitched"]
    title = f"Walk-forward tear sheet: {result['data']}"
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    out.append(
        f"<p>{result['scheme']} scheme, {result['folds_planned']} folds, embargo {result['embargo']} bars, "
        f"trades of {result['horizon']} bars, labels over {result['label_horizon']} bars, a decision every "
        f"{result['stride']} bars ({result['periods_per_year']:.1f} a year).</p>"
    )
    config = result.get("config")
    if config:
        env, model, loss, train = (config.get(k, {}) for k in ("env", "model", "loss", "train"))
        out.append(
            f"<p class='note'>Recipe: {train.get('steps')} optimizer steps per fold, batch {train.get('batch_size')}, "
            f"seed {train.get('seed')}; model d_model {model.get('d_model')}, up to {model.get('max_steps')} "
            f"reasoning steps; labels {html.escape(str(env.get('label_source')))}; halt target "
            f"{html.escape(str(loss.get('halt_target')))}; costs {env.get('cost')} per unit of position change. "
            "The full config is in walkforward.json.</p>"
        )
    if result["missing_folds"]:
        missing = ", ".join(str(k) for k in result["missing_folds"])
        out.append(
            f"<p><b>Incomplete:</b> folds {missing} have not finished; the figures below stitch the others.</p>"
        )
    if stitched is None:
        out.append("<p>No fold has finished yet.</p></body></html>")
        return "".join(out)
    out.append(f"<h2>Out of sample: {stitched['decisions']} decisions</h2>")
    out.append(_statistics(stitched))
    for name, caption in (("equity", "Stitched equity curves"), ("drawdown", "Drawdown")):
        if name in images:
            encoded = base64.b64encode(images[name]).decode()
            out.append(f"<h3>{caption}</h3><img alt='{caption}' src='data:image/png;base64,{encoded}'>")
    if not images and svg:
        out.append(
            f"<h3>Stitched equity curves</h3>{svg}<p class='note'>matplotlib is not installed: "
            "only the equity curves are drawn (pip install matplotlib for every figure).</p>"
        )
    out.append("<h3>Every policy, stitched</h3>")
    out.append(
        _table(
            ["policy", "pnl", "sharpe", "sortino", "max dd", "turnover", "exposure", "hit rate"],
            _policy_rows(stitched),
        )
    )
    out.append("<h2>Folds</h2>")
    out.append(
        _table(
            [
                "fold",
                "train start",
                "train end",
                "test start",
                "test end",
                "train dec.",
                "purged",
                "embargoed",
                "test dec.",
                "best fixed",
                "model pnl",
                "gated plays",
                "long pnl",
                "best fixed pnl",
                "random pnl",
                "model sharpe",
                "mean steps",
            ],
            _fold_rows(result["folds"]),
        )
    )
    for name, caption in (
        ("folds", "PnL per fold"),
        ("steps", "Reasoning steps"),
        ("depth", "PnL at each fixed depth"),
    ):
        if name in images:
            encoded = base64.b64encode(images[name]).decode()
            out.append(f"<h3>{caption}</h3><img alt='{caption}' src='data:image/png;base64,{encoded}'>")
    out.append("<h2>Methods</h2><dl>")
    for name, text in METHODS.items():
        out.append(f"<dt>{html.escape(name)}</dt><dd>{html.escape(text)}</dd>")
    out.append("</dl></body></html>")
    return "".join(out)


def write_report(root: Path, result: dict[str, Any], curves: Curves | None) -> Path:
    """Write ``root/report.html`` and ``root/figures/*.png``, and log the figures to TensorBoard."""
    from trm_act.files import atomic_write

    figures = draw_figures(curves, result) if curves is not None else {}
    images = {name: _png(figure) for name, figure in figures.items()}
    if images:
        folder = root / FIGURES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in images.items():
            atomic_write(folder / f"{name}.png", lambda handle, data=data: handle.write(data))
        _log_images(root / TENSORBOARD_RUN, {name: _rgb(figure) for name, figure in figures.items()})
    elif curves is not None:
        warnings.warn(
            "matplotlib is not installed, so the tear sheet shows the equity curves only (as SVG); "
            'pip install matplotlib (or "trm-act[render]") for every figure.',
            RuntimeWarning,
            stacklevel=2,
        )
    svg = equity_svg(curves) if curves is not None and not images else None
    text = render_html(result, images, svg)
    return atomic_write(root / "report.html", lambda handle: handle.write(text.encode()))


def _log_images(log_dir: Path, images: dict[str, np.ndarray]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for old in log_dir.glob("events.out.tfevents.*"):  # one image set per stitch, the latest
        old.unlink()
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for name, image in images.items():
            writer.add_image(f"walkforward/{name}", image, 0, dataformats="HWC")
    finally:
        writer.close()
