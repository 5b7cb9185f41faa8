"""TRMLightningCallback / TRMLightningModule against the real Lightning on CPU, read back from TensorBoard."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

pytest.importorskip("lightning")

import lightning
import torch
from helpers import python
from lightning.pytorch.loggers import TensorBoardLogger
from tb_events import TRM_TAGS, scalars
from trm_act.callbacks.lightning import TRMLightningCallback, TRMLightningModule, trm_metrics
from trm_act.envs import TradeReplayConfig

SMALL_REPLAY = TradeReplayConfig(window=8, synthetic={"n_bars": 1500, "seed": 1})
SMALL_MODEL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_steps": 2}


class Recorder(lightning.pytorch.Callback):
    """loss/total that training_step returned, grouped by the optimizer step its batch contributed to."""

    def __init__(self):
        self.by_step: dict[int, list[float]] = {0: []}  # step 0: before the first optimizer step
        self._pending: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._pending.append(float(outputs["loss/total"]))
        if trainer.global_step not in self.by_step:  # the optimizer stepped after this batch
            self.by_step[trainer.global_step], self._pending = self._pending, []


def trainer(tmp_path, **kwargs):
    options = dict(
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    options.update(kwargs)
    return lightning.Trainer(**options)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        yield


@pytest.mark.parametrize("accumulate", [1, 2])
def test_components_land_in_the_tensorboard_logger_run(tmp_path, accumulate):
    lightning.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(tmp_path, name="run")
    recorder = Recorder()
    module = TRMLightningModule(SMALL_MODEL, SMALL_REPLAY, batch_size=32)
    trainer(
        tmp_path, max_steps=4, logger=logger, callbacks=[recorder], accumulate_grad_batches=accumulate
    ).fit(module)

    logged = scalars(logger.log_dir)
    assert set(TRM_TAGS) <= set(logged)
    for tag in TRM_TAGS:
        assert [step for step, _ in logged[tag]] == [1, 2, 3, 4], tag  # trainer.global_step after the step
    # The value is what training_step returned, averaged over the accumulated batches of that step.
    assert max(len(batches) for batches in recorder.by_step.values()) == accumulate
    for step, value in logged["loss/total"]:
        batches = recorder.by_step[step]
        assert value == pytest.approx(sum(batches) / len(batches), rel=1e-5)
    assert all(value == 2.0 for _, value in logged["halt/mean_steps"])  # halt bias -5: the cap (max_steps=2)
    # Lightning's hparams share the run: still one event file (checked in scalars()).


def test_two_line_default_fit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Lightning's default TensorBoardLogger writes ./lightning_logs
    lightning.Trainer(max_steps=2, accelerator="cpu", enable_progress_bar=False).fit(TRMLightningModule())
    (version,) = (tmp_path / "lightning_logs").iterdir()
    logged = scalars(version)
    assert set(TRM_TAGS) <= set(logged)
    assert [step for step, _ in logged["loss/total"]] == [1, 2]


def test_own_writer_without_a_tensorboard_logger(tmp_path):
    own = tmp_path / "own"
    callback = TRMLightningCallback(log_dir=own)
    module = TRMLightningModule(SMALL_MODEL, SMALL_REPLAY, batch_size=32)
    fit = trainer(tmp_path, max_steps=3, logger=False, callbacks=[callback])
    fit.fit(module)
    assert sum(isinstance(cb, TRMLightningCallback) for cb in fit.callbacks) == 1  # the module added none
    logged = scalars(own)
    assert [step for step, _ in logged["loss/total"]] == [1, 2, 3]
    assert callback.logger is None  # closed at the end


def test_trm_metrics_maps_components_and_keeps_tags():

    out = {
        "loss": torch.tensor(1.0),
        "total_loss": torch.tensor(2.0),
        "halt/rate": 0.25,
        "lambda_halt": 0.01,
        "other": 3.0,
        "halt/steps": torch.ones(4),
    }
    assert trm_metrics(out) == {"loss/total": 2.0, "halt/rate": 0.25}
    assert trm_metrics(torch.tensor(1.0)) == {}


def test_forward_returns_the_logits_after_max_steps_reasoning_steps():
    module = TRMLightningModule(SMALL_MODEL, SMALL_REPLAY)
    module.train()
    obs = torch.randn(5, 8, module.model.config.n_features)
    logits = module(obs)
    assert logits.shape == (5, 8) and module.training  # train/eval mode is restored
    module.model.eval()
    with torch.no_grad():
        carry = module.model.init_carry(5)
        for _ in range(module.model.config.max_steps):  # an independent rollout of every step
            out = module.model(obs, carry)
            carry = out.carry
    torch.testing.assert_close(logits, out.task_logits)


def test_the_module_defaults_to_the_clis_loss_and_learning_rate():
    from trm_act.config import ExperimentConfig
    from trm_act.loss import TRMLoss

    module = TRMLightningModule(SMALL_MODEL, SMALL_REPLAY)
    cli = ExperimentConfig()
    assert module.loss_fn.extra_repr() == TRMLoss.from_config(cli.loss).extra_repr()
    assert module.lr == cli.train.lr


@pytest.mark.parametrize(("max_steps", "accumulate"), [(4, 1), (50, 1), (50, 2)])
def test_max_steps_run_gets_the_finite_epoch_count_it_spans(tmp_path, max_steps, accumulate):
    # Lightning leaves max_epochs=-1 for a max_steps run and its Rich progress bar then reads "Epoch 1/-2".
    from trm_act.callbacks._deep_supervision import ReplayDataset

    module = TRMLightningModule(SMALL_MODEL, SMALL_REPLAY, batch_size=32)
    fit = trainer(tmp_path, max_steps=max_steps, logger=False, accumulate_grad_batches=accumulate)
    fit.fit(module)
    steps_per_epoch = math.ceil(math.ceil(len(ReplayDataset(module.replay, "train")) / 32) / accumulate)
    assert fit.max_epochs == math.ceil(max_steps / steps_per_epoch) >= 1
    assert fit.global_step == max_steps  # the epoch bound never ends training early


# ------------------------------------------------------------------------------------ strategy="ddp"

# Lightning's CPU ddp starts rank 1 by running this script again (with LOCAL_RANK set), so it is a file.
DDP_SCRIPT = """
import hashlib, json, sys
from pathlib import Path

import lightning
from lightning.pytorch.loggers import TensorBoardLogger
from trm_act.callbacks._deep_supervision import ReplayDataset
from trm_act.callbacks.lightning import TRMLightningModule, trm_metrics
from trm_act.envs import TradeReplayConfig


def fingerprint(obs):
    return hashlib.sha1(obs.contiguous().numpy().tobytes()).hexdigest()


class Recorder(lightning.pytorch.Callback):
    # Each rank's own training_step values by optimizer step, and the samples each epoch fed it.
    def __init__(self):
        self.by_step, self.samples = {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.by_step[trainer.global_step] = trm_metrics(outputs)
        seen = self.samples.setdefault(str(trainer.current_epoch), [])
        seen.extend(fingerprint(obs) for obs in batch["obs"])


if __name__ == "__main__":
    out = Path(sys.argv[1])
    lightning.seed_everything(0, verbose=False)
    module = TRMLightningModule(
        {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_steps": 2},
        TradeReplayConfig(window=8, synthetic={"n_bars": 1500, "seed": 1}),
        batch_size=32,
    )
    recorder = Recorder()
    trainer = lightning.Trainer(
        strategy="ddp", devices=2, accelerator="cpu", max_steps=4, callbacks=[recorder],
        logger=TensorBoardLogger(out / "logs", name="run"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module)
    weights = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        weights.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    record = {
        "world_size": trainer.world_size, "global_step": trainer.global_step,
        "sampler": type(trainer.train_dataloader.sampler).__name__,
        "by_step": recorder.by_step, "samples": recorder.samples, "weights": weights.hexdigest(),
        "dataset": [fingerprint(obs) for obs in ReplayDataset(module.replay, "train").obs],
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
"""


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("lightning_ddp")
    script = out / "fit_ddp.py"
    script.write_text(DDP_SCRIPT)
    result = python(str(script), str(out), cwd=out, timeout=600)  # DDP starts its second rank from there
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return out, ranks


@pytest.mark.slow
def test_ddp_writes_one_event_file_of_rank_mean_metrics(ddp_run):
    out, ranks = ddp_run
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [4, 4]  # the epoch bound of on_fit_start is per rank
    logged = scalars(out / "logs")  # asserts a single event file: rank 1 wrote none
    assert set(TRM_TAGS) <= set(logged)
    for tag in TRM_TAGS:
        assert [step for step, _ in logged[tag]] == [1, 2, 3, 4], tag
        for step, value in logged[tag]:
            assert math.isfinite(value), (tag, step)
            own = [r["by_step"][str(step)][tag] for r in ranks]
            assert value == pytest.approx(sum(own) / 2, rel=1e-5), (tag, step)
    # The ranks trained on different data, so the mean is not rank zero's value.
    for step in ("1", "2", "3", "4"):
        own = [r["by_step"][step]["loss/total"] for r in ranks]
        assert own[0] != pytest.approx(own[1], rel=1e-4), step
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP averaged the gradients


@pytest.mark.slow
def test_ddp_ranks_share_out_each_epoch_and_reshuffle(ddp_run):
    _, ranks = ddp_run
    assert [r["sampler"] for r in ranks] == ["DistributedSampler", "DistributedSampler"]
    dataset = ranks[0]["dataset"]
    first = [set(r["samples"]["0"]) for r in ranks]
    assert [len(r["samples"]["0"]) for r in ranks] == [math.ceil(len(dataset) / 2)] * 2
    assert first[0] | first[1] == set(dataset)  # epoch 0 covers the split once between the two ranks
    assert len(first[0] & first[1]) <= len(dataset) % 2  # only the sampler's padding repeats
    epoch1 = ranks[0]["samples"]["1"]
    assert epoch1 != ranks[0]["samples"]["0"][: len(epoch1)]  # set_epoch reshuffled


def test_sync_ranks_without_a_process_group_is_the_identity():
    from trm_act.callbacks.lightning import mean_over_ranks

    assert mean_over_ranks({"loss/total": 1.5}, world_size=2) == {"loss/total": 1.5}
    with pytest.raises(ValueError, match=r"sync_ranks must be True or False; got 'yes'"):
        TRMLightningCallback(sync_ranks="yes")
