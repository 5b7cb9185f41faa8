"""TRMSB3Callback with real SB3 PPO and A2C on trm_act/TradeReplay-v0, read back from SB3's TensorBoard run."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env
from tb_events import scalars
from trm_act.callbacks.sb3 import TRMSB3Callback
from trm_act.envs import STRATEGIES  # importing trm_act.envs registers trm_act/TradeReplay-v0

ENV_ID = "trm_act/TradeReplay-v0"
SMALL_ENV = {"window": 8, "synthetic": {"n_bars": 1500, "seed": 2}, "episode_length": 20}
USAGE_TAGS = [f"trm/strategy_usage/{name}" for name in STRATEGIES]


class DecisionLog(gymnasium.Wrapper):
    """Independent record of every decision: the action, its reward and the label of its decision point."""

    def __init__(self, env, log: list):
        super().__init__(env)
        self.log = log
        self._label = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._label = int(info["label"])
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.log.append((int(action), float(reward), self._label))
        self._label = int(info["label"])
        return obs, reward, terminated, truncated, info


def test_sb3_check_env_passes():
    check_env(gymnasium.make(ENV_ID).unwrapped)


def check_windows(logged, log, decisions_per_dump):
    """Each dump summarizes exactly the decisions since the previous dump."""
    steps = [step for step, _ in logged["trm/pnl"]]
    assert steps == [decisions_per_dump * (k + 1) for k in range(len(steps))]  # SB3's num_timesteps
    for tag in ["trm/cumulative_pnl", "trm/accuracy", *USAGE_TAGS]:
        assert [step for step, _ in logged[tag]] == steps, tag
    actions, rewards, labels = (np.array(column) for column in zip(*log, strict=True))
    for k, step in enumerate(steps):
        window = slice(step - decisions_per_dump, step)
        assert logged["trm/pnl"][k][1] == pytest.approx(rewards[window].mean(), abs=1e-6)
        assert logged["trm/cumulative_pnl"][k][1] == pytest.approx(rewards[:step].sum(), abs=1e-5)
        assert logged["trm/accuracy"][k][1] == pytest.approx(
            (actions[window] == labels[window]).mean(), abs=1e-6
        )
        usage = [logged[tag][k][1] for tag in USAGE_TAGS]
        assert usage == pytest.approx(
            np.bincount(actions[window], minlength=8) / decisions_per_dump, abs=1e-6
        )


def test_ppo_logs_pnl_accuracy_usage_into_its_tensorboard_run(tmp_path):
    log: list = []
    env = DecisionLog(gymnasium.make(ENV_ID, **SMALL_ENV), log)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=64,
        batch_size=64,
        n_epochs=1,
        seed=0,
        tensorboard_log=str(tmp_path),
        policy_kwargs={"net_arch": [16]},
    )
    model.learn(total_timesteps=256, callback=TRMSB3Callback(), tb_log_name="ppo")
    logged = scalars(tmp_path / "ppo_1")
    assert "rollout/ep_rew_mean" in logged  # SB3's own curves share the run
    check_windows(logged, log, decisions_per_dump=64)


def test_a2c_two_envs_with_sparse_dumps(tmp_path):
    log: list = []  # two sub-envs append in the VecEnv's order, one row each per step
    # render_mode=None: make_vec_env otherwise asks for "rgb_array", which TradeReplayEnv rejects.
    vec_env = make_vec_env(
        ENV_ID,
        n_envs=2,
        seed=0,
        env_kwargs={**SMALL_ENV, "render_mode": None},
        wrapper_class=DecisionLog,
        wrapper_kwargs={"log": log},
    )
    model = A2C(
        "MlpPolicy",
        vec_env,
        n_steps=8,
        seed=0,
        tensorboard_log=str(tmp_path),
        policy_kwargs={"net_arch": [16]},
    )
    callback = TRMSB3Callback()
    # Dumps every 4 rollouts of 8 steps x 2 envs = 64 decisions; episodes of 19 steps end mid-rollout,
    # so the labels after an auto-reset come from reset_infos.
    model.learn(total_timesteps=256, callback=callback, tb_log_name="a2c", log_interval=4)
    logged = scalars(tmp_path / "a2c_1")
    check_windows(logged, log, decisions_per_dump=64)
    # SB3's VecEnv buffers rewards in float32, hence the tolerance.
    assert callback.cumulative_pnl == pytest.approx(sum(reward for _, reward, _ in log), abs=1e-6)


def test_learn_continued_without_reset_keeps_the_labels(tmp_path):
    log: list = []
    env = DecisionLog(gymnasium.make(ENV_ID, **SMALL_ENV), log)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        seed=0,
        tensorboard_log=str(tmp_path),
        policy_kwargs={"net_arch": [8]},
    )
    callback = TRMSB3Callback()
    model.learn(total_timesteps=64, callback=callback, tb_log_name="ppo")
    model.learn(total_timesteps=64, callback=callback, tb_log_name="ppo", reset_num_timesteps=False)
    logged = scalars(tmp_path / "ppo_1", n_files=2)  # SB3 opens a second writer in the same run directory
    check_windows(logged, log, decisions_per_dump=32)
    assert len(logged["trm/pnl"]) == 4


def test_rejects_strategy_names_of_the_wrong_length(tmp_path):
    model = A2C(
        "MlpPolicy",
        gymnasium.make(ENV_ID, **SMALL_ENV),
        n_steps=4,
        policy_kwargs={"net_arch": [8]},
        tensorboard_log=str(tmp_path),  # else SB3 logs to a folder in the system temp dir
    )
    with pytest.raises(ValueError, match="one name per action"):
        model.learn(total_timesteps=8, callback=TRMSB3Callback(strategy_names=["a", "b"]))
