"""What README.md and the pages in docs/ show stays true.

- Every ```python block runs as written, each in a fresh namespace and directory (in this process: a block's
  imports, not the suite's, must define its names). Fragments that need live data or an exported run are fenced
  ```py instead, and are not run.
- Every table a ``python -m trm_act.bench`` command printed is compared with the committed results it was rendered
  from (``trm_act/bench/results/``), on the page where the table now appears.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import re
import textwrap
import traceback
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = ROOT / "trm_act" / "bench" / "results"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

# A fence may be indented inside a list item; its closing fence has the same indent.
PYTHON_FENCE = re.compile(r"^( *)```python\n(.*?)^\1```", flags=re.S | re.M)


def page_name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def read(page: str) -> str:
    return (ROOT / page).read_text(encoding="utf-8")


def python_blocks() -> dict[str, str]:
    """``{"page:index": code}``; a block repeated on another page (the README's quickstart) runs once."""
    blocks: dict[str, str] = {}
    for path in PAGES:
        for index, match in enumerate(PYTHON_FENCE.finditer(path.read_text(encoding="utf-8"))):
            code = textwrap.dedent(match.group(2))
            if code not in blocks.values():
                blocks[f"{page_name(path)}:{index}"] = code
    return blocks


BLOCKS = python_blocks()


def test_the_pages_have_python_blocks():
    # Guards the regex: a rewrite that changes the fences must not turn this file into a no-op.
    pages = {key.split(":")[0] for key in BLOCKS}
    assert sum(key.startswith("README.md:") for key in BLOCKS) >= 2
    assert {"docs/data.md", "docs/integrations.md", "docs/model.md", "docs/thinking.md"} <= pages
    assert len(BLOCKS) >= 10


@dataclasses.dataclass
class BlockRun:
    """What a block did: ``returncode`` 0 or 1 (it raised; ``stderr`` holds the traceback), its output, its
    directory."""

    returncode: int
    stdout: str
    stderr: str
    cwd: Path


@pytest.fixture(scope="module")
def run_block(tmp_path_factory):
    """Run a block's code in a fresh namespace and a fresh directory, once per module for each distinct code
    (the README's quickstart is also docs/policy.md's first block)."""
    done: dict[str, BlockRun] = {}

    def run(code: str) -> BlockRun:
        if code not in done:
            cwd = tmp_path_factory.mktemp(
                "block"
            )  # blocks that write runs/ write there, never into the checkout
            out, err, status = io.StringIO(), io.StringIO(), 0
            env = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false"}
            # A SummaryWriter that a block leaves open writes its relative path from a thread later, when this
            # process is back in the checkout: each is closed in the block's directory, as a process's exit would.
            opened, open_writer = [], SummaryWriter.__init__

            def tracked(writer, *args, **kwargs):
                open_writer(writer, *args, **kwargs)
                opened.append(writer)

            with (
                pytest.MonkeyPatch.context() as patch,
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
            ):
                patch.chdir(cwd)
                for name, value in env.items():
                    patch.setenv(name, value)
                patch.setattr(SummaryWriter, "__init__", tracked)
                try:
                    exec(compile(code, "<block>", "exec"), {"__name__": "__main__"})
                except Exception:
                    status = 1
                    err.write(traceback.format_exc())
                finally:
                    for writer in opened:
                        writer.close()
            done[code] = BlockRun(status, out.getvalue(), err.getvalue(), cwd)
        return done[code]

    return run


# Blocks that train (a Trainer, Lightning, SB3 or HF): slow, as runs go in this suite.
TRAINS = re.compile(r"\.(fit|train|learn)\(")


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(key, marks=pytest.mark.slow) if TRAINS.search(code) else key
        for key, code in BLOCKS.items()
    ],
)
def test_python_block_runs(key, run_block):
    result = run_block(BLOCKS[key])
    assert result.returncode == 0, f"python block {key} failed:\n{BLOCKS[key]}\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_the_docs_example_trains_loads_and_decides_on_an_unseen_csv(run_block):
    # docs/policy.md's first python block is the README-ready "train, load, decide" example.
    text = (DOCS / "policy.md").read_text(encoding="utf-8")
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 5
    result = run_block(block)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "halt_logit" in result.stdout and (result.cwd / "runs" / "demo" / "checkpoint.pt").is_file()


# ----------------------------------------------------------------------------- bench tables


def learn_runs(name: str) -> list[dict]:
    return json.loads((RESULTS / name / "learn.json").read_text())["runs"]


def learn_table(name: str) -> str:
    # What `python -m trm_act.bench learn --from-json trm_act/bench/results/<name>/learn.json` prints.
    from trm_act.bench.learn import markdown, summarize

    runs = learn_runs(name)
    return markdown(summarize(runs), runs)


def first_table(text: str) -> str:
    """The caption and the first table of a bench output: everything up to the blank line after the table."""
    lines = text.split("\n")
    end = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("|") and (i + 1 == len(lines) or not lines[i + 1])
    )
    return "\n".join(lines[: end + 1])


def labels_table() -> str:
    # What `python -m trm_act.bench labels` prints (deterministic: the default synthetic market).
    from trm_act.bench.labels import HORIZONS, label_quality, markdown
    from trm_act.loss import LossConfig

    threshold = LossConfig().confidence_threshold
    return markdown([label_quality(h, threshold) for h in HORIZONS], threshold)


def real_table(name: str = "real") -> str:
    # What `python -m trm_act.bench real --from-json trm_act/bench/results/<name>/real.json` prints.
    from trm_act.bench.real import markdown

    saved = json.loads((RESULTS / name / "real.json").read_text())
    return markdown(saved["rows"], argparse.Namespace(**saved["budget"]))


# The README's CLI output is seed 0 of the learning benchmark's `default` runs, which compile their training step
# as the CLI does (`--compile auto` at 1,500 steps).
DEFAULT_RUN = "learn-value-default"


def default_run_over_seeds() -> str:
    """The default recipe's held-out figures per training seed, from the learning benchmark's `default` runs."""
    held_out = sorted(
        (run["seed"], market)
        for run in learn_runs(DEFAULT_RUN)
        if run["recipe"] == "default"
        for market in run["markets"]
        if market["market"] == "held-out"
    )
    lines = [
        "| seed | held-out PnL | mean steps | PnL at exactly 1 / 2 / 3 / 4 steps | random | capture of the regime oracle |",
        "|---:|---:|---:|:---|---:|---:|",
    ]
    for seed, m in held_out:
        depth = " / ".join(f"{pnl:+.3f}" for pnl in m["pnl_by_fixed_steps"])
        lines.append(
            f"| {seed} | {m['pnl']:+.3f} | {m['mean_steps']:.2f} | {depth} | {m['random_pnl']:+.3f} | {m['capture']:.0%} |"
        )
    markets = [m for _, m in held_out]

    def mean_se(key: str) -> tuple[float, float]:
        values = np.array([m[key] for m in markets], dtype=np.float64)
        return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))

    (pnl, pnl_se), (steps, steps_se), (capture, capture_se) = (
        mean_se(k) for k in ("pnl", "mean_steps", "capture")
    )
    depth = " / ".join(
        f"{np.mean(column):+.3f}" for column in zip(*(m["pnl_by_fixed_steps"] for m in markets), strict=True)
    )
    random = np.mean([m["random_pnl"] for m in markets])
    lines.append(
        f"| mean ± se | {pnl:+.3f} ± {pnl_se:.3f} | {steps:.2f} ± {steps_se:.2f} | {depth} | {random:+.3f} | "
        f"{capture:.0%} ± {capture_se:.0%} |"
    )
    return "\n".join(lines)


# Each bench table and the pages that show it.
def predict_table(name: str = "predict") -> str:
    """The table rows of ``python -m trm_act.bench predict``'s saved output."""
    text = (RESULTS / name / "predict.txt").read_text(encoding="utf-8")
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))


TABLES = {
    "learn": (lambda: learn_table("learn"), ["docs/results.md"]),
    "learn headline": (lambda: first_table(learn_table(DEFAULT_RUN)), ["README.md"]),
    "learn-value-default": (lambda: learn_table("learn-value-default"), ["docs/results.md"]),
    "learn-slow-value-default": (lambda: learn_table("learn-slow-value-default"), ["docs/results.md"]),
    "learn-belief-default": (lambda: learn_table("learn-belief-default"), ["docs/results.md"]),
    "learn-slow-belief-default": (lambda: learn_table("learn-slow-belief-default"), ["docs/results.md"]),
    "learn-realized": (lambda: learn_table("learn-realized"), ["docs/results.md"]),
    "learn-slow-realized": (lambda: learn_table("learn-slow-realized"), ["docs/results.md"]),
    **{
        name: (lambda name=name: first_table(learn_table(name)), ["docs/results.md"])
        for name in (
            "learn-realized-costs-validation-4",
            "learn-realized-costs-slow-validation-4",
            "learn-costs20bp-validation-4",
        )
    },
    "learn-validation": (lambda: learn_table("learn-validation"), ["docs/results.md"]),
    "learn-validation-labels": (lambda: learn_table("learn-validation-labels"), ["docs/results.md"]),
    "learn-slow": (lambda: learn_table("learn-slow"), ["docs/results.md"]),
    "learn-slow-two-cycles": (lambda: learn_table("learn-slow-two-cycles"), ["docs/results.md"]),
    "learn-belief": (lambda: learn_table("learn-belief"), ["docs/results.md"]),
    "learn-belief-validation": (lambda: learn_table("learn-belief-validation"), ["docs/results.md"]),
    "learn-compiled": (lambda: learn_table("learn-compiled"), ["docs/distributed.md"]),
    **{
        name: (lambda name=name: learn_table(name), ["docs/thinking.md"])
        for name in (
            "learn-unroll-validation",
            "learn-unroll-slow-validation",
            "learn-unroll-slow-validation-450",
            "learn-unroll-slow-validation-6000",
            "learn-one-cycle-slow-validation",
            "learn-last-bar",
            "learn-slow-last-bar",
            "learn-bar-validation",
            "learn-bar-global-validation",
            "learn-bar-slow-validation",
            "learn-slow-validation",
            "learn-gain-validation",
            "learn-gain-slow-validation",
            "learn-gain",
            "learn-slow-gain",
            "learn-gain-two-slow-validation",
            "learn-cycles-validation",
            "learn-cycles-slow-validation",
            "learn-halt-detached-validation",
            "learn-halt-detached-slow-validation",
            "learn-halt-detached",
            "learn-slow-halt-detached",
            "learn-halt-grad30-validation",
            "learn-halt-grad30-slow-validation",
            "learn-exploration-validation",
            "learn-exploration-slow-validation",
            "learn-exploration-validation-4",
            "learn-exploration-slow-validation-4",
            "learn-value-mlp-validation-4",
            "learn-value-mlp-slow-validation-4",
            "learn-value-validation-4",
            "learn-value-played-validation-4",
            "learn-value-played-slow-validation-4",
            "learn-with-value-validation-4",
            "learn-with-value-slow-validation-4",
            "learn-with-value",
            "learn-with-value-slow",
            "learn-evidence-validation-4",
            "learn-evidence-slow-validation-4",
            "learn-evidence-quiet-validation-4",
            "learn-warm-validation-4",
            "learn-warm-slow-validation-4",
            "learn-later-validation-4",
            "learn-later-slow-validation-4",
            "learn-evidence-later-validation-4",
            "learn-evidence-later-slow-validation-4",
            "learn-unrolled-validation-4",
            "learn-unrolled-slow-validation-4",
            "learn-unrolled",
            "learn-slow-unrolled",
        )
    },
    **{
        name: (lambda name=name: first_table(learn_table(name)), ["docs/thinking.md"])
        for name in (
            "learn-value-mlp",
            "learn-value-mlp-slow",
            "learn-steps1850-validation-4",
            "learn-steps1850-slow-validation-4",
            "learn-steps2500-validation-4",
            "learn-steps2500-slow-validation-4",
            "learn-steps3000-validation-4",
            "learn-steps3000-slow-validation-4",
            "learn-one-layer-validation-4",
            "learn-one-layer-slow-validation-4",
            "learn-belief-realized-validation-4",
            "learn-belief-realized-slow-validation-4",
            "learn-hmm-validation-4",
            "learn-hmm-slow-validation-4",
            "learn-step-cost05-validation-4",
            "learn-step-cost05-slow-validation-4",
            "learn-belief64-validation-4",
            "learn-belief64-slow-validation-4",
            "learn-belief64",
            "learn-slow-belief64",
            "learn-walk8-validation-4",
            "learn-walk8-slow-validation-4",
            "learn-mlp-walk8-validation-4",
            "learn-mlp-walk8-slow-validation-4",
        )
    },
    "labels": (labels_table, ["docs/results.md"]),
    "real": (real_table, ["docs/walkforward.md"]),
    "real-nasdaq-realized": (lambda: real_table("real-nasdaq-realized"), ["docs/results.md"]),
    "real-nasdaq-belief64": (lambda: real_table("real-nasdaq-belief64"), ["docs/thinking.md"]),
    "real-nasdaq-walk8": (lambda: real_table("real-nasdaq-walk8"), ["docs/thinking.md"]),
    **{name: (lambda name=name: real_table(name), ["docs/walkforward.md"]) for name in (
        "real-full", "real-priced", "real-gain", "real-one-cycle-gain", "real-gated", "real-nasdaq",
        "real-nasdaq-seeds", "real-nasdaq-proportional", "real-proportional", "real-realized", "real-belief-default",
        "real-belief-googl3", "real-value-default", "real-value-googl3"
    )},
    "default run over seeds": (default_run_over_seeds, ["README.md"]),
    "predict": (lambda: predict_table(), ["docs/policy.md"]),
    "predict-belief": (lambda: predict_table("predict-belief"), ["docs/policy.md"]),
}


@pytest.mark.parametrize(
    ("name", "page"), [(name, page) for name, (_, pages) in TABLES.items() for page in pages]
)
def test_bench_table_is_the_saved_benchmark_output(name, page):
    render, _ = TABLES[name]
    assert render() in read(page), f"{page} does not show the {name} table as its committed results render it"


def test_the_readme_headline_is_the_benchmarks_first_table():
    # The README shows the caption and first table of the benchmark; docs/results.md shows the whole output.
    full = learn_table(DEFAULT_RUN)
    headline = first_table(full)
    assert full.startswith(headline) and len(headline) < len(full)
    assert (
        headline.count("\n| ") == len({run["recipe"] for run in learn_runs(DEFAULT_RUN)}) + 1
    )  # header + a row each


# Lines that begin a bench table; wherever one appears, it must belong to a table checked on that page.
TABLE_STARTS = re.compile(
    r"^(\d+ seeds x \(|\| series \| recipe \| decisions \||\| label horizon \||\| seed \| held-out PnL \||"
    r"\| engine \| instruments \|)"
)


@pytest.mark.parametrize("path", PAGES, ids=page_name)
def test_no_page_shows_an_unchecked_copy_of_a_bench_table(path):
    page = page_name(path)
    checked = [render() for render, pages in TABLES.values() if page in pages]
    for line in path.read_text(encoding="utf-8").splitlines():
        if TABLE_STARTS.match(line):
            assert any(line in table.splitlines() for table in checked), (
                f"{page} shows a bench table that no test checks there ({line[:60]}...): add the page to TABLES"
            )


def test_the_default_run_printed_what_the_benchmark_saved_for_seed_0():
    # The README's CLI output is seed 0 of the default recipe, as the spread table says: the benchmark's run
    # of that seed on the same held-out split must hold the same figures.
    run = next(r for r in learn_runs(DEFAULT_RUN) if r["recipe"] == "default" and r["seed"] == 0)
    m = next(market for market in run["markets"] if market["market"] == "held-out")
    text = read("README.md")
    output = text[text.index("held-out test split:") :].split("```", 1)[0]

    def row(label: str, pnl: float) -> None:
        assert re.search(rf"^{re.escape(label)}\s+{re.escape(f'{pnl:+.3f}')}\s", output, flags=re.M), (
            label,
            pnl,
        )

    row(f"model (adaptive, {m['mean_steps']:.2f} steps)", m["pnl"])
    row(f"model (fixed {run['max_steps']} steps)", m["fixed_max_pnl"])
    row("regime oracle", m["regime_oracle_pnl"])
    row("random", m["random_pnl"])
    best_fixed = re.escape(f"{m['best_fixed_pnl']:+.3f}")
    assert re.search(rf"^best fixed \(\w+\)\s+{best_fixed}\s", output, flags=re.M)
    depth = ", ".join(f"{pnl:+.3f}" for pnl in m["pnl_by_fixed_steps"])
    assert f"pnl when every decision runs exactly 1..{run['max_steps']} steps: {depth}\n" in output
    assert f"model captures {m['capture']:.0%} of the regime oracle's PnL" in output


def test_the_real_series_wall_times_and_the_walkforward_cost_are_the_saved_ones():
    saved = json.loads((RESULTS / "real" / "real.json").read_text())
    first, second = (run["wall_s"] for run in saved["invocations"])
    page = read("docs/walkforward.md")
    assert f"Wall time {first:.0f} s for `googl` and `eurusd`" in page and f"and {second:.0f} s for `sp500`" in page
    speed = json.loads((RESULTS / "real" / "speed.json").read_text())
    single, equal, proportional = speed["seconds"].values()
    equal_ratio, proportional_ratio = speed["ratios"].values()

    def verdict(ratio: float) -> str:
        return "met" if ratio <= speed["bar"] else "**not met**"

    assert f"| one default training run | {single:.1f} s | |" in page
    assert (
        f"| 5-fold walk-forward (2 folds at a time, fold 2 cut 751 + 749 steps) | {equal:.1f} s | **{equal_ratio:.2f}x** "
        f"(bar 2.5x: {verdict(equal_ratio)}) |"
    ) in page
    assert (
        f"| 5-fold walk-forward, `--fold-steps proportional` | {proportional:.1f} s | **{proportional_ratio:.2f}x** "
        f"(bar 2.5x: {verdict(proportional_ratio)}) |"
    ) in page
