"""``trm_act.onnx.OnnxPolicy``: an exported run (``python -m trm_act.export``) on onnxruntime, without torch.

``OnnxPolicy.load(DIR)`` reads ``encoder.onnx``, ``step.onnx`` and ``policy.json``; ``decide(frame)``,
``stream()`` and the decision cadence are those of :class:`trm_act.Policy` (both are a
:class:`trm_act.runtime.DecisionRuntime`), and the features are computed by the same numpy/pandas code.
The halting loop runs here, in numpy: every row takes reasoning steps until its halt logit is positive
or it reaches ``max_steps`` (the rule of :func:`trm_act.act.halt_rule` at inference), and halted rows
leave the batch. Needs ``pip install "trm-act[onnx]"`` (onnxruntime), and neither torch nor this
package's torch modules are imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trm_act.runtime import DecisionRuntime, Outcome

__all__ = ["OnnxEngine", "OnnxPolicy"]

EXPORT_FORMAT = "trm_act.onnx/1"  # trm_act.export.EXPORT_FORMAT (not imported: that module needs torch)
META_FILE = "policy.json"


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            'trm_act.onnx needs onnxruntime; install it with pip install "trm-act[onnx]" (or pip install onnxruntime)'
        ) from exc
    return onnxruntime


class OnnxEngine:
    """The exported encoder and reasoning step as a :class:`trm_act.runtime.Engine`."""

    def __init__(self, directory: str | Path, meta: dict[str, Any], threads: int | None = None) -> None:
        ort = _onnxruntime()
        directory = Path(directory)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        files = meta["files"]
        self.encoder = ort.InferenceSession(str(directory / files["encoder"]), options, providers=providers)
        self.step = ort.InferenceSession(str(directory / files["step"]), options, providers=providers)
        self.window = int(meta["window"])
        self.n_features = int(meta["n_features"])
        self.max_steps = int(meta["max_steps"])
        self.num_classes = int(meta["num_classes"])
        self.has_belief = bool(meta["belief"])
        self.y_init = np.asarray(meta["y_init"], dtype=np.float32)  # (D,)
        self.z_init = np.asarray(meta["z_init"], dtype=np.float32)  # (D,)
        self.belief_init = (
            np.asarray(meta["belief_init"], dtype=np.float32) if self.has_belief else None
        )  # (D,)

    def initial_belief(self) -> np.ndarray | None:
        return None if self.belief_init is None else self.belief_init.copy()

    def run(self, obs: np.ndarray, belief: np.ndarray | None) -> Outcome:
        """Halt each row of ``obs`` (B, W, F) float32; ``belief`` (B, D) float32 or None."""
        (x,) = self.encoder.run(None, {"obs": np.ascontiguousarray(obs, dtype=np.float32)})  # (B, W, D)
        b = x.shape[0]
        y = np.ascontiguousarray(np.broadcast_to(self.y_init, x.shape))  # (B, W, D)
        z = np.ascontiguousarray(np.broadcast_to(self.z_init, x.shape))  # (B, W, D)
        if self.has_belief:
            if belief is None:
                belief = np.tile(self.belief_init, (b, 1))  # (B, D)
            belief = np.ascontiguousarray(belief, dtype=np.float32)
        logits = np.zeros((b, self.num_classes), np.float32)  # (B, C) filled as rows halt
        halt_logits = np.zeros(b, np.float32)  # (B,)
        beliefs = np.zeros_like(belief) if self.has_belief else None  # (B, D)
        steps = np.full(b, self.max_steps, np.int64)  # (B,)
        active = np.arange(b)  # (A,) original row of each active row
        for s in range(1, self.max_steps + 1):
            feed = {"x": x, "y": y, "z": z}
            if self.has_belief:
                feed["belief"] = belief
            task, halt, y, z, *proposal = self.step.run(None, feed)  # (A, C), (A,), 2 x (A, W, D)[, (A, D)]
            halted = (halt > 0) | (s >= self.max_steps)  # (A,) halt_rule without an exploration floor
            rows = active[halted]  # (H,)
            logits[rows] = task[halted]
            halt_logits[rows] = halt[halted]
            if beliefs is not None:
                beliefs[rows] = proposal[0][halted]
            steps[rows] = s
            keep = np.flatnonzero(~halted)  # (A',)
            if keep.size == 0:
                break
            if keep.size < active.size:  # compact: later steps only see the active rows
                active, x, y, z = active[keep], x[keep], y[keep], z[keep]
                if self.has_belief:
                    belief = belief[keep]
        return Outcome(logits=logits, steps=steps, halt_logits=halt_logits, belief=beliefs)


class OnnxPolicy(DecisionRuntime):
    """An exported run: the same ``decide``, ``stream`` and ``stream_batch`` as :class:`trm_act.Policy`."""

    def __init__(self, engine: OnnxEngine, env: Any) -> None:
        super().__init__(engine, env)
        self.source: str | None = None

    @classmethod
    def load(cls, directory: str | Path, *, threads: int | None = None) -> OnnxPolicy:
        """Load ``python -m trm_act.export``'s directory; ``threads``: onnxruntime's intra-op threads (None =
        its default). Raises ValueError (one line) when the directory is not such an export."""
        directory = Path(directory)
        meta_file = directory / META_FILE
        if not meta_file.is_file():
            raise ValueError(
                f"{directory}: no {META_FILE}; pass a directory written by python -m trm_act.export --out DIR"
            )
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{meta_file}: cannot read it ({exc}); export the run again") from None
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(
                f"{meta_file}: format {found!r}, expected {EXPORT_FORMAT!r}; export the run again with this version"
            )
        required = (
            "files",
            "window",
            "n_features",
            "num_classes",
            "max_steps",
            "belief",
            "stride",
            "env",
            "y_init",
        )
        missing = [key for key in required if key not in meta]
        if missing:
            raise ValueError(f"{meta_file}: missing {', '.join(missing)}; export the run again")
        for name in meta["files"].values():
            if not (directory / name).is_file():
                raise ValueError(f"{directory}: {name} is missing; export the run again")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads={threads!r}: expected an int >= 1 or None (onnxruntime's default)")
        policy = cls(OnnxEngine(directory, meta, threads), meta["env"])
        if policy.stride != meta["stride"]:
            raise ValueError(
                f"{meta_file}: stride {meta['stride']} disagrees with its env options; export again"
            )
        policy.source = str(directory)
        return policy

    def _repr_fields(self) -> list[str]:
        return [f"source={self.source!r}"]
