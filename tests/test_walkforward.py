"""Walk-forward: fold layout, purging and embargo, no look-ahead, stitching, resume, and the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import bars, tiny_flags
from trm_act.callbacks import TensorBoardCallback
from trm_act.envs import build_replay

from trm_act import foldrun, stats, stitch, walkforward
from trm_act.baselines import best_fixed_actions
from trm_act.checkpoint import load_checkpoint
from trm_act.config import ExperimentConfig
from trm_act.folds import boundary_fraction, fold_env, plan_folds, write_fold_csv
from trm_act.walkforward import WalkForwardConfig, make_plan, walk_forward

# A tiny but complete recipe: small windows, a small model, a few optimizer steps.
TINY_FLAGS = tiny_flags(
    env__synthetic__n_bars=None, env__label_horizon=8, log_every=5, checkpoint_every=5, eval_every=0
)


def tiny_config(data: str | Path, steps: int = 15, **env: object) -> ExperimentConfig:
    base = ExperimentConfig()
    return ExperimentConfig(
        env=dataclasses.replace(
            base.env, data=str(data), window=16, horizon=4, label_horizon=8, episode_length=8, **env
        ),
        model=dataclasses.replace(base.model, d_model=16, n_heads=2, max_steps=3, n_latent=1),
        loss=base.loss,
        train=dataclasses.replace(
            base.train,
            steps=steps,
            batch_size=8,
            warmup_steps=2,
            checkpoint_every=5,
            log_every=5,
            eval_every=5,  # mid-run evaluations read the test split: they must not change the weights
            progress=False,
        ),
    )


def market_frame(n_bars: int = 3000, seed: int = 0) -> pd.DataFrame:
    return bars(n_bars, seed)  # indexed by "timestamp"


def rewrite_from(frame: pd.DataFrame, row: int) -> pd.DataFrame:
    """Every bar from ``row`` on replaced by other valid bars (the later bars reversed and scaled by 1.3)."""
    out = frame.copy()
    later = frame.iloc[row:].to_numpy()[::-1].copy()
    later[:, :4] *= 1.3
    out.iloc[row:] = later
    return out


@pytest.fixture(scope="module")
def market_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("market") / "market.csv"
    market_frame().to_csv(path)
    return path


@pytest.fixture(scope="module")
def universe_dir(tmp_path_factory) -> Path:
    """Two instruments on one calendar with different histories (BBB lists later and ends earlier)."""
    folder = tmp_path_factory.mktemp("universe")
    market_frame(2400, seed=1).to_csv(folder / "AAA.csv")
    market_frame(2000, seed=2).iloc[300:].to_csv(folder / "BBB.csv")
    return folder


@pytest.fixture(scope="module")
def wf_run(tmp_path_factory, market_csv) -> Path:
    """A finished 2-fold walk-forward of the tiny recipe (folds one after the other, in this process)."""
    root = tmp_path_factory.mktemp("wf") / "run"
    walk_forward(tiny_config(market_csv), WalkForwardConfig(folds=2), root, jobs=1, log=lambda _: None)
    return root


# ---------------------------------------------------------------------------------------------- fold layout


def test_folds_tile_the_calendar_after_the_first_training_span():
    spans = plan_folds(1000, 4)
    assert [(s.test_start, s.test_stop) for s in spans] == [(200, 400), (400, 600), (600, 800), (800, 1000)]
    assert all(s.train_first == 0 and s.train_cut == s.test_start for s in spans)
    rolling = plan_folds(1000, 4, "rolling", embargo=10)
    assert [(s.train_first, s.train_cut) for s in rolling] == [(0, 190), (200, 390), (400, 590), (600, 790)]
    assert [s.test_start for s in plan_folds(1000, 4, train_bars=500)] == [500, 625, 750, 875]


def test_bad_fold_settings_get_one_line_errors_naming_the_flag_and_the_fix(tmp_path):
    with pytest.raises(
        ValueError, match=r"^--folds 1: a walk-forward needs at least 2 folds .* use --folds 2"
    ):
        plan_folds(1000, 1)
    with pytest.raises(ValueError, match=r"^--folds 1: .*use --folds 2 or more"):
        WalkForwardConfig(folds=1)
    with pytest.raises(
        ValueError, match=r"^--embargo 200: larger than a test fold \(200 bars .*use --embargo < 200"
    ):
        plan_folds(1000, 4, embargo=200)
    with pytest.raises(ValueError, match=r"^--scheme sliding: expected one of expanding, rolling"):
        plan_folds(1000, 4, "sliding")
    short = tmp_path / "short.csv"
    market_frame(300).to_csv(short)
    with pytest.raises(
        ValueError, match=r"^--folds 12: .*too few bars for 12 folds.*use fewer --folds.*at most --folds"
    ):
        make_plan(tiny_config(short), WalkForwardConfig(folds=12))
    for message in (str(e) for e in _errors(short)):
        assert "\n" not in message


def test_proportional_fold_steps_give_every_fold_as_many_passes_as_the_largest(tmp_path, market_csv):
    config = tiny_config(market_csv, steps=40)
    equal = make_plan(config, WalkForwardConfig(folds=3))
    proportional = make_plan(config, WalkForwardConfig(folds=3, fold_steps="proportional"))
    decisions = [s.train_decisions for s in proportional.slices]
    assert decisions == sorted(decisions) and decisions[0] < decisions[-1]  # expanding: the data grows
    jobs = [proportional.job(tmp_path, k, False) for k in range(3)]
    steps = [job.config.train.steps for job in jobs]
    assert steps[-1] == 40 and steps[0] < steps[-1]
    for job, n in zip(jobs, decisions, strict=True):
        assert job.config.train.steps == round(40 * n / decisions[-1])  # passes = steps x batch / decisions
        assert job.info["steps"] == job.config.train.steps  # fold.json and plan.json say so
    assert [equal.job(tmp_path, k, False).config.train.steps for k in range(3)] == [40, 40, 40]
    with pytest.raises(ValueError, match=r"^--fold-steps sometimes: expected one of equal, proportional"):
        WalkForwardConfig(fold_steps="sometimes")


def test_a_plan_saved_before_fold_steps_existed_resumes_as_equal_steps(tmp_path, wf_run, market_csv):
    root = tmp_path / "old"
    shutil.copytree(wf_run, root)
    plan = json.loads((root / "plan.json").read_text())
    del plan["walkforward"]["fold_steps"]
    (root / "plan.json").write_text(json.dumps(plan))
    walk_forward(tiny_config(market_csv), WalkForwardConfig(folds=2), root, stitch_only=True, log=lambda _: None)
    with pytest.raises(ValueError, match=r"walkforward.fold_steps \('equal' then, 'proportional' now\)"):
        walk_forward(
            tiny_config(market_csv), WalkForwardConfig(folds=2, fold_steps="proportional"), root, stitch_only=True
        )


def test_a_plan_saved_before_label_costs_existed_continues_with_its_labels(tmp_path, wf_run, market_csv):
    # Its folds trained on labels charging one round trip per label horizon: --resume reads the plan through
    # ExperimentConfig.from_saved, and a config with today's default labels is refused.
    root = tmp_path / "old"
    shutil.copytree(wf_run, root)
    plan = json.loads((root / "plan.json").read_text())
    del plan["config"]["env"]["label_costs"]
    (root / "plan.json").write_text(json.dumps(plan))
    resumed = ExperimentConfig.from_saved(plan["config"])
    assert resumed.env.label_costs == "single"
    walk_forward(resumed, WalkForwardConfig(folds=2), root, stitch_only=True, log=lambda _: None)
    with pytest.raises(ValueError, match=r"config.env.label_costs \('single' then, 'realized' now\)"):
        walk_forward(tiny_config(market_csv), WalkForwardConfig(folds=2), root, stitch_only=True)


def _errors(short: Path) -> list[ValueError]:
    out = []
    for settings in (WalkForwardConfig(folds=12), WalkForwardConfig(folds=2, embargo=140)):
        try:
            make_plan(tiny_config(short), settings)
        except ValueError as exc:
            out.append(exc)
    assert len(out) == 2
    return out


def test_boundary_fraction_puts_the_trainer_boundary_exactly():
    for n in range(2, 400):
        for before in range(1, n):
            assert math.floor((1.0 - boundary_fraction(n, before)) * n) == before


# ---------------------------------------------------------------------------------------------- purging, embargo


def _fold_replays(plan, k: int, folder: Path, **env: object):
    """(training replay at the training stride, scoring replay) of fold k, built from its data file."""
    s = plan.slices[k]
    path = write_fold_csv(plan.market, s, folder / f"fold-{k}.csv")
    train_env = fold_env(plan.config.env, path, s.train_fraction, stride=plan.config.train_stride, **env)
    return build_replay(train_env), build_replay(fold_env(plan.config.env, path, s.test_fraction)), s


def _global_rows(replay, s, indices: np.ndarray) -> tuple[list[str], np.ndarray]:
    symbols = list(s.ranges)
    sym = replay.symbol_index[indices]
    rows = (
        np.array([s.ranges[symbols[i]][0] for i in sym])
        + replay.decision_bars[indices]
        - replay.bar_offsets[sym]
    )
    return [symbols[i] for i in sym], rows


@pytest.mark.parametrize("scheme,embargo", [("expanding", 0), ("rolling", 7)])
@pytest.mark.parametrize("universe", [False, True])
def test_no_training_decision_reads_a_bar_of_the_embargo_or_the_test_fold(
    tmp_path, market_csv, universe_dir, scheme, embargo, universe
):
    config = tiny_config(universe_dir if universe else market_csv)
    plan = make_plan(config, WalkForwardConfig(folds=3, scheme=scheme, embargo=embargo))
    reach = max(config.env.horizon, config.env.effective_label_horizon)
    for k in range(3):
        train_replay, _, s = _fold_replays(plan, k, tmp_path)
        train = train_replay.split_indices("train")
        assert len(train) == s.train_decisions
        symbols, rows = _global_rows(train_replay, s, train)
        cut = plan.calendar[s.span.train_cut]
        test_start = plan.calendar[s.span.test_start]
        frames = plan.market.frames
        last_read = np.array(
            [frames[sym].index[row + reach].value for sym, row in zip(symbols, rows, strict=True)]
        )
        assert (last_read < cut).all()  # trade and label end before the embargo (and the test fold)
        assert s.train_end == plan.calendar[s.span.train_cut - 1]
        # Purged: decisions before the test fold whose window reaches into it, counted independently.
        everything = np.arange(train_replay.n_decisions)
        all_symbols, all_rows = _global_rows(train_replay, s, everything)
        at = np.array([frames[sym].index[row].value for sym, row in zip(all_symbols, all_rows, strict=True)])
        ends = np.array(
            [
                frames[sym].index[min(row + reach, len(frames[sym]) - 1)].value
                for sym, row in zip(all_symbols, all_rows, strict=True)
            ]
        )
        assert s.purged == int(((at < test_start) & (ends >= test_start)).sum())
        assert s.embargoed == int(((ends < test_start) & (ends >= cut)).sum())
        assert (embargo == 0) == (s.embargoed == 0)


@pytest.mark.parametrize("universe", [False, True])
def test_stitched_decisions_are_the_full_series_decisions_of_the_test_spans(
    tmp_path, market_csv, universe_dir, universe
):
    """Fold files start on the stride grid, so the folds' test decisions are exactly the whole series'."""
    config = tiny_config(universe_dir if universe else market_csv, stride=5)
    plan = make_plan(config, WalkForwardConfig(folds=3, scheme="rolling", embargo=9))
    stitched = []
    for k in range(3):
        _, score_replay, s = _fold_replays(plan, k, tmp_path)
        symbols, rows = _global_rows(score_replay, s, score_replay.split_indices("test"))
        stitched += list(zip(symbols, rows.tolist(), strict=True))
    full = build_replay(config.env)
    first_test = plan.calendar[plan.slices[0].span.test_start]
    expected = []
    for k, symbol in enumerate(full.symbols):
        a, b = full.decision_offsets[k], full.decision_offsets[k + 1]
        rows = full.decision_bars[a:b] - full.bar_offsets[k]
        times = plan.market.frames[symbol if universe else "market"].index[rows].as_unit("ns").asi8
        expected += [
            (symbol if universe else "market", int(r))
            for r, t in zip(rows, times, strict=True)
            if t >= first_test
        ]
    assert sorted(stitched) == sorted(expected) and len(set(stitched)) == len(stitched)


@pytest.mark.parametrize("label_source", ["hindsight", "hmm"])
def test_rewriting_the_test_fold_changes_nothing_its_training_reads(tmp_path, label_source):
    frame = market_frame()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    frame.to_csv(tmp_path / "a.csv")
    env = {"label_source": label_source, "label_states": 4}
    plan_a = make_plan(tiny_config(tmp_path / "a.csv", **env), WalkForwardConfig(folds=2))
    row = int(plan_a.slices[1].span.test_start)  # one instrument: calendar index = row
    rewrite_from(frame, row).to_csv(tmp_path / "b.csv")
    plan_b = make_plan(tiny_config(tmp_path / "b.csv", **env), WalkForwardConfig(folds=2))
    for k in (0, 1):
        train_a, score_a, _ = _fold_replays(plan_a, k, tmp_path / "a", label_source=label_source)
        train_b, score_b, _ = _fold_replays(plan_b, k, tmp_path / "b", label_source=label_source)
        idx = train_a.split_indices("train")
        assert np.array_equal(idx, train_b.split_indices("train"))
        for name in ("labels", "label_pnl", "strategy_pnl"):
            assert np.array_equal(getattr(train_a, name)[idx], getattr(train_b, name)[idx]), name
        assert np.array_equal(train_a.observations(idx), train_b.observations(idx))
        assert np.array_equal(best_fixed_actions(train_a, "train"), best_fixed_actions(train_b, "train"))
        if k == 0:  # the earlier fold's out-of-sample observations read no bar of fold 1's test span
            test = score_a.split_indices("test")
            assert np.array_equal(score_a.observations(test), score_b.observations(test))
    assert not np.array_equal(train_a.close, train_b.close)  # the rewrite did reach fold 1's file


# ---------------------------------------------------------------------------------------------- training


def test_rewriting_a_test_fold_leaves_its_weights_and_earlier_decisions_bit_identical(tmp_path, wf_run):
    frame = pd.read_csv(json.loads((wf_run / "plan.json").read_text())["data"], index_col=0, parse_dates=True)
    plan = json.loads((wf_run / "plan.json").read_text())
    row = int(np.searchsorted(frame.index, pd.Timestamp(plan["folds"][1]["test_start"])))
    rewrite_from(frame, row).to_csv(tmp_path / "rewritten.csv")
    other = tmp_path / "run"
    walk_forward(
        tiny_config(tmp_path / "rewritten.csv"), WalkForwardConfig(folds=2), other, jobs=1, log=lambda _: None
    )

    a, b = (load_checkpoint(root / "fold-1" / "checkpoint.pt") for root in (wf_run, other))
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
    _, oos_a = foldrun.load_record(wf_run / "fold-0")
    _, oos_b = foldrun.load_record(other / "fold-0")
    for name in ("actions", "steps", "depth_actions", "fixed_actions", "best_fixed", "random", "row"):
        assert np.array_equal(oos_a[name], oos_b[name]), name
    settled = oos_a["row"] + 4 < row  # trades that end before fold 1's test span
    assert settled.sum() > 100 and np.array_equal(oos_a["pnl"][settled], oos_b["pnl"][settled])
    _, oos_a1 = foldrun.load_record(wf_run / "fold-1")
    _, oos_b1 = foldrun.load_record(other / "fold-1")
    assert not np.array_equal(oos_a1["pnl"], oos_b1["pnl"])  # fold 1's test bars did change


def test_walkforward_json_holds_the_folds_and_the_stitched_figures(wf_run):
    result = json.loads((wf_run / "walkforward.json").read_text())
    assert result["complete"] and result["missing_folds"] == [] and len(result["folds"]) == 2
    for fold in result["folds"]:
        assert {"train_start", "train_end", "test_start", "test_end", "purged", "embargoed"} <= set(fold)
        assert (
            pd.Timestamp(fold["train_end"])
            < pd.Timestamp(fold["test_start"])
            <= pd.Timestamp(fold["test_end"])
        )
        for name in ("model", "gated", "long", "best_fixed", "random"):
            assert {"pnl", "sharpe", "sortino", "max_drawdown", "turnover", "exposure"} <= set(fold[name])
        assert set(fold["fixed"]) == {
            "flat",
            "long",
            "short",
            "momentum",
            "mean_reversion",
            "ma_trend",
            "breakout",
            "vol_target",
        }
    stitched = result["stitched"]
    records = [foldrun.load_record(wf_run / f"fold-{k}") for k in (0, 1)]
    rows = [np.arange(len(o["actions"])) for _, o in records]
    model = np.concatenate([o["pnl"][r, o["actions"]] for (_, o), r in zip(records, rows, strict=True)])
    long = np.concatenate([o["pnl"][:, 1] for _, o in records])
    assert stitched["model"]["pnl"] == pytest.approx(model.sum())
    assert stitched["model"]["pnl"] == pytest.approx(sum(f["model"]["pnl"] for f in result["folds"]))
    assert stitched["long"]["exposure"] == 1.0 and stitched["flat"]["exposure"] == 0.0
    assert stitched["long"]["turnover"] == pytest.approx(2 / 4)  # enter and exit each 4-bar trade
    ci = stitched["model_minus_long"]
    assert (
        ci["total"] == pytest.approx((model - long).sum())
        and ci["total_ci_low"] < ci["total"] < ci["total_ci_high"]
    )
    assert set(stitched["model_minus_best_fixed"]) >= {"ci_low", "ci_high"}
    skew, kurtosis = stats.moments(model)
    psr = stats.probabilistic_sharpe_ratio(stats.sharpe_ratio(model), len(model), skew, kurtosis)
    assert stitched["psr"]["value"] == pytest.approx(psr)
    dsr = stitched["dsr"]
    assert dsr["n_trials"] == 2 and "2 fold(s) x 1 seed" in dsr["n_trials_source"]
    sharpes = [f["model"]["per_decision_sharpe"] for f in result["folds"]]
    assert dsr["sharpe_variance"] == pytest.approx(np.var(sharpes, ddof=1))
    assert dsr["value"] <= stitched["psr"]["value"]
    html = (wf_run / "report.html").read_text()
    assert "data:image/png;base64," in html and "Methods" in html and "model &minus; long" in html
    assert "gated model &minus; best fixed" in html and "gated plays" in html
    assert {p.name for p in (wf_run / "figures").iterdir()} == {
        "equity.png",
        "drawdown.png",
        "folds.png",
        "steps.png",
        "depth.png",
    }
    assert list((wf_run / "stitched").glob("events.out.tfevents.*"))


def test_a_stopped_fold_resumes_from_its_checkpoint_exactly(tmp_path, market_csv, wf_run, monkeypatch):
    class StopAtFive(TensorBoardCallback):
        def on_step_end(self, step, logs):
            super().on_step_end(step, logs)
            return step < 5

    root = tmp_path / "run"
    monkeypatch.setattr(foldrun, "TensorBoardCallback", StopAtFive)
    with pytest.raises(walkforward.WalkForwardStopped):
        walk_forward(tiny_config(market_csv), WalkForwardConfig(folds=2), root, jobs=1, log=lambda _: None)
    assert not foldrun.is_finished(root / "fold-0") and (root / "fold-0" / "checkpoint.pt").is_file()
    assert not (root / "fold-1").exists()  # after a stop no further fold starts
    monkeypatch.undo()
    walk_forward(tiny_config(market_csv), WalkForwardConfig(folds=2), root, jobs=1, log=lambda _: None)
    for k, resumed in ((0, 5), (1, None)):
        info, oos = foldrun.load_record(root / f"fold-{k}")
        assert info["resumed_from_step"] == resumed and info["step"] == 15
        _, expected = foldrun.load_record(wf_run / f"fold-{k}")
        assert np.array_equal(oos["actions"], expected["actions"])  # as if never stopped


@pytest.mark.slow
def test_a_fold_cut_across_two_processes_scores_as_if_trained_whole(tmp_path, market_csv):
    settings = WalkForwardConfig(folds=3)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    walk_forward(tiny_config(market_csv), settings, whole, jobs=1, log=lambda _: None)
    logs: list[str] = []
    walk_forward(tiny_config(market_csv), settings, cut, jobs=2, log=logs.append)
    # 3 folds of 15 steps on 2 cores: fold 1 trains 7 steps first on one, pauses, and ends on the other
    assert any("fold 1 cut at a checkpoint" in line for line in logs), logs
    assert "fold 1: paused at step 7; it finishes on the next free core" in logs
    for k in range(3):
        info, oos = foldrun.load_record(cut / f"fold-{k}")
        assert info["resumed_from_step"] == (7 if k == 1 else None) and info["step"] == 15
        assert info["cut_at"] == ([7] if k == 1 else []) and info["seconds"] > 0
        _, expected = foldrun.load_record(whole / f"fold-{k}")
        for name, values in expected.items():
            assert np.array_equal(oos[name], values), (k, name)
    a = json.loads((whole / "walkforward.json").read_text())["stitched"]
    b = json.loads((cut / "walkforward.json").read_text())["stitched"]
    assert a == b


def test_resume_stitches_what_exists_and_scores_a_trained_fold_without_training(tmp_path, market_csv, wf_run):
    root = tmp_path / "copy"
    shutil.copytree(wf_run, root)
    (root / "fold-1" / "fold.json").unlink()
    (root / "fold-1" / "oos.npz").unlink()
    config, settings = tiny_config(market_csv), WalkForwardConfig(folds=2)
    partial = walk_forward(config, settings, root, stitch_only=True)
    assert partial["missing_folds"] == [1] and not partial["complete"] and len(partial["folds"]) == 1
    assert "Incomplete" in (root / "report.html").read_text()
    checkpoint = root / "fold-1" / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    logs: list[str] = []
    full = walk_forward(config, settings, root, jobs=1, log=logs.append)
    assert full["complete"] and checkpoint.stat().st_mtime_ns == before  # scored, not trained again
    assert "fold 1: trained to step 15; scoring it" in logs
    _, oos = foldrun.load_record(root / "fold-1")
    _, expected = foldrun.load_record(wf_run / "fold-1")
    assert np.array_equal(oos["actions"], expected["actions"])


@pytest.mark.slow
def test_parallel_resume_scores_folds_trained_to_the_end_without_training(tmp_path, market_csv, wf_run):
    root = tmp_path / "copy"
    shutil.copytree(wf_run, root)
    for k in (0, 1):  # stopped after their last step, before scoring: nothing left to train
        (root / f"fold-{k}" / "fold.json").unlink()
        (root / f"fold-{k}" / "oos.npz").unlink()
    before = {k: (root / f"fold-{k}" / "checkpoint.pt").stat().st_mtime_ns for k in (0, 1)}
    full = walk_forward(tiny_config(market_csv), WalkForwardConfig(folds=2), root, jobs=2, log=lambda _: None)
    assert full["complete"]
    for k in (0, 1):
        assert (root / f"fold-{k}" / "checkpoint.pt").stat().st_mtime_ns == before[k]  # scored, not trained
        _, oos = foldrun.load_record(root / f"fold-{k}")
        _, expected = foldrun.load_record(wf_run / f"fold-{k}")
        assert np.array_equal(oos["actions"], expected["actions"])


def test_a_walkforward_directory_is_continued_only_with_its_settings_and_data(tmp_path, market_csv, wf_run):
    with pytest.raises(
        ValueError, match=r"other settings: walkforward.folds \(2 then, 3 now\); continue it with --resume"
    ):
        walk_forward(tiny_config(market_csv), WalkForwardConfig(folds=3), wf_run, stitch_only=True)
    with pytest.raises(ValueError, match=r"other settings: config.train.lr"):
        config = tiny_config(market_csv)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=0.5))
        walk_forward(config, WalkForwardConfig(folds=2), wf_run, stitch_only=True)
    changed = tmp_path / "market.csv"
    rewrite_from(pd.read_csv(market_csv, index_col=0, parse_dates=True), 2500).to_csv(changed)
    root = tmp_path / "copy"
    shutil.copytree(wf_run, root)
    plan = json.loads((root / "plan.json").read_text())
    plan["config"]["env"]["data"] = plan["data"] = str(changed)
    (root / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="the data changed since this walk-forward started"):
        walk_forward(tiny_config(changed), WalkForwardConfig(folds=2), root, stitch_only=True)


def test_a_universe_walks_forward_with_one_calendar(tmp_path, universe_dir):
    result = walk_forward(
        tiny_config(universe_dir, steps=10),
        WalkForwardConfig(folds=2),
        tmp_path / "run",
        jobs=1,
        log=lambda _: None,
    )
    assert result["complete"]
    assert "symbol" in pd.read_csv(tmp_path / "run" / "data" / "fold-0.csv", nrows=1).columns
    for k in (0, 1):
        info, oos = foldrun.load_record(tmp_path / "run" / f"fold-{k}")
        assert np.all(np.diff(oos["time"]) >= 0)  # instruments pooled in time order
        assert set(info["best_fixed_strategy"]) <= {"AAA", "BBB"}
    assert set(foldrun.load_record(tmp_path / "run" / "fold-0")[1]["symbol"]) == {"AAA", "BBB"}


# ---------------------------------------------------------------------------------------------- command line


@pytest.fixture
def run_cli(call_main, tmp_path):
    """``python -m trm_act.walkforward <args>`` in ``tmp_path``, run in process (its folds in their own)."""
    return lambda *args: call_main(walkforward.main, *args, cwd=tmp_path)


@pytest.mark.slow
def test_cli_end_to_end_in_parallel_processes_then_resume(run_cli, tmp_path, market_csv):
    result = run_cli(
        "--data",
        str(market_csv),
        "--folds",
        "2",
        *TINY_FLAGS,
        "--steps",
        "20",
        "--logdir",
        "runs",
        "--run-name",
        "cli",
    )
    assert result.returncode == 0, result.stderr
    assert "training folds 0, 1 (2 at a time, 20 steps each)" in result.stderr
    assert "model - long:" in result.stdout and "PSR" in result.stdout and "DSR" in result.stdout
    root = tmp_path / "runs" / "cli"
    saved = json.loads((root / "walkforward.json").read_text())
    assert saved["complete"] and all((root / f"fold-{k}" / "metrics.json").is_file() for k in (0, 1))
    config = json.loads((root / "fold-0" / "config.json").read_text())
    assert config["env"]["data"] == str((root / "data" / "fold-0.csv").resolve())

    again = run_cli("--resume", "runs/cli")
    assert again.returncode == 0, again.stderr
    assert "training" not in again.stderr  # nothing left to train: stitched again
    assert json.loads((root / "walkforward.json").read_text())["stitched"] == saved["stitched"]

    refused = run_cli("--resume", "runs/cli", "--steps", "5")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert (
        refused.stderr.startswith("error: --resume continues the saved walk-forward")
        and "drop --steps" in refused.stderr
    )


def test_cli_mistakes_are_one_line_errors(run_cli, market_csv):
    result = run_cli("--data", str(market_csv), "--folds", "1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --folds 1: a walk-forward needs at least 2 folds (one train/test split is what python -m "
        "trm_act.train does); use --folds 2 or more"
    ]


def test_cli_error_lines_name_the_flag(tmp_path, market_csv, capsys):
    for argv, start in (
        (["--embargo", "1000"], "error: --embargo 1000: larger than a test fold"),
        (["--folds", "abc"], "error: argument --folds: invalid int value: 'abc'"),
        (["--env.test-fraction", "0.3"], "error: --env.test-fraction: a walk-forward sets each fold's split"),
        (["--scheme", "sliding"], "error: argument --scheme: invalid choice: 'sliding'"),
        (["--folds", "400"], "error: --folds 400: "),
        (["--resume", str(tmp_path / "nothing")], "error: --resume "),
        (["--fold", "7", "--run-name", "x"], "error: --fold 7: the walk-forward has folds 0..4"),
    ):
        assert (
            walkforward.main(["--data", str(market_csv), *TINY_FLAGS, "--logdir", str(tmp_path), *argv]) == 2
        )
        err = capsys.readouterr().err.splitlines()
        assert err[-1].startswith(start), (argv, err)
    assert not (tmp_path / "x").exists()  # a refused --fold leaves nothing that would block the corrected retry
    (tmp_path / "afile").write_text("")
    assert walkforward.main(["--data", str(market_csv), *TINY_FLAGS, "--logdir", str(tmp_path / "afile")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: [Errno 20] Not a directory: ") and err[0].endswith(
        "; finished folds and checkpoints are kept."
    ), err


def test_cli_fold_alone_then_stitch_only_names_the_missing_fold(tmp_path, market_csv, capsys):
    argv = [
        "--data",
        str(market_csv),
        "--folds",
        "2",
        *TINY_FLAGS,
        "--steps",
        "10",
        "--jobs",
        "1",
        "--logdir",
        str(tmp_path),
        "--run-name",
        "array",
    ]
    assert walkforward.main([*argv, "--fold", "1"]) == 0
    assert "fold 1 finished" in capsys.readouterr().err
    root = tmp_path / "array"
    assert foldrun.is_finished(root / "fold-1") and not (root / "fold-0").exists()
    assert walkforward.main(["--resume", str(root), "--stitch-only"]) == 0
    out = capsys.readouterr().out
    assert "missing folds 0" in out
    assert json.loads((root / "walkforward.json").read_text())["missing_folds"] == [0]


def test_without_matplotlib_the_tear_sheet_draws_the_equity_curves_as_svg(tmp_path, wf_run, monkeypatch):
    from trm_act import tearsheet

    root = tmp_path / "copy"
    shutil.copytree(wf_run, root)
    shutil.rmtree(root / "figures")
    monkeypatch.setattr(tearsheet, "_matplotlib_figure", lambda: None)
    walkforward.stitch_root(root, json.loads((root / "plan.json").read_text()))
    html = (root / "report.html").read_text()
    assert "<svg" in html and "<polyline" in html and "matplotlib is not installed" in html
    assert "data:image/png" not in html and not (root / "figures").exists()


# ---------------------------------------------------------------------------------------------- gated model


def edge_fold(edges: list[float], symbols: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A fold as the gate reads it: the model's PnL minus best fixed's per decision, and each decision's instrument."""
    return np.array(edges), np.array(symbols or ["X"] * len(edges))


def test_the_gate_plays_the_model_only_after_its_settled_record_beats_best_fixed():
    assert stitch.gate([edge_fold([1.0, -1.0]), edge_fold([1.0])], open_decisions=0)[1] == (False, 0.0)  # a tie
    folds = [edge_fold([1.0, -3.0]), edge_fold([2.0, 2.0]), edge_fold([0.5, 9.0]), edge_fold([1.0])]
    # nothing left open: fold 0 has no record; then the leads are -2, +2, +11.5
    assert stitch.gate(folds, open_decisions=0) == [(False, 0.0), (False, -2.0), (True, 2.0), (True, 11.5)]
    # the last decision of each fold may still be open when the next starts: -3, 9 never count
    assert stitch.gate(folds, open_decisions=1) == [(False, 0.0), (True, 1.0), (True, 3.0), (True, 3.5)]


def test_the_gate_leaves_out_each_instruments_open_decisions():
    fold = edge_fold([1.0, 1.0, 1.0, -5.0, -5.0], symbols=["A", "B", "A", "A", "B"])
    symbols = fold[1]
    assert stitch.settled_mask(symbols, 1).tolist() == [True, True, True, False, False]
    assert stitch.settled_mask(symbols, 2).tolist() == [True, False, False, False, False]
    assert not stitch.settled_mask(symbols, 3).any()  # an instrument with fewer decisions: none counts
    assert stitch.settled_mask(symbols, 0).all()
    assert stitch.gate([fold, edge_fold([1.0])], open_decisions=1)[1] == (True, 3.0)


def test_the_gate_of_a_fold_reads_nothing_from_that_fold_or_later():
    rng = np.random.default_rng(0)
    folds = [edge_fold(rng.normal(size=6).tolist()) for _ in range(5)]
    plays = stitch.gate(folds, open_decisions=1)
    for k in range(5):
        rewritten = folds[:k] + [edge_fold(rng.normal(3.0, size=6).tolist()) for _ in range(5 - k)]
        assert stitch.gate(rewritten, open_decisions=1)[: k + 1] == plays[: k + 1]


@pytest.mark.parametrize(("horizon", "fold_1_plays"), [(4, "model"), (8, "best_fixed")])
def test_stitch_leaves_each_folds_open_trades_out_of_the_gates_record(wf_run, horizon, fold_1_plays):
    # fold 0's model ties best fixed except on its second-to-last decision, where it earns more: with trades of
    # 4 bars every 4 only the last decision may be open when fold 1 starts, with 8-bar trades the last two are
    plan = json.loads((wf_run / "plan.json").read_text()) | {"horizon": horizon}
    records = {k: foldrun.load_record(wf_run / f"fold-{k}") for k in (0, 1)}
    info, arrays = records[0]
    actions = arrays["best_fixed"].copy()
    rows = np.arange(len(actions))
    edge = arrays["pnl"].max(axis=1) - arrays["pnl"][rows, actions]  # (N,)
    assert plan["stride"] == 4 and edge[-2] > 0
    actions[-2] = arrays["pnl"][-2].argmax()
    records[0] = (info, arrays | {"actions": actions})
    result, _ = stitch.stitch(plan, records, resamples=200)
    assert [f["gated"]["plays"] for f in result["folds"]] == ["best_fixed", fold_1_plays]
    lead = result["folds"][1]["gated"]["model_lead_before"]
    assert lead == (pytest.approx(edge[-2]) if fold_1_plays == "model" else 0.0)


@pytest.mark.parametrize("model_in_fold_0", ["oracle", "worst"])
def test_the_stitched_gated_model_plays_best_fixed_until_the_model_has_earned_more(wf_run, model_in_fold_0):
    plan = json.loads((wf_run / "plan.json").read_text())
    records = {k: foldrun.load_record(wf_run / f"fold-{k}") for k in (0, 1)}
    info, arrays = records[0]
    pick = np.argmax if model_in_fold_0 == "oracle" else np.argmin
    records[0] = (info, arrays | {"actions": pick(arrays["pnl"], axis=1)})
    result, curves = stitch.stitch(plan, records, resamples=200)
    policies = [stitch.policy_arrays(records[k][1]) for k in (0, 1)]
    fold_1 = "model" if model_in_fold_0 == "oracle" else "best_fixed"
    assert [f["gated"]["plays"] for f in result["folds"]] == ["best_fixed", fold_1]
    lead = result["folds"][1]["gated"]["model_lead_before"]
    assert (lead > 0) == (model_in_fold_0 == "oracle")
    expected = np.concatenate([policies[0]["best_fixed"][0], policies[1][fold_1][0]])
    np.testing.assert_array_equal(curves.pnl["gated"], expected)
    gated = result["stitched"]["gated"]
    assert gated["pnl"] == pytest.approx(expected.sum())
    assert gated["model_folds"] == ([1] if fold_1 == "model" else [])
    long = np.concatenate([p["long"][0] for p in policies])
    assert result["stitched"]["gated_minus_long"]["total"] == pytest.approx((expected - long).sum())
    assert "gated model" in stitch.format_table(result)


def test_the_tear_sheet_shows_dates_for_daily_bars_and_times_for_intraday_ones():
    from trm_act.tearsheet import _stamp

    assert _stamp("2008-08-15T00:00:00") == "2008-08-15"
    assert _stamp("2008-08-15 00:00:00") == "2008-08-15"
    assert _stamp("2008-08-15T13:30:00") == "2008-08-15 13:30:00"


@pytest.mark.parametrize(
    ("name", "n_bars", "first", "last"),
    [
        ("googl", 2335, "2009-05-22", "2018-08-29"),
        ("eurusd", 6225, "2017-01-01 22:00", "2017-12-29 21:00"),
        ("sp500", 5031, "1999-01-04", "2018-12-31"),
        ("nasdaq", 5031, "1999-01-04", "2018-12-31"),
    ],
)
def test_bench_real_reads_each_shipped_series_as_documented(tmp_path, name, n_bars, first, last):
    from trm_act.envs import load_ohlcv

    from trm_act.bench.real import write_series

    frame = load_ohlcv(write_series(name, tmp_path))  # the CSV --data reads, checked against the package's file
    assert len(frame) == n_bars
    assert (frame.index[0], frame.index[-1]) == (pd.Timestamp(first), pd.Timestamp(last))
    assert frame.index.is_monotonic_increasing and np.isfinite(frame.to_numpy()).all()
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()


def test_bench_real_over_several_seeds_names_each_seed_and_summarises_the_spread():
    import argparse

    from trm_act.bench.real import markdown

    def row(seed: int, diff: float, verdict: str, gated_diff: float) -> dict:
        return {
            "series": "googl", "recipe": "default", "seed": seed, "decisions": 10, "model_pnl": diff + 1.0,
            "long_pnl": 1.0, "best_fixed_pnl": 0.5, "flat_pnl": 0.0, "better_benchmark": "long", "diff": diff,
            "diff_ci_low": diff - 1, "diff_ci_high": diff + 1, "verdict": verdict, "psr": 0.5, "dsr": 0.1,
            "n_trials": 6, "mean_steps": 1.5, "max_steps": 4, "gated_pnl": 0.5, "gated_model_folds": 0,
            "folds": 3, "gated_diff": gated_diff, "gated_diff_ci_low": -1.0, "gated_diff_ci_high": 0.5,
            "gated_verdict": "not different",
        }  # fmt: skip

    table = markdown(
        [row(0, -1.0, "worse", -0.5), row(1, -2.0, "worse", -0.5), row(2, 0.0, "not different", -0.5)],
        argparse.Namespace(folds=3, steps=10, embargo=0, seeds=3, fold_steps="proportional"),
    )
    assert "| googl | default (seed 1) |" in table and "recipes x folds x seeds" in table
    assert "10 optimizer steps per fold (the largest; the others in proportion to their training decisions)" in table
    # diffs -1, -2, 0: mean -1, sample sd 1, standard error 1 / sqrt(3) = 0.577
    assert (
        "- googl / default, 3 seeds, minus long (mean ± standard error over seeds; significant seeds): "
        "model -1.000 ± 0.577 (worse on 2, better on 0); gated model -0.500 ± 0.000 (worse on 0, better on 0)."
    ) in table
    assert "label-costs" not in table  # rows saved before label_costs trained on single labels; the docs say so
    rows = [
        {**row(0, -1.0, "worse", -0.5), "recipe": "single_costs", "label_costs": "single"},
        {**row(0, 0.0, "worse", -0.5), "label_costs": "realized"},
    ]
    table = markdown(rows, argparse.Namespace(folds=3, steps=10, embargo=0))
    assert table.endswith(
        "Labels charge one round trip of costs per label horizon (`--env.label-costs single`) for single_costs."
    )
