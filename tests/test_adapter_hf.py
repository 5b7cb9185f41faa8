"""TRMHFCallback / TRMHFModel with the real Hugging Face Trainer on CPU, read back from its TensorBoard run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

# Offline and quiet before transformers is imported: no hub calls, no other reporting integrations.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TRANSFORMERS_VERBOSITY": "error",
}.items():
    os.environ.setdefault(_name, _value)

import torch  # noqa: E402
from tb_events import TRM_TAGS, event_files, scalars  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402
from transformers.integrations import TensorBoardCallback  # noqa: E402
from trm_act.callbacks.hf import TRMHFCallback, TRMHFModel, replay_dataset  # noqa: E402
from trm_act.envs import TradeReplayConfig  # noqa: E402

SMALL_REPLAY = TradeReplayConfig(window=8, synthetic={"n_bars": 1500, "seed": 4})
SMALL_MODEL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_steps": 2}


@pytest.fixture(scope="module")
def dataset():
    return replay_dataset(SMALL_REPLAY)


def arguments(tmp_path: Path, **kwargs) -> TrainingArguments:
    options = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=["tensorboard"],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    options.update(kwargs)
    return TrainingArguments(**options)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_components_share_hf_tensorboard_run(tmp_path, dataset, accumulate):
    model = TRMHFModel(SMALL_MODEL, SMALL_REPLAY)
    trainer = Trainer(
        model=model, args=arguments(tmp_path, gradient_accumulation_steps=accumulate), train_dataset=dataset
    )
    trainer.add_callback(TRMHFCallback(trainer))
    trainer.train()

    logged = scalars(tmp_path / "out")
    assert set(TRM_TAGS) <= set(logged)
    for tag in TRM_TAGS:
        assert [step for step, _ in logged[tag]] == [1, 2, 3, 4], tag  # state.global_step at on_step_end
    # HF's own loss for the same optimizer step (averaged over accumulated micro-batches, like ours).
    hf_loss = dict(logged["train/loss"])
    for step, value in logged["loss/total"]:
        assert value == pytest.approx(hf_loss[step], abs=1e-4)
    assert all(value == 2.0 for _, value in logged["halt/mean_steps"])  # halt bias -5: the cap (max_steps=2)


def test_callback_before_hf_tensorboard_callback_keeps_one_event_file(tmp_path, dataset):
    # Our callback comes before HF's: it writes through HF's writer, which exists once a step ends.
    trainer = Trainer(
        model=TRMHFModel(SMALL_MODEL, SMALL_REPLAY),
        args=arguments(tmp_path, report_to="none"),
        train_dataset=dataset,
    )
    trainer.add_callback(TRMHFCallback(trainer))
    hf_callback = TensorBoardCallback()
    trainer.add_callback(hf_callback)
    trainer.train()

    logged = scalars(tmp_path / "out")
    assert [step for step, _ in logged["loss/total"]] == [1, 2, 3, 4]
    assert "train/loss" in logged
    assert hf_callback.tb_writer is None  # HF closed the shared writer at the end


def test_own_writer_without_hf_tensorboard(tmp_path, dataset):
    trainer = Trainer(
        model=TRMHFModel(SMALL_MODEL, SMALL_REPLAY),
        args=arguments(tmp_path, report_to="none"),
        train_dataset=dataset,
    )
    trainer.add_callback(TRMHFCallback(log_dir=tmp_path / "own"))
    trainer.train()
    assert event_files(tmp_path / "out") == []
    logged = scalars(tmp_path / "own")
    assert [step for step, _ in logged["halt/rate"]] == [1, 2, 3, 4]


def test_callback_needs_a_trainer_or_a_log_dir(tmp_path, dataset):
    with pytest.raises(ValueError, match="log_dir"):
        TRMHFCallback()
    trainer = Trainer(
        model=TRMHFModel(SMALL_MODEL, SMALL_REPLAY),
        args=arguments(tmp_path, report_to="none"),
        train_dataset=dataset,
    )
    trainer.add_callback(TRMHFCallback(trainer))
    with pytest.raises(ValueError, match="report_to"):
        trainer.train()


def test_pop_trm_metrics_averages_training_passes_only(dataset):
    model = TRMHFModel(SMALL_MODEL, SMALL_REPLAY)
    batch = {
        key: torch.stack([dataset[i][key] for i in range(8)]) for key in ("obs", "labels", "strategy_pnl")
    }
    first = model(**batch)["loss"].item()
    model.eval()
    model(**batch)  # evaluation passes are not training metrics
    model.train()
    second = model(**{key: value[:4] for key, value in batch.items()})["loss"].item()
    metrics = model.pop_trm_metrics()
    assert metrics["loss/total"] == pytest.approx((first + second) / 2, rel=1e-6)
    assert model.pop_trm_metrics() == {}


def test_the_model_defaults_to_the_clis_loss():
    from trm_act.loss import TRMLoss, recipe_loss

    model = TRMHFModel(SMALL_MODEL, SMALL_REPLAY)
    assert model.loss_fn.extra_repr() == TRMLoss.from_config(recipe_loss()).extra_repr()
