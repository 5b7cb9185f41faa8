"""Read TensorBoard event files back, as the tests check them."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# The documented tags (README, TensorBoard), spelled out here rather than imported so a tag dropped from the code fails.
TRM_TAGS = (
    "loss/total",
    "loss/halt",
    "loss/task",
    "loss/profit_weighted_task",
    "halt/rate",
    "halt/mean_steps",
)
REQUIRED_SCALARS = {*TRM_TAGS, "train/accuracy", "train/pnl", "eval/accuracy", "eval/mean_steps", "eval/pnl"}


def event_files(root: str | Path) -> list[Path]:
    """Every event file below ``root``, sorted."""
    return sorted(Path(root).rglob("events.out.tfevents.*"))


def read_events(run_dir: str | Path) -> EventAccumulator:
    """All scalars and histograms of the run in ``run_dir`` (no sampling)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def scalars(root: str | Path, n_files: int = 1) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the run below ``root``, asserting it has ``n_files`` event files."""
    files = event_files(root)
    assert len(files) == n_files, f"expected {n_files} event file(s) under {root}, found {files}"
    events = read_events(files[0].parent)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
