"""Learning instruments: hindsight labels over a longer horizon, halting by regime age, the learning benchmark."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from trm_act.envs import TradeReplayConfig, TradeReplayEnv, TradeReplayVectorEnv, build_replay
from trm_act.envs.strategies import trade_pnl

from trm_act.baselines import regime_oracle_actions
from trm_act.metrics import bars_since_regime_change, steps_by_regime_age

SMALL = {"n_bars": 3000, "seed": 3}


def _replay(**options):
    return build_replay(TradeReplayConfig(window=16, synthetic=SMALL, **options))


@pytest.mark.parametrize("costs", ["realized", "single"])
def test_label_horizon_scores_labels_over_it_and_leaves_rewards_alone(costs):
    short, long = _replay(label_horizon=None), _replay(label_horizon=32, label_costs=costs)  # None: the trade's
    np.testing.assert_array_equal(long.strategy_pnl, short.strategy_pnl)  # rewards: still over `horizon`
    assert short.label_pnl is short.strategy_pnl
    trade = long.horizon if costs == "realized" else 32  # bars between the label's round trips

    def label(bars: np.ndarray, length: int) -> np.ndarray:  # (N, S) back-to-back trades over `length` bars
        return sum(
            trade_pnl(long.positions, long.close, bars + k, min(trade, length - k), long.cost)
            for k in range(0, length, trade)
        )

    bars = long.decision_bars
    full = bars + 32 <= long.n_bars - 1
    np.testing.assert_allclose(long.label_pnl[full], label(bars[full], 32), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(long.labels, np.argmax(long.label_pnl, axis=1))
    # The last decisions' labels are cut at the last bar, not dropped: the test split keeps every decision.
    assert long.n_decisions == short.n_decisions and (~full).sum() > 0
    tail = int(np.flatnonzero(~full)[0])
    cut = label(bars[tail : tail + 1], long.n_bars - 1 - int(bars[tail]))
    np.testing.assert_allclose(long.label_pnl[tail], cut[0], rtol=0, atol=1e-12)
    # Longer labels agree more often with the regime's best strategy (they are less noisy).
    oracle = regime_oracle_actions(long, "train")
    assert (long.labels == oracle).mean() > (short.labels == oracle).mean()


def test_label_horizon_keeps_every_train_label_before_the_test_split():
    replay = _replay(label_horizon=40)
    train = replay.split_indices("train")
    assert (replay.decision_bars[train] + 40 < replay.boundary_bar).all()
    assert replay.decision_bars[train[-1] + 1] + 40 >= replay.boundary_bar  # and no more are dropped


def test_label_pnl_in_info_only_with_a_label_horizon():
    env = TradeReplayEnv(window=16, synthetic=SMALL, label_horizon=24)
    _, info = env.reset(seed=0)
    d = info["decision"]
    np.testing.assert_array_equal(info["label_pnl"], env.replay.label_pnl[d])
    assert info["label"] == int(np.argmax(info["label_pnl"]))
    _, reward, *_ = env.step(2)
    assert reward == env.replay.strategy_pnl[d, 2]  # the reward is the trade's realized PnL
    assert "label_pnl" not in TradeReplayEnv(window=16, synthetic=SMALL, label_horizon=None).reset(seed=0)[1]
    vector = TradeReplayVectorEnv(3, window=16, synthetic=SMALL, label_horizon=24)
    _, infos = vector.reset(seed=0)
    np.testing.assert_array_equal(infos["label_pnl"], vector.replay.label_pnl[infos["decision"]])


@pytest.mark.parametrize("bad", [0, -3, 2.5, "32"])
def test_label_horizon_is_validated(bad):
    with pytest.raises(ValueError, match="label_horizon"):
        TradeReplayConfig(label_horizon=bad)


def test_regime_label_source_labels_each_decision_with_its_regimes_best_strategy():
    hindsight, clean = _replay(label_horizon=24), _replay(label_horizon=24, label_source="regime")
    assert (hindsight.label_source, clean.label_source) == ("hindsight", "regime")
    # Per true regime, the strategy with the best mean PnL on the train split (computed here directly).
    train = clean.split_indices("train")
    expected = np.empty(clean.n_decisions, dtype=np.int64)
    for k in np.unique(clean.regimes):
        mine = train[clean.regimes[train] == k]
        expected[clean.regimes == k] = int(np.argmax(clean.strategy_pnl[mine].mean(axis=0)))
    np.testing.assert_array_equal(clean.labels, expected)
    assert len(np.unique(clean.labels)) > 1 and (clean.labels != hindsight.labels).any()
    # Only the labels change: rewards and the supervision PnL stay as they are.
    np.testing.assert_array_equal(clean.strategy_pnl, hindsight.strategy_pnl)
    np.testing.assert_array_equal(clean.label_pnl, hindsight.label_pnl)
    env = TradeReplayEnv(window=16, synthetic=SMALL, label_source="regime")
    _, info = env.reset(seed=0)
    assert info["label"] == env.replay.labels[info["decision"]] == expected[info["decision"]]


def test_hindsight_oracle_baseline_does_not_follow_the_label_source():
    from trm_act.baselines import baseline_actions

    clean = _replay(label_source="regime")
    test = clean.split_indices("test")
    oracle = baseline_actions(clean, test, seed=0)["oracle"]
    np.testing.assert_array_equal(oracle, np.argmax(clean.label_pnl[test], axis=1))  # still hindsight's best
    assert (oracle != clean.labels[test]).any()


def test_regime_label_source_is_validated(tmp_path: Path):
    with pytest.raises(ValueError, match="label_source='oracle': expected one of"):
        TradeReplayConfig(label_source="oracle")
    csv = tmp_path / "bars.csv"
    csv.write_text("Date,Open,High,Low,Close,Volume\n2020-01-01,1,1,1,1,1\n")
    with pytest.raises(ValueError, match="label_source='regime' needs data='synthetic'"):
        TradeReplayConfig(data=str(csv), label_source="regime")


def test_bars_since_regime_change():
    regimes = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    np.testing.assert_array_equal(
        bars_since_regime_change(regimes, np.arange(10)), [0, 1, 2, 0, 1, 0, 1, 2, 3, 0]
    )


def test_steps_by_regime_age_compares_recent_changes_with_settled_regimes():
    replay = _replay(stride=1)
    idx = replay.split_indices("all")
    age = bars_since_regime_change(replay.bar_regimes, replay.decision_bars[idx])
    steps = np.where(age < 16, 3, 1)  # a model that thinks 3 steps just after a change, 1 otherwise
    out = steps_by_regime_age(replay, idx, steps)
    assert out["recent_change"] == 3.0 and out["settled"] == 1.0 and out["ratio"] == 3.0
    assert out["recent_decisions"] == int((age < 16).sum()) and out["settled_decisions"] == int(
        (age >= 48).sum()
    )


@pytest.mark.slow
def test_learn_benchmark_quick_writes_its_table(tmp_path: Path, capsys):
    from trm_act.bench.learn import main

    assert main(["--quick", "--recipes", "default,mlp", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "learn.md").read_text()
    assert "| default |" in table and "| mlp |" in table
    data = json.loads((tmp_path / "learn.json").read_text())
    rows = {row["recipe"]: row for row in data["summary"]}
    assert rows["mlp"]["max_steps"] == 1 and rows["mlp"]["mean_steps"] == 1.0
    for run in data["runs"]:
        assert [m["market"] for m in run["markets"]] == ["held-out", "market 1000"]
        for m in run["markets"]:
            assert m["capture"] == pytest.approx(m["pnl"] / m["regime_oracle_pnl"])


def test_learn_benchmark_validation_scores_only_the_validation_markets(tmp_path: Path):
    from trm_act.bench.learn import VALIDATION_MARKET_SEED, main

    assert main(["--quick", "--validation", "--recipes", "mlp", "--out", str(tmp_path)]) == 0
    (run,) = json.loads((tmp_path / "learn.json").read_text())["runs"]
    assert [m["market"] for m in run["markets"]] == [f"market {VALIDATION_MARKET_SEED}"]
    assert run["steps"] == 30  # the budget it trained (--quick), saved with the run
    assert "1 seeds x (market 2000)" in (tmp_path / "learn.md").read_text()


def test_learn_recipes_change_only_what_they_name():
    from trm_act.bench.learn import DEFAULT_RECIPES, RECIPES
    from trm_act.config import ExperimentConfig
    from trm_act.loss import LossConfig

    base = ExperimentConfig()
    assert set(DEFAULT_RECIPES) <= set(RECIPES)
    seed_loss = RECIPES["seed_loss"][0](base)
    assert seed_loss.loss == LossConfig() and seed_loss.env == base.env and seed_loss.model == base.model
    assert RECIPES["one_step"][0](base).model.max_steps == 1
    short = RECIPES["short_labels"][0](base)
    assert base.env.label_horizon == 32 and short.env.label_horizon is None and short.loss == base.loss
    correct = RECIPES["correct_halt"][0](base)
    assert (correct.loss.halt_target, correct.loss.confidence_threshold) == ("correct", 0.7)
    assert correct.loss.lambda_reward == base.loss.lambda_reward and correct.env == base.env
    # Each architecture ablation undoes one choice of the default and nothing else.
    edits = {
        "post_norm": {"norm": ("pre", "post")},
        "global_attention": {"attn_radius": (2, 0), "pool": ("last", "mean")},
    }
    for recipe, changes in edits.items():
        edited = RECIPES[recipe][0](base)
        assert edited.env == base.env and edited.loss == base.loss and edited.train == base.train
        for name, (before, after) in changes.items():
            assert (getattr(base.model, name), getattr(edited.model, name)) == (before, after)
        assert dataclasses.replace(edited.model, **{n: getattr(base.model, n) for n in changes}) == base.model
    window16 = RECIPES["window16"][0](base)
    assert (base.env.window, window16.env.window, window16.model.window) == (32, 16, 16)
    assert RECIPES["no_ema"][0](base).train == dataclasses.replace(base.train, ema_decay=0.0)
    assert RECIPES["no_label_loss"][0](base).loss == dataclasses.replace(base.loss, lambda_profit=0.0)
    assert RECIPES["max_steps8"][0](base).model == dataclasses.replace(base.model, max_steps=8)
    # The clean-supervision controls: the seed's loss, labels from the true regime, one-step twin.
    clean, clean_one = RECIPES["regime_labels"][0](base), RECIPES["regime_labels_one_step"][0](base)
    assert clean.loss == LossConfig() and clean.model == base.model
    assert clean.env == dataclasses.replace(base.env, label_source="regime") and clean_one.env == clean.env
    assert clean_one.model == dataclasses.replace(base.model, max_steps=1) and clean_one.loss == clean.loss
    # The regime-model labels: the seed's loss, label_source "hmm", the default or a named number of states.
    hmm = RECIPES["seed_loss_hmm"][0](base)
    assert hmm.loss == LossConfig() and hmm.model == base.model
    assert hmm.env == dataclasses.replace(base.env, label_source="hmm")
    assert RECIPES["seed_loss_hmm6"][0](base).env == dataclasses.replace(hmm.env, label_states=6)


def test_belief_recipes_train_at_the_evaluation_cadence_and_bptt_keeps_the_decisions_per_step():
    from trm_act.bench.learn import RECIPES, GRUControl
    from trm_act.config import ExperimentConfig

    base = ExperimentConfig()
    for name in ("gru", "gru_bptt", "belief_priced", "belief_one_step", "belief_unrolled", "belief_bptt"):
        edited = RECIPES[name][0](base)
        assert edited.model.carry == "belief" and edited.env.episode_length == 256, name
        assert edited.train_stride == base.env.effective_stride, name  # the cadence evaluation walks at
    assert RECIPES["gru"][1] is GRUControl and RECIPES["gru_bptt"][1] is GRUControl
    bptt = RECIPES["belief_bptt"][0](base)
    assert (bptt.train.unroll, bptt.train.bptt_decisions) == (True, 8)
    assert bptt.train.batch_size * bptt.train.bptt_decisions == base.train.batch_size  # decisions per step
    unrolled = RECIPES["belief_unrolled"][0](base)
    assert (unrolled.train.unroll, unrolled.train.bptt_decisions, unrolled.train.batch_size) == (True, 1, 128)


def test_learn_benchmark_bars_default_to_the_family_and_refuse_a_tiny_market():
    from trm_act.bench.learn import SLOW_MARKET_BARS, base_config, parse_args

    def synthetic(*flags: str):
        return base_config(parse_args(list(flags))).env.synthetic

    slow, default = synthetic("--market", "slow"), synthetic()
    assert (slow.preset, slow.n_bars) == ("slow", SLOW_MARKET_BARS) and SLOW_MARKET_BARS > default.n_bars
    assert (default.preset, default.n_bars) == ("default", 40_000)
    assert synthetic("--market", "slow", "--bars", "80000").n_bars == 80_000
    assert base_config(parse_args(["--steps", "7"])).train.steps == 7
    assert base_config(parse_args([])).env.cost == 0.0005
    assert base_config(parse_args(["--cost", "0.002"])).env.cost == 0.002  # every recipe, every market
    assert parse_args(["--quick"]).steps == 30 and parse_args(["--quick", "--steps", "50"]).steps == 50
    for flags in (
        ["--bars", "100"], ["--cost", "1.5"], ["--cost", "-0.001"], ["--steps", "-5"], ["--from-json", "nothing.json"]
    ):
        with pytest.raises(SystemExit):
            parse_args(flags)


def test_paired_gain_and_tables_from_a_saved_json(tmp_path: Path, capsys):
    from trm_act.bench.learn import main, markdown, paired_gain, summarize

    def run(recipe, seed, pnl, by_steps=None):
        market = {
            "market": "held-out", "capture": pnl / 10, "pnl": pnl, "fixed_max_pnl": pnl, "best_fixed_pnl": 1.0,
            "random_pnl": -1.0, "regime_oracle_pnl": 10.0, "mean_steps": 1.0, "steps_histogram": [1],
            "steps_by_regime_age": None, "pnl_by_fixed_steps": by_steps or [pnl],
            "by_regime": {
                "bull": {"pnl": pnl, "regime_oracle_pnl": 8.0, "regime_oracle_strategy": "long",
                         "picks_oracle_strategy": seed / 2},
            },
        }  # fmt: skip
        max_steps = len(market["pnl_by_fixed_steps"])
        return {"recipe": recipe, "seed": seed, "max_steps": max_steps, "train_s": 1.0, "markets": [market]}

    runs = [
        run("default", 0, 5.0, [3.0, 5.0]),
        run("default", 1, 7.0, [5.0, 7.0]),
        run("one_step", 0, 4.0),
        run("one_step", 1, 4.0),
        run("regime_labels", 0, 6.0),
        run("regime_labels", 1, 6.0),
        run("regime_labels_one_step", 0, 7.0),
        run("regime_labels_one_step", 1, 8.0),
    ]
    mean, se, n = paired_gain(runs, "default", "one_step")
    assert (mean, n) == (2.0, 2) and se == pytest.approx(1.0)  # gains 1 and 3
    assert paired_gain(runs[:1] + runs[2:3], "default", "one_step") is None  # one seed: no error bar
    assert paired_gain(runs, "regime_labels", "regime_labels_one_step") == (-1.5, pytest.approx(0.5), 2)
    (tmp_path / "learn.json").write_text(json.dumps({"summary": summarize(runs), "runs": runs}))
    assert main(["--from-json", str(tmp_path / "learn.json")]) == 0
    out = capsys.readouterr().out
    assert "| default | 60% ± 10% |" in out and "Costs:" not in out  # the runs predate --cost: the default
    assert "Thinking pays? default - one_step: +2.00 ± 1.00 PnL per market (2.0 standard errors" in out
    assert (
        "Thinking pays with clean labels? regime_labels - regime_labels_one_step: -1.50 ± 0.50 PnL per market "
        "(-3.0 standard errors" in out
    )
    # capture at each fixed step count: (3/10, 5/10) at k = 1 and (5/10, 7/10) at k = 2, over two seeds
    # per regime: oracle 8 minus the model's pnl (5, 7 -> gap 2.00), share on the oracle's strategy (0, 0.5)
    assert (
        "| recipe | bull (long) |" in out
        and "| default | +2.00 (25%) |" in out
        and "| one_step | +4.00 (25%) |" in out
    )
    assert (
        "| default | 40% ± 10% | 60% ± 10% |" in out
        and "| one_step |" not in out.split("exactly k")[1].split("Where PnL")[0]
    )
    costly = [{**r, "cost": 0.002} for r in runs]
    (tmp_path / "learn.json").write_text(json.dumps({"summary": summarize(costly), "runs": costly}))
    assert main(["--from-json", str(tmp_path / "learn.json")]) == 0
    assert "Costs: 20 bp (`--cost 0.002`)." in capsys.readouterr().out
    labelled = [{**r, "label_costs": "single" if r["recipe"] == "one_step" else "realized"} for r in runs]
    (tmp_path / "learn.json").write_text(json.dumps({"summary": summarize(labelled), "runs": labelled}))
    assert main(["--from-json", str(tmp_path / "learn.json")]) == 0
    out = capsys.readouterr().out
    assert "per market. Labels charge one round trip of costs per label horizon (`--env.label-costs single`) " \
        "for one_step.\n" in out
    assert "label-costs" not in markdown(summarize(runs), runs)  # runs before the option: the docs say so
    one_seed = [r for r in runs if r["seed"] == 0]
    assert "| default | 50% (one seed) | 50% |" in markdown(summarize(one_seed), one_seed)  # no "± nan%"


def test_label_quality_bounds_what_labels_and_the_seeds_halt_target_can_reach():
    from trm_act.envs import SyntheticMarketConfig

    from trm_act.bench.labels import label_quality, markdown
    from trm_act.config import ExperimentConfig

    base = ExperimentConfig()
    config = dataclasses.replace(
        base, env=dataclasses.replace(base.env, synthetic=SyntheticMarketConfig(**SMALL))
    )
    replay = build_replay(dataclasses.replace(config.env, label_horizon=16))
    train = replay.split_indices("train")
    labels, regimes = replay.labels[train], replay.regimes[train]
    shares = {
        k: np.bincount(labels[regimes == k], minlength=8) / (regimes == k).sum() for k in np.unique(regimes)
    }
    accuracy = sum(
        (regimes == k).mean() * s.max() for k, s in shares.items()
    )  # knows the regime: predicts its mode
    threshold = float(np.median([s.max() for s in shares.values()]))  # some regimes above it, some not
    halt = sum((regimes == k).mean() * s.max() for k, s in shares.items() if s.max() > threshold)

    out = label_quality(16, threshold, config)
    assert out["decisions"] == train.size and out["regimes"] == len(shares)
    assert out["accuracy_ceiling"] == pytest.approx(accuracy)
    assert out["halt_target_ceiling"] == pytest.approx(halt)
    assert 0 < out["halt_target_ceiling"] < out["accuracy_ceiling"]
    assert label_quality(16, 1.0, config)["halt_target_ceiling"] == 0.0  # no probability exceeds 1
    best = regime_oracle_actions(replay, "train")[train]
    assert out["label_is_regime_best"] == pytest.approx((labels == best).mean())
    assert "| 16 |" in markdown([out], threshold)
