"""One default per value: the config classes' defaults are what the CLI trains (the loss: the seed's, and a preset)."""

from __future__ import annotations

import dataclasses

import torch
from trm_act.envs import STRATEGIES, TradeReplayConfig, TradeReplayEnv
from trm_act.envs.features import FEATURE_NAMES

import trm_act
from trm_act import shapes
from trm_act.config import ExperimentConfig
from trm_act.loss import LossConfig, TRMLoss, recipe_loss
from trm_act.model import ABSENT_FIELDS, RecurrentTRM, TRMConfig


def test_the_cli_trains_the_config_classes_own_defaults():
    cli = ExperimentConfig()
    assert cli.model == TRMConfig()  # the derived window, n_features and num_classes included
    assert cli.env == TradeReplayConfig()
    assert cli.loss == recipe_loss() != LossConfig()
    assert (cli.model.mixer, cli.model.attn_radius, cli.model.max_steps) == ("attention", 2, 4)
    assert (cli.env.window, cli.env.episode_length, cli.env.label_horizon) == (32, 64, 32)


def test_the_seeds_loss_is_trmloss_and_loss_config_and_the_recipe_is_one_preset():
    assert TRMLoss().extra_repr() == TRMLoss.from_config(LossConfig()).extra_repr()
    assert "halt_target='correct'" in TRMLoss().extra_repr()
    assert TRMLoss.from_config(recipe_loss()).extra_repr() != TRMLoss().extra_repr()


def test_trm_config_reads_the_environments_observations_as_they_are():
    assert (shapes.N_FEATURES, shapes.N_STRATEGIES) == (len(FEATURE_NAMES), len(STRATEGIES))
    config = TRMConfig()
    env = TradeReplayEnv(synthetic={"n_bars": 1500})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (config.window, config.n_features) == (TradeReplayConfig().window, len(FEATURE_NAMES))
    assert config.num_classes == env.action_space.n == len(STRATEGIES)
    model = RecurrentTRM(config)
    out = model(torch.as_tensor(obs)[None], model.init_carry(1))
    assert out.task_logits.shape == (1, len(STRATEGIES))


def test_a_saved_config_missing_newer_fields_rebuilds_the_model_it_trained():
    # A checkpoint written before TRMConfig had norm and carry was a post-norm model with a fresh carry.
    old = {k: v for k, v in TRMConfig().to_dict().items() if k not in ABSENT_FIELDS}
    rebuilt = TRMConfig.from_dict(old)
    assert (rebuilt.norm, rebuilt.carry) == ("post", "fresh") and TRMConfig().norm == "pre"
    assert dataclasses.replace(rebuilt, norm="pre", carry="belief") == TRMConfig()
    # A checkpoint with every field is rebuilt exactly, whatever the defaults are today.
    saved = TRMConfig(norm="post", carry="belief", max_steps=8).to_dict()
    assert TRMConfig.from_dict(saved) == TRMConfig(norm="post", carry="belief", max_steps=8)


def test_the_main_api_is_at_the_top():
    from trm_act import (  # noqa: F401
        LossConfig,
        Policy,
        RecurrentTRM,
        TradeReplayEnv,
        TRMConfig,
        TRMLoss,
        act_predict,
        recipe_loss,
    )

    for name in ("TRMLoss", "RecurrentTRM", "TRMConfig", "act_predict", "TradeReplayEnv", "Policy"):
        assert name in trm_act.__all__ and name in dir(trm_act)
    assert trm_act.LossConfig is LossConfig and trm_act.recipe_loss is recipe_loss
