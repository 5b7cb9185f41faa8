"""ONNX export and trm_act.onnx.OnnxPolicy: equal to torch, runnable without torch; python -m trm_act.bench predict."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("onnxruntime")

from helpers import WINDOW, bars, python, tiny_runs
from helpers import tiny_run_config as tiny_config
from helpers import varied_halting as with_halting
from trm_act.envs import (
    STRATEGIES,
    build_replay,
    generate_synthetic_market,
)
from trm_act.envs.features import compute_features

from trm_act import Policy
from trm_act.export import export_onnx
from trm_act.onnx import OnnxPolicy
from trm_act.runtime import decisions_frame

PROBABILITIES = [f"p_{s}" for s in STRATEGIES]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained run of each carry (30 steps), with the default banded attention, post-norm and mean-pooled:
    the model these tests' absolute tolerances (1e-5) were set on. (Pre-norm, the default, carries larger values
    through the recursion: its halt logits reach ~35, where float32 rounding differs by ~3e-5.)"""
    return tiny_runs(tmp_path_factory, mixer="attention", attn_radius=2, norm="post", pool="mean")


def market(seed: int = 7, n_bars: int = 800) -> pd.DataFrame:
    return bars(n_bars, seed)


def varied_halting(policy: Policy) -> Policy:
    """The policy with a halt head that fires on some windows after one step and on others later (helpers)."""
    rng = np.random.default_rng(0)
    with_halting(policy.model, torch.from_numpy(rng.standard_normal((256, WINDOW, 10)).astype(np.float32)))
    return policy


def held_out(decisions: pd.DataFrame, run: str) -> pd.DataFrame:
    """The rows of ``decide("synthetic")`` on the run's held-out split (bars from the test boundary on)."""
    return decisions[decisions.index >= build_replay(tiny_config(run).env).boundary_time]


@pytest.mark.parametrize("halting", ["trained", "varied"])
@pytest.mark.parametrize("carry", ["fresh", "belief"])
def test_onnx_decisions_equal_torch_on_the_held_out_split(runs, tmp_path, carry, halting):
    policy = Policy.load(runs[carry])
    if halting == "varied":
        varied_halting(policy)
    onnx_policy = OnnxPolicy.load(export_onnx(policy, tmp_path / "onnx"), threads=1)
    ours = held_out(policy.decide("synthetic"), carry)
    theirs = held_out(onnx_policy.decide("synthetic"), carry)
    assert len(ours) > 100 and (ours.index == theirs.index).all()
    np.testing.assert_array_equal(theirs["action"].to_numpy(), ours["action"].to_numpy())
    np.testing.assert_array_equal(theirs["steps"].to_numpy(), ours["steps"].to_numpy())
    np.testing.assert_allclose(
        theirs["halt_logit"].to_numpy(), ours["halt_logit"].to_numpy(), rtol=0, atol=1e-5
    )
    if halting == "varied":
        assert ours["steps"].nunique() >= 2
    # The logits themselves, window by window (with each side's own belief in belief mode).
    frame = generate_synthetic_market(tiny_config(carry).env.synthetic).drop(columns="regime")
    feats = compute_features(*(frame[k].to_numpy() for k in ("open", "high", "low", "close", "volume")))
    bars = policy.decision_bars(len(frame))
    windows = np.stack([feats[t - WINDOW + 1 : t + 1] for t in bars])  # (N, W, F)
    if not policy.has_belief:
        a, b = policy.engine.run(windows, None), onnx_policy.engine.run(windows, None)
        np.testing.assert_array_equal(a.logits.argmax(1), b.logits.argmax(1))
        np.testing.assert_allclose(b.logits, a.logits, rtol=0, atol=1e-5)
        return
    belief_a = belief_b = policy.engine.initial_belief()[None]
    for w in windows:
        a, b = policy.engine.run(w[None], belief_a), onnx_policy.engine.run(w[None], belief_b)
        assert a.logits.argmax() == b.logits.argmax() and a.steps[0] == b.steps[0]
        np.testing.assert_allclose(b.logits, a.logits, rtol=0, atol=1e-5)
        np.testing.assert_allclose(b.belief, a.belief, rtol=0, atol=1e-5)
        belief_a, belief_b = a.belief, b.belief


def test_an_onnx_stream_decides_as_onnx_decide(runs, tmp_path):
    policy = varied_halting(Policy.load(runs["belief"]))
    onnx_policy = OnnxPolicy.load(export_onnx(policy, tmp_path / "onnx"), threads=1)
    frame = market()
    expected = onnx_policy.decide(frame)
    stream = onnx_policy.stream()
    got = decisions_frame(d for _, row in frame.iterrows() if (d := stream.update(row)) is not None)
    got.index = got.index.as_unit(expected.index.unit)
    pd.testing.assert_index_equal(got.index, expected.index)
    np.testing.assert_array_equal(
        got[["action", "steps"]].to_numpy(), expected[["action", "steps"]].to_numpy()
    )
    np.testing.assert_allclose(got[PROBABILITIES].to_numpy(), expected[PROBABILITIES].to_numpy(), atol=1e-6)


def test_the_onnx_runtime_runs_without_torch(runs, tmp_path):
    policy = Policy.load(runs["belief"])
    export_onnx(policy, tmp_path / "onnx")
    frame = market(n_bars=400)
    frame.to_csv(tmp_path / "bars.csv", index_label="Date")
    expected = policy.decide(tmp_path / "bars.csv")
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now raises ImportError\n"
        "from trm_act.onnx import OnnxPolicy\n"
        f"decisions = OnnxPolicy.load({str(tmp_path / 'onnx')!r}, threads=1).decide({str(tmp_path / 'bars.csv')!r})\n"
        "print(' '.join(map(str, decisions['action'])))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' and sys.modules[m] is not None))\n"
    )
    result = python("-c", code, cwd=tmp_path)  # a fresh interpreter, where torch cannot be imported
    assert result.returncode == 0, result.stderr
    actions, loaded = result.stdout.splitlines()
    assert actions == " ".join(map(str, expected["action"]))
    assert loaded == "[]"


def test_export_cli_writes_and_checks_the_graphs_and_refuses_bad_runs(runs, tmp_path, call_main):
    from trm_act.export import main

    out = tmp_path / "exported"
    result = call_main(main, "--run", str(runs["fresh"]), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "onnxruntime matches torch" in result.stdout
    assert {p.name for p in out.iterdir()} == {"encoder.onnx", "step.onnx", "policy.json"}
    result = call_main(main, "--run", str(tmp_path / "nowhere"), "--out", str(out))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    with pytest.raises(ValueError, match=r"no policy\.json") as exc:
        OnnxPolicy.load(tmp_path)
    assert "\n" not in str(exc.value)
    (out / "policy.json").write_text('{"format": "trm_act.onnx/0"}')
    with pytest.raises(ValueError, match=r"expected 'trm_act\.onnx/1'; export the run again"):
        OnnxPolicy.load(out)


def test_bench_predict_measures_every_engine_in_one_run(capsys):
    from trm_act.bench.__main__ import main

    assert main(["predict", "--bars", "3", "--instruments", "3"]) == 0
    out = capsys.readouterr().out
    for engine in ("torch eager", "torch compiled", "onnxruntime"):
        for instruments in (1, 3):
            assert f"| {engine} | {instruments} |" in out
        assert re.search(rf"{engine}: p99 of one streaming update \d+\.\d+ ms \(bar 2 ms\): (PASS|FAIL)", out)
    assert re.search(r"torch compiled: warm-up with the compile \d+\.\d s", out) and "load average" in out
