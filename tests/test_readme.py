"""Every ```python block of README.md runs as written, each in a fresh interpreter and directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_readme_has_python_blocks():
    # Guards the regex: a README rewrite that changes the fences must not turn this file into a no-op.
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_python_block_runs(index, tmp_path):
    # A fresh directory per block: blocks that write runs/ write there, never into the checkout.
    env = os.environ | {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"README python block {index} failed:\n{BLOCKS[index]}\n{result.stderr[-3000:]}"
    )


RESULTS = Path(__file__).resolve().parents[1] / "trm_act" / "bench" / "results"


@pytest.mark.parametrize("name", ["learn", "learn-validation", "learn-validation-labels", "learn-slow"])
def test_readme_learning_tables_are_the_saved_benchmark_output(name):
    # The README quotes `python -m trm_act.bench learn ... --out trm_act/bench/results/<name>`; the table it
    # shows must be what that run's learn.json renders to (`--from-json` prints the same).
    import json

    from trm_act.bench.learn import markdown, summarize

    runs = json.loads((RESULTS / name / "learn.json").read_text())["runs"]
    table = markdown(summarize(runs), runs)
    assert table in README.read_text(encoding="utf-8")


def test_readme_label_table_is_what_bench_labels_prints():
    # The README quotes `python -m trm_act.bench labels` (deterministic: the default synthetic market).
    from trm_act.bench.labels import HORIZONS, label_quality, markdown
    from trm_act.loss import LossConfig

    threshold = LossConfig().confidence_threshold
    table = markdown([label_quality(h, threshold) for h in HORIZONS], threshold)
    assert table in README.read_text(encoding="utf-8")
