"""TradeReplayEnv and TradeReplayVectorEnv: Gymnasium contract, no look-ahead, exact rewards, batching."""

from __future__ import annotations

import itertools
import random
import warnings

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from helpers import python
from trm_act.envs import (
    ENV_ID,
    STRATEGIES,
    SyntheticMarketConfig,
    TradeReplayConfig,
    TradeReplayEnv,
    TradeReplayVectorEnv,
    build_replay,
    generate_synthetic_market,
    render,
)
from trm_act.envs.config import OPTION_NAMES

SMALL = {"synthetic": SyntheticMarketConfig(n_bars=3000, seed=2)}  # quick to build, 370 decisions


def csv_file(tmp_path, n: int = 800, seed: int = 4) -> str:
    bars = generate_synthetic_market(SyntheticMarketConfig(n_bars=n, seed=seed)).drop(columns="regime")
    path = tmp_path / "prices.csv"
    bars.rename(columns=str.title).rename_axis("Date").to_csv(path)
    return str(path)


def run_episode(env, actions, seed=None):
    """Rewards, infos (including reset's) and observations of one episode."""
    obs, info = env.reset(seed=seed)
    observations, infos, rewards = [obs], [info], []
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        assert terminated is False
        observations.append(obs)
        infos.append(info)
        rewards.append(reward)
        if truncated:
            break
    return observations, infos, rewards


# --- Gymnasium contract -------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["synthetic", "csv"])
@pytest.mark.parametrize("episode_length", [None, 16])
def test_check_env_passes_without_warnings(tmp_path, source, episode_length):
    data = csv_file(tmp_path) if source == "csv" else "synthetic"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped = gym.make(ENV_ID, data=data, episode_length=episode_length)  # with the passive checker
        check_env(wrapped.unwrapped)
        # Built directly, an env has no spec, and check_env then always warns that it cannot re-make the
        # env in other render modes; everything else is checked.
        check_env(TradeReplayEnv(data=data, episode_length=episode_length), skip_render_check=True)
        wrapped.reset(seed=0)
        wrapped.step(wrapped.action_space.sample())


def test_spaces_and_info():
    env = TradeReplayEnv(episode_length=None, **SMALL)  # the whole split: the episode starts at its first decision
    obs, info = env.reset(seed=0)
    assert env.action_space == gym.spaces.Discrete(8)
    assert obs.dtype == np.float32 and obs.shape == (32, env.replay.n_features) == env.observation_space.shape
    assert env.observation_space.contains(obs)
    # Labels over 32 bars by default (trades over 8): info also holds label_pnl, each strategy's PnL over 32 bars.
    assert set(info) == {"label", "strategy_pnl", "label_pnl", "t", "decision", "regime"}
    assert type(info["label"]) is int and type(info["t"]) is int and type(info["regime"]) is int
    for key in ("strategy_pnl", "label_pnl"):
        assert info[key].dtype == np.float64 and info[key].shape == (8,)
    assert info["t"] == env.replay.decision_bars[info["decision"]] == 32
    assert info["label"] == int(np.argmax(info["label_pnl"]))
    # The observation is the features of bars t-window+1..t.
    np.testing.assert_array_equal(obs, env.replay.features[info["t"] - 31 : info["t"] + 1])
    # Labels over the trade's own horizon: no label_pnl, and the label is the best trade's strategy.
    _, info = TradeReplayEnv(episode_length=None, label_horizon=None, **SMALL).reset(seed=0)
    assert set(info) == {"label", "strategy_pnl", "t", "decision", "regime"}
    assert info["label"] == int(np.argmax(info["strategy_pnl"]))


def test_csv_env_has_no_regime(tmp_path):
    env = TradeReplayEnv(data=csv_file(tmp_path))
    _, info = env.reset(seed=0)
    assert "regime" not in info and env.replay.regimes is None


def test_step_before_reset_and_after_end_raise():
    env = TradeReplayEnv(episode_length=3, **SMALL)
    with pytest.raises(ResetNeeded, match="reset"):
        env.step(1)
    env.reset(seed=0)
    assert env.step(1)[3] is False
    assert env.step(1)[3] is True  # 3 decision points: 2 steps
    with pytest.raises(ResetNeeded, match="episode has ended"):
        env.step(1)


@pytest.mark.parametrize(
    "action",
    [8, -1, 1.5, 1.0, np.float64(2.0), True, np.bool_(True), np.array(2.0), np.array([2]), "long", None],
    ids=repr,
)
def test_invalid_action_raises(action):
    # Floats and bools are refused even where they equal a valid index, as the vector env refuses them.
    env = TradeReplayEnv(**SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action=.*expected an int in \[0, 8\)"):
        env.step(action)
    vec = TradeReplayVectorEnv(1, **SMALL)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="actions"):
        vec.step(np.array([action]))


@pytest.mark.parametrize("action", [np.int64(2), np.int32(2), np.uint8(2), np.array(2), 2])
def test_numpy_actions_accepted(action):
    env = TradeReplayEnv(**SMALL)
    _, info = env.reset(seed=0)
    assert env.step(action)[1] == info["strategy_pnl"][2]


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_full_split_episode_visits_every_decision_once(split):
    env = TradeReplayEnv(split=split, episode_length=None, **SMALL)
    _, infos, rewards = run_episode(env, [0] * 10_000, seed=0)
    decisions = [info["decision"] for info in infos]
    np.testing.assert_array_equal(decisions, env.replay.split_indices(split))
    assert len(rewards) == len(decisions) - 1  # L decision points, L - 1 steps


# --- rewards ------------------------------------------------------------------------------------


def test_reward_is_previous_info_strategy_pnl_for_every_action():
    env = TradeReplayEnv(**SMALL)
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        a = int(rng.integers(8))
        seen.add(a)
        _, reward, _, truncated, next_info = env.step(a)
        assert type(reward) is float
        assert reward == info["strategy_pnl"][a]  # exactly, not approximately
        info = next_info
        if truncated:
            _, info = env.reset()
    assert seen == set(range(8))


@pytest.mark.parametrize("source", ["synthetic", "csv"])
@pytest.mark.parametrize(("action", "sign"), [(1, 1.0), (2, -1.0), (0, 0.0)])
def test_constant_action_rewards_sum_to_independent_pnl(tmp_path, source, action, sign):
    """Constant long (short, flat): rewards add up to the position's PnL from prices and costs alone."""
    cost, horizon = 0.0007, 5
    if source == "csv":
        path = csv_file(tmp_path)
        close = pd.read_csv(path)["Close"].to_numpy()
        env = TradeReplayEnv(data=path, cost=cost, horizon=horizon, split="all", episode_length=None)
    else:
        close = generate_synthetic_market(SMALL["synthetic"])["close"].to_numpy()
        env = TradeReplayEnv(cost=cost, horizon=horizon, split="all", episode_length=None, **SMALL)
    _, infos, rewards = run_episode(env, [action] * 100_000, seed=0)
    traded = np.array([info["t"] for info in infos[:-1]])  # decision bars the agent acted on
    assert len(traded) > 100
    expected = np.sum(sign * np.log(close[traded + horizon] / close[traded]) - abs(sign) * 2 * cost)
    assert sum(rewards) == pytest.approx(expected, abs=1e-9)


# --- no look-ahead ------------------------------------------------------------------------------


@pytest.mark.parametrize("t_index", [0, 17, 150, 367])
def test_observation_does_not_change_when_future_bars_change(t_index):
    """Replace every bar after t with other plausible bars: the observation at t stays bit-identical."""
    bars = generate_synthetic_market(SMALL["synthetic"]).drop(columns="regime")
    other = generate_synthetic_market(SyntheticMarketConfig(n_bars=3000, seed=99)).drop(columns="regime")
    original = build_replay(TradeReplayConfig(data=bars))
    t = int(original.decision_bars[t_index])
    changed = bars.copy()
    scale = bars["close"].iloc[t] / other["close"].iloc[t]  # continue from the same price level
    for col in ("open", "high", "low", "close"):
        changed.iloc[t + 1 :, changed.columns.get_loc(col)] = other[col].to_numpy()[t + 1 :] * scale
    changed.iloc[t + 1 :, changed.columns.get_loc("volume")] = other["volume"].to_numpy()[t + 1 :] * 3.0
    replaced = build_replay(TradeReplayConfig(data=changed))
    before, after = original.observations([t_index]), replaced.observations([t_index])
    assert before.tobytes() == after.tobytes()
    assert np.array_equal(original.features[: t + 1], replaced.features[: t + 1])
    assert not np.array_equal(original.features[t + 1 :], replaced.features[t + 1 :])
    # ...while the label, which looks at bars t+1..t+horizon by design, may change.
    assert not np.array_equal(original.strategy_pnl[t_index], replaced.strategy_pnl[t_index])


# --- determinism, RNG, memory -------------------------------------------------------------------


def test_seeded_determinism():
    a, b = TradeReplayEnv(episode_length=20, **SMALL), TradeReplayEnv(episode_length=20, **SMALL)
    actions = np.random.default_rng(1).integers(0, 8, size=40).tolist()
    obs_a, infos_a, rewards_a = run_episode(a, actions, seed=11)
    obs_b, infos_b, rewards_b = run_episode(b, actions, seed=11)
    assert rewards_a == rewards_b and len(rewards_a) == 19
    assert all(np.array_equal(x, y) for x, y in zip(obs_a, obs_b, strict=True))
    assert [i["decision"] for i in infos_a] == [i["decision"] for i in infos_b]
    starts = {a.reset(seed=s)[1]["decision"] for s in range(20)}
    assert len(starts) > 10  # different seeds, different starts
    # Without a new seed, the generator goes on: the next episodes differ from the first.
    a.reset(seed=11)
    assert len({a.reset()[1]["decision"] for _ in range(10)}) > 1


def test_no_global_rng_use():
    # The legacy global-RNG calls below are the point: they observe the state the env must not touch.
    np.random.seed(0)  # noqa: NPY002
    random.seed(0)
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    env = TradeReplayEnv(episode_length=10, **SMALL)
    first = run_episode(env, [3] * 20, seed=5)[1]
    vec = TradeReplayVectorEnv(4, episode_length=10, **SMALL)
    vec.reset(seed=5)
    for _ in range(20):
        vec.step(np.full(4, 3))
    assert all(np.array_equal(x, y) for x, y in zip(np_state, np.random.get_state(), strict=True))  # noqa: NPY002
    assert random.getstate() == py_state
    np.random.seed(1)  # noqa: NPY002  (a different global state changes nothing)
    assert [i["decision"] for i in run_episode(env, [3] * 20, seed=5)[1]] == [i["decision"] for i in first]


def test_observations_never_share_memory():
    env = TradeReplayEnv(**SMALL)
    replay = env.replay
    obs0, info0 = env.reset(seed=0)
    obs1, _, _, _, info1 = env.step(1)
    internals = [replay.features, replay.strategy_pnl, replay.windows]
    for returned in (obs0, obs1, info0["strategy_pnl"], info1["strategy_pnl"]):
        assert not any(np.shares_memory(returned, x) for x in internals if x is not None)
        assert returned.flags.writeable
    assert not np.shares_memory(obs0, obs1)
    obs0[:] = 123.0  # mutating what we were given must not leak into the env
    info0["strategy_pnl"][:] = 5.0
    again, info = env.reset(seed=0)
    assert not np.any(again == 123.0) and np.all(info["strategy_pnl"] != 5.0)
    batch = replay.observations([0, 1, 2])
    assert not np.shares_memory(batch, replay.features) and not np.shares_memory(batch, replay.windows)
    vec = TradeReplayVectorEnv(3, **SMALL)
    vobs, vinfo = vec.reset(seed=0)
    vobs2 = vec.step(np.array([1, 2, 3]))[0]
    assert not np.shares_memory(vobs, vobs2)
    assert not any(
        np.shares_memory(x, y)
        for x in (vobs, vobs2, vinfo["strategy_pnl"])
        for y in internals
        if y is not None
    )


def test_replay_is_cached_and_read_only():
    a, b = build_replay(TradeReplayConfig(**SMALL)), build_replay(TradeReplayConfig(**SMALL))
    assert a is b
    with pytest.raises(ValueError, match="read-only"):
        a.strategy_pnl[0, 0] = 1.0
    assert build_replay(TradeReplayConfig(horizon=4, **SMALL)) is not a


# --- vector env ---------------------------------------------------------------------------------


def assert_same_transition(vec_out, single_outs, i):
    obs, rewards, terminated, truncated, info = vec_out
    s_obs, s_reward, s_term, s_trunc, s_info = single_outs
    assert np.array_equal(obs[i], s_obs)
    assert rewards[i] == s_reward and terminated[i] == s_term and truncated[i] == s_trunc
    for key, value in s_info.items():
        assert np.array_equal(info[key][i], value), key
        assert info[f"_{key}"][i]


@pytest.mark.parametrize(("episode_length", "split", "steps"), [(4, "train", 40), (None, "test", 80)])
def test_vector_env_matches_single_envs(episode_length, split, steps):
    n, seed = 5, 100
    vec = TradeReplayVectorEnv(n, episode_length=episode_length, split=split, **SMALL)
    singles = [TradeReplayEnv(episode_length=episode_length, split=split, **SMALL) for _ in range(n)]
    obs, info = vec.reset(seed=seed)
    for i, env in enumerate(singles):
        s_obs, s_info = env.reset(seed=seed + i)
        assert_same_transition(
            (obs, np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), info),
            (s_obs, 0.0, False, False, s_info),
            i,
        )
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(steps):
        actions = rng.integers(0, 8, size=n)
        out = vec.step(actions)
        for i, env in enumerate(singles):
            s_out = env.step(int(actions[i]))
            if s_out[3]:  # episode end: final_obs/final_info hold the last decision, obs the new episode
                ends += 1
                v_info = out[4]
                assert v_info["_final_obs"][i] and v_info["_final_info"][i]
                assert np.array_equal(v_info["final_obs"][i], s_out[0])
                for key, value in s_out[4].items():
                    assert np.array_equal(v_info["final_info"][key][i], value)
                new_obs, new_info = env.reset()
                assert_same_transition(out, (new_obs, s_out[1], False, True, new_info), i)
            else:
                assert "final_obs" not in out[4] or not out[4]["_final_obs"][i]
                assert_same_transition(out, s_out, i)
    start, stop = vec.replay.split_range(split)
    steps_per_episode = (episode_length or stop - start) - 1
    assert ends == n * (steps // steps_per_episode) > 0


def test_vector_env_episode_end_of_full_split():
    vec = TradeReplayVectorEnv(2, split="test", episode_length=None, **SMALL)
    start, stop = vec.replay.split_range("test")
    vec.reset(seed=0)
    for _ in range(stop - start - 2):
        assert not vec.step(np.array([1, 2]))[3].any()
    _, rewards, _, truncated, info = vec.step(np.array([1, 2]))
    assert truncated.all()
    assert np.all(info["final_info"]["decision"] == stop - 1) and np.all(info["decision"] == start)
    assert np.array_equal(rewards, vec.replay.strategy_pnl[stop - 2, [1, 2]])


def test_step_masked_moves_only_masked_envs():
    n = 6
    vec = TradeReplayVectorEnv(n, episode_length=3, **SMALL)
    singles = [TradeReplayEnv(episode_length=3, **SMALL) for _ in range(n)]
    vec.reset(seed=7)
    current = [env.reset(seed=7 + i) for i, env in enumerate(singles)]
    rng = np.random.default_rng(3)
    for _ in range(12):
        mask = rng.random(n) < 0.5
        actions = rng.integers(0, 8, size=n)
        actions[~mask] = -1  # actions of masked-out envs are ignored, even invalid ones
        out = vec.step_masked(actions, mask)
        for i, env in enumerate(singles):
            if mask[i]:
                s_out = env.step(int(actions[i]))
                if s_out[3]:
                    assert np.array_equal(out[4]["final_obs"][i], s_out[0])
                    current[i] = env.reset()
                    s_out = (current[i][0], s_out[1], False, True, current[i][1])
                else:
                    current[i] = (s_out[0], s_out[4])
                assert_same_transition(out, s_out, i)
            else:
                assert out[1][i] == 0.0 and not out[2][i] and not out[3][i]
                assert_same_transition(out, (current[i][0], 0.0, False, False, current[i][1]), i)


def test_vector_env_state_dict_resumes_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    a = TradeReplayVectorEnv(4, episode_length=5, **SMALL)
    a.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(7):
        a.step(rng.integers(0, 8, size=4))
    torch.save(a.state_dict(), tmp_path / "env.pt")
    b = TradeReplayVectorEnv(4, episode_length=5, **SMALL)
    b.load_state_dict(torch.load(tmp_path / "env.pt", weights_only=True))  # plain Python values only
    for _ in range(20):  # several episode ends: the restored RNGs draw the same new starts
        actions = rng.integers(0, 8, size=4)
        out_a, out_b = a.step(actions), b.step(actions)
        assert np.array_equal(out_a[0], out_b[0]) and np.array_equal(out_a[1], out_b[1])
        assert np.array_equal(out_a[4]["decision"], out_b[4]["decision"])
    with pytest.raises(ValueError, match="num_envs=4"):
        TradeReplayVectorEnv(3, **SMALL).load_state_dict(a.state_dict())
    fresh = TradeReplayVectorEnv(4, **SMALL)
    fresh.load_state_dict(TradeReplayVectorEnv(4, **SMALL).state_dict())  # never reset: still needs reset()
    with pytest.raises(ResetNeeded):
        fresh.step(np.zeros(4, dtype=np.int64))


def test_vector_env_validation():
    vec = TradeReplayVectorEnv(3, **SMALL)
    with pytest.raises(ResetNeeded):
        vec.step(np.array([0, 1, 2]))
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions\[1\]=9"):
        vec.step(np.array([0, 9, 2]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        vec.step(np.array([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        vec.step(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="mask"):
        vec.step_masked(np.array([0, 1, 2]), np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="num_envs=0"):
        TradeReplayVectorEnv(0)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert vec.observation_space.shape == (3, 32, vec.replay.n_features)
    assert vec.action_space == gym.spaces.MultiDiscrete([8, 8, 8])


# --- registration and configuration -------------------------------------------------------------


def test_registration_make_and_make_vec():
    assert ENV_ID in gym.registry
    spec = gym.spec(ENV_ID)
    assert spec.entry_point == "trm_act.envs:TradeReplayEnv"
    assert spec.vector_entry_point == "trm_act.envs:TradeReplayVectorEnv"
    env = gym.make(ENV_ID, window=16, synthetic={"n_bars": 3000, "seed": 2})
    assert isinstance(env.unwrapped, TradeReplayEnv) and env.observation_space.shape[0] == 16
    assert env.unwrapped.config.synthetic == SMALL["synthetic"]
    vec = gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="vector_entry_point", **SMALL)
    assert isinstance(vec, TradeReplayVectorEnv) and vec.num_envs == 4
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (4, 32, vec.replay.n_features)


@pytest.mark.parametrize(
    "code",
    [
        # Gymnasium 1.x has no plugin entry points: "module:id" imports the module on demand.
        "import gymnasium as gym; env = gym.make('trm_act.envs:trm_act/TradeReplay-v0')",
        "import trm_act, gymnasium as gym; env = gym.make('trm_act/TradeReplay-v0')",
    ],
    ids=["on-demand", "after-import-trm_act"],
)
def test_make_forms_in_fresh_interpreter(code):
    code += "; obs, info = env.reset(seed=0); print(obs.shape, sorted(info))"
    result = python("-c", code, timeout=120)  # a fresh interpreter: trm_act not imported yet
    assert result.returncode == 0, result.stderr
    assert "(32, 10) ['decision', 'label', 'label_pnl', 'regime', 'strategy_pnl', 't']" in result.stdout


@pytest.mark.parametrize("mode", ["human", "rgb_array_list", "ansi"])
def test_unsupported_render_modes_are_rejected(mode):
    with pytest.raises(ValueError, match=rf"render_mode='{mode}': TradeReplayEnv renders only 'rgb_array'"):
        TradeReplayEnv(render_mode=mode, **SMALL)
    with pytest.raises(
        ValueError, match=rf"render_mode='{mode}': TradeReplayVectorEnv renders only 'rgb_array'"
    ):
        TradeReplayVectorEnv(2, render_mode=mode, **SMALL)
    assert TradeReplayEnv(**SMALL).render() is None
    assert TradeReplayVectorEnv(2, **SMALL).render() is None


@pytest.mark.parametrize("backend", ["auto", "raster"])
def test_render_rgb_array_draws_the_episode(monkeypatch, backend):
    if backend == "raster":  # as without matplotlib installed
        monkeypatch.setattr(render.importlib.util, "find_spec", lambda name: None)
    env = TradeReplayEnv(render_mode="rgb_array", episode_length=40, **SMALL)
    assert env.metadata["render_modes"] == ["rgb_array"] and env.metadata["render_fps"] > 0
    env.reset(seed=0)
    first = env.render()
    assert isinstance(first, np.ndarray) and first.dtype == np.uint8
    assert first.shape == (render.FRAME_HEIGHT, render.FRAME_WIDTH, 3)
    frames = [first]
    for a in [1, 2, 3, 7, 5]:
        env.step(a)
        frames.append(env.render())
    for before, after in itertools.pairwise(frames):
        assert (before != after).any(axis=-1).sum() > 50  # each step redraws a visible part of the chart
    # Each strategy chosen shows in its own colour; flat (0) was never chosen.
    colours = {tuple(c) for c in np.unique(frames[-1].reshape(-1, 3), axis=0)}
    for a in [1, 2, 3, 7, 5]:
        assert render.STRATEGY_COLORS[a] in colours, STRATEGIES[a]
    if backend == "raster":
        assert render.STRATEGY_COLORS[0] not in colours
    env.reset(seed=0)
    np.testing.assert_array_equal(env.render(), first)  # a new episode starts an empty chart


def test_raster_frame_draws_equity_line_and_strategy_blocks():
    frame = render.episode_frame(np.array([0.1, -0.3, 0.2]), np.array([1, 1, 6]), "t", backend="raster")
    line = (frame == render._EQUITY_COLOR).all(axis=-1)  # (H, W)
    rows, cols = np.nonzero(line)
    assert cols.min() <= 14 and cols.max() >= render.FRAME_WIDTH - 14  # spans the panel, start to end
    # Equity 0 -> 0.1 -> -0.2 -> 0.0: the curve's lowest pixel is two thirds of the way along.
    lowest = cols[rows == rows.max()]
    assert abs(lowest.mean() / render.FRAME_WIDTH - 2 / 3) < 0.03
    long_block = (frame == render.STRATEGY_COLORS[1]).all(axis=-1)
    breakout_block = (frame == render.STRATEGY_COLORS[6]).all(axis=-1)
    assert np.nonzero(long_block)[1].max() < np.nonzero(breakout_block)[1].min()  # steps 1-2, then step 3
    with pytest.raises(ValueError, match="backend='svg'"):
        render.episode_frame(np.zeros(1), np.zeros(1), "t", backend="svg")


def test_vector_env_render_returns_one_frame_per_sub_env():
    vec = TradeReplayVectorEnv(3, render_mode="rgb_array", episode_length=4, **SMALL)
    vec.reset(seed=0)
    frames = vec.render()
    assert isinstance(frames, tuple) and len(frames) == 3
    assert all(
        f.shape == (render.FRAME_HEIGHT, render.FRAME_WIDTH, 3) and f.dtype == np.uint8 for f in frames
    )
    vec.step_masked(np.array([1, 2, 3]), np.array([True, False, True]))
    after = vec.render()
    assert (after[0] != frames[0]).any() and (after[2] != frames[2]).any()
    np.testing.assert_array_equal(after[1], frames[1])  # sub-env 1 did not move
    # The episode record matches what single envs saw: env 0 chose 1 then 4.
    vec.step(np.array([4, 4, 4]))
    np.testing.assert_array_equal(vec._episode_actions[0, :2], [1, 4])
    np.testing.assert_array_equal(vec._episode_steps, [2, 1, 2])
    vec.step(np.array([4, 4, 4]))  # envs 0 and 2 reach their 4th decision: a new episode starts
    np.testing.assert_array_equal(vec._episode_steps, [0, 2, 0])


def test_sb3_make_vec_env_works_without_kwargs():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env

    vec = make_vec_env(ENV_ID, n_envs=2)  # SB3 asks for render_mode="rgb_array"
    obs = vec.reset()
    assert obs.shape == (2, 32, 10)
    vec.step(np.array([1, 2]))
    frames = vec.get_images()
    assert len(frames) == 2 and all(f.shape == (render.FRAME_HEIGHT, render.FRAME_WIDTH, 3) for f in frames)
    vec.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window=0"),
        ({"horizon": 2.5}, "horizon=2.5"),
        ({"stride": 0}, "stride=0"),
        ({"cost": -0.1}, "cost=-0.1"),
        ({"cost": True}, "cost=True"),
        ({"split": "valid"}, "split='valid'"),
        ({"test_fraction": 1.0}, "test_fraction=1.0"),
        ({"episode_length": 1}, "episode_length=1"),
        ({"data": "no_such_file.csv"}, "data='no_such_file.csv': no such file"),
        ({"data": 3}, "data=int"),
        ({"synthetic": {"bars": 10}}, r"synthetic: unknown option\(s\) \['bars'\]"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TradeReplayConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        TradeReplayEnv(**kwargs)


def test_config_and_options_are_exclusive_and_consistent():
    config = TradeReplayConfig(window=16, **SMALL)
    assert TradeReplayEnv(config=config).replay.window == 16
    with pytest.raises(ValueError, match=r"got config= and also \['window'\]"):
        TradeReplayEnv(window=8, config=config)
    # The env's keyword defaults are the config's defaults.
    defaults = TradeReplayConfig()
    env = TradeReplayEnv(**SMALL)
    for name in ("data", "window", "horizon", "stride", "cost", "split", "test_fraction", "episode_length"):
        assert getattr(env.config, name) == getattr(defaults, name), name


@pytest.mark.parametrize("make", ["single", "vector", "gym.make", "make_vec"])
def test_unknown_keyword_is_named_with_the_valid_ones(make):
    builders = {
        "single": lambda **kw: TradeReplayEnv(**kw),
        "vector": lambda **kw: TradeReplayVectorEnv(2, **kw),
        "gym.make": lambda **kw: gym.make(ENV_ID, **kw),
        "make_vec": lambda **kw: gym.make_vec(
            ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", **kw
        ),
    }
    message = r"unknown keyword\(s\) \['windw'\]; valid options are \['data', 'skip_bad_files', 'window'"
    with pytest.raises(ValueError, match=message):
        builders[make](windw=16, **SMALL)
    with pytest.raises(ValueError, match=r"got config= and also \['synthetic'\]"):
        builders[make](config=TradeReplayConfig(**SMALL), **SMALL)


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_every_config_field_is_an_env_keyword(name):
    value = {
        "window": 12,
        "features": "bar",
        "horizon": 6,
        "label_horizon": 10,
        "label_source": "regime",
        "label_costs": "realized",
        "label_states": 4,
        "stride": 3,
        "cost": 0.001,
        "split": "test",
        "test_fraction": 0.3,
        "episode_length": 5,
        "skip_bad_files": False,
        "data": "synthetic",
        "synthetic": SyntheticMarketConfig(n_bars=2500, seed=3),
    }[name]
    options = {**SMALL, name: value}
    single = TradeReplayEnv(**options)
    vector = TradeReplayVectorEnv(2, **options)
    assert single.config == vector.config == TradeReplayConfig(**options)
    assert getattr(single.config, name) == value


def test_options_are_used():
    config = TradeReplayConfig(window=10, horizon=3, stride=2, cost=0.01, test_fraction=0.5, **SMALL)
    replay = build_replay(config)
    assert np.all(np.diff(replay.decision_bars) == 2) and replay.decision_bars[0] == 10
    assert replay.boundary_bar == 1500 and replay.observations([0]).shape == (1, 10, replay.n_features)
    assert replay.strategy_pnl[0, 1] == pytest.approx(np.log(replay.close[13] / replay.close[10]) - 0.02)
    env = TradeReplayEnv(config=TradeReplayConfig(split="test", episode_length=5, **SMALL))
    _, info = env.reset(seed=0)
    assert info["t"] >= env.replay.boundary_bar


def test_split_too_small_for_episode():
    with pytest.raises(
        ValueError, match=r"split='test' .* has \d+ decision point\(s\) but an episode needs 500"
    ):
        TradeReplayEnv(split="test", episode_length=500, **SMALL)


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_a_split_too_small_says_how_many_bars_one_episode_takes(split):
    from trm_act.envs import example_csv, load_ohlcv

    frame = load_ohlcv(example_csv())
    with pytest.raises(ValueError, match=r"that takes about [\d,]+ bars") as exc:
        TradeReplayEnv(data=frame.iloc[:100], split=split, episode_length=40)
    bars = int(str(exc.value).split("that takes about ")[1].split(" bars")[0].replace(",", ""))
    assert "--env.episode-length" in str(exc.value)
    TradeReplayEnv(data=frame.iloc[:bars], split=split, episode_length=40)  # the count it names is enough
    fewest = bars  # and not much more than enough: exact but for where the stride's grid meets the test split
    while fewest > 0 and _episode_fits(frame.iloc[: fewest - 1], split):
        fewest -= 1
    slack = 8 / 0.2 if split == "test" else 0  # stride / test_fraction
    assert 0 <= bars - fewest <= slack, (bars, fewest)


def _episode_fits(frame: pd.DataFrame, split: str) -> bool:
    try:
        TradeReplayEnv(data=frame, split=split, episode_length=40)
    except ValueError:
        return False
    return True


def test_benchmark_runs(capsys):
    pytest.importorskip("gym_anytrading")
    from trm_act.bench.env import main

    assert main(["--seconds", "0.01", "--rounds", "1", "--num-envs", "8", "--peer-envs", "2"]) == 0
    out = capsys.readouterr().out
    assert "single env ratio:" in out and "vector env ratio:" in out and STRATEGIES  # both ratios printed
