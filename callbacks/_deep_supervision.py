"""What the Lightning and HF adapters share: the replay as a Dataset, the model config, and the training loop.

The loop is :func:`trm_act.supervision.deep_supervision` (re-exported here), the one the trainer's unrolled mode
runs too, so every ``halt/*`` and ``train/*`` tag means what it means in the trainer. Framework-free (torch only,
plus trm_act's own model, loss and replay data), so both ``trm_act.callbacks.lightning`` and
``trm_act.callbacks.hf`` build on it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from trm_act.model import TRMConfig
from trm_act.supervision import Supervised, deep_supervision

__all__ = ["ReplayDataset", "Supervised", "deep_supervision", "resolve_model_config"]


class ReplayDataset(Dataset):
    """Decision points of one split of a trade replay as ``{"obs", "labels", "strategy_pnl", "label_pnl"}`` dicts.

    ``obs`` (window, n_features) float32, ``labels`` int64 (the label of the replay's ``label_source``),
    ``strategy_pnl`` (8,) float32 (every strategy's realized PnL over the trade's horizon: the reward),
    ``label_pnl`` (8,) float32 (every strategy's PnL over the labels' horizon: what supervises, as
    ``info["label_pnl"]`` in the trainer). Observations are materialized once.
    """

    def __init__(self, replay: Any, split: str = "train"):
        indices = replay.split_indices(split)
        if len(indices) == 0:
            raise ValueError(
                f"The replay's {split!r} split has no decision points; use more bars or another split."
            )
        self.obs = torch.as_tensor(replay.observations(indices), dtype=torch.float32)  # (N, W, F)
        self.labels = torch.as_tensor(replay.labels[indices], dtype=torch.long)  # (N,)
        self.strategy_pnl = torch.as_tensor(replay.strategy_pnl[indices], dtype=torch.float32)  # (N, C)
        self.label_pnl = torch.as_tensor(replay.label_pnl[indices], dtype=torch.float32)  # (N, C)

    def __len__(self) -> int:
        return self.obs.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            "obs": self.obs[index],
            "labels": self.labels[index],
            "strategy_pnl": self.strategy_pnl[index],
            "label_pnl": self.label_pnl[index],
        }


def resolve_model_config(model_config: TRMConfig | Mapping[str, Any] | None, replay: Any) -> TRMConfig:
    """``TRMConfig`` sized to the replay's observations.

    None: TRMConfig's defaults with a fresh carry; a mapping: those defaults updated by its fields (``window`` /
    ``n_features`` default to the replay's, ``carry`` to "fresh"); a TRMConfig: checked against the replay. The
    adapters train on shuffled decisions, which have no stream to carry a belief along (each would start from the
    initial belief, and the revisions it proposes would never be trained), so their default carry is fresh.
    """
    window, n_features = replay.window, replay.n_features
    if model_config is None or isinstance(model_config, Mapping):
        fields = {"window": window, "n_features": n_features, "carry": "fresh", **(model_config or {})}
        model_config = TRMConfig(**fields)
    if not isinstance(model_config, TRMConfig):
        raise ValueError(
            f"model_config must be a TRMConfig, a dict of its fields or None; got {type(model_config).__name__}."
        )
    if (model_config.window, model_config.n_features) != (window, n_features):
        raise ValueError(
            f"model_config has window={model_config.window}, n_features={model_config.n_features} but the replay's "
            f"observations are ({window}, {n_features}); set TRMConfig(window={window}, n_features={n_features})."
        )
    return model_config
