"""``python -m trm_act.export --run RUN --out DIR``: a trained run as ONNX, for ``trm_act.onnx.OnnxPolicy``.

Writes three files into DIR:

- ``encoder.onnx``: observations ``obs`` (B, window, n_features) -> tokens ``x`` (B, window, d_model);
- ``step.onnx``: one reasoning step with its heads: ``x``, answer ``y`` and latent ``z`` (B, window,
  d_model), and for a belief model the decision's ``belief`` (B, d_model) -> ``task_logits`` (B, 8),
  ``halt_logits`` (B,), the next ``y_next`` and ``z_next``, and for a belief model ``proposal`` (B,
  d_model), the belief after the decision if it halts here;
- ``policy.json``: what the runtime needs beside the graphs: the initial y, z and belief, max_steps, the
  window, the decision cadence and the run's env options.

The halting loop is not in the graphs: the runtime runs ``step`` until the halting rule fires, per row,
as :class:`trm_act.Policy` does, so the export keeps per-sample halting. The batch axis is dynamic.
Exported with torch's TorchScript-based exporter (``dynamo=False``, opset 17), which needs no package
beyond torch; ``onnxruntime`` (``pip install "trm-act[onnx]"``) checks the export against torch.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from trm_act.files import write_json
from trm_act.model import RecurrentTRM, TRMCarry
from trm_act.policy import Policy

__all__ = ["EXPORT_FORMAT", "export_onnx"]

EXPORT_FORMAT = "trm_act.onnx/1"
"""Written into policy.json; OnnxPolicy refuses a directory of another format."""
OPSET = 17
ENCODER_FILE, STEP_FILE, META_FILE = "encoder.onnx", "step.onnx", "policy.json"
EXIT_USAGE = 2


class _Encoder(nn.Module):
    def __init__(self, model: RecurrentTRM) -> None:
        super().__init__()
        self.model = model

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.model.encode(obs)  # (B, W, D)


class _Step(nn.Module):
    """One reasoning step from explicit tensors (the carry as separate inputs and outputs)."""

    def __init__(self, model: RecurrentTRM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, belief: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        carry = TRMCarry(y, z) if belief is None else TRMCarry(y, z, belief, belief)
        out = self.model.step(x, carry)
        outputs = (out.task_logits, out.halt_logits, out.carry.y, out.carry.z)  # (B, C), (B,), 2 x (B, W, D)
        return outputs if belief is None else (*outputs, out.carry.proposal)  # + (B, D)


def export_onnx(policy: Policy, out: str | Path) -> Path:
    """Write ``encoder.onnx``, ``step.onnx`` and ``policy.json`` for ``policy`` into ``out``; returns ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file; pass a directory (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    model = policy.model.eval()
    config = model.config
    b, w, d = 2, config.window, config.d_model
    obs = torch.zeros(b, w, config.n_features)
    carry = model.init_carry(b)
    step_args: tuple[torch.Tensor, ...] = (torch.zeros(b, w, d), carry.y.contiguous(), carry.z.contiguous())
    step_inputs = ["x", "y", "z"]
    step_outputs = ["task_logits", "halt_logits", "y_next", "z_next"]
    if model.has_belief:
        step_args += (carry.belief.contiguous(),)
        step_inputs.append("belief")
        step_outputs.append("proposal")
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns that it is deprecated and that traced shape checks become constants;
        # the export is checked numerically instead (verify_onnx).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Encoder(model),
            (obs,),
            str(out / ENCODER_FILE),
            dynamo=False,
            opset_version=OPSET,
            input_names=["obs"],
            output_names=["x"],
            dynamic_axes={"obs": batch, "x": batch},
        )
        torch.onnx.export(
            _Step(model),
            step_args,
            str(out / STEP_FILE),
            dynamo=False,
            opset_version=OPSET,
            input_names=step_inputs,
            output_names=step_outputs,
            dynamic_axes={name: batch for name in step_inputs + step_outputs},
        )

    def vector(t: torch.Tensor) -> list[float]:
        return t.detach().float().cpu().numpy().astype(np.float64).tolist()  # exact: float32 fits in float64

    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "files": {"encoder": ENCODER_FILE, "step": STEP_FILE},
        "window": config.window,
        "n_features": config.n_features,
        "d_model": config.d_model,
        "num_classes": config.num_classes,
        "max_steps": policy.max_steps,
        "belief": model.has_belief,
        "stride": policy.stride,
        "strategies": list(policy.strategies),
        "env": policy.env,
        "model_config": config.to_dict(),
        "y_init": vector(model.y_init),
        "z_init": vector(model.z_init),
        "belief_init": vector(model.belief_init) if model.has_belief else None,
        "source": policy.source,
        "step": policy.step,
        "weights": policy.weights,
        "opset": OPSET,
        "torch": torch.__version__,
    }
    write_json(out / META_FILE, meta)
    return out


def verify_onnx(policy: Policy, out: str | Path, n: int = 64, seed: int = 0) -> float | None:
    """Largest |logit difference| between onnxruntime and torch on ``n`` random windows (None without
    onnxruntime); raises ValueError when a decision or a step count differs."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from trm_act.onnx import OnnxPolicy

    onnx_policy = OnnxPolicy.load(out, threads=1)
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, policy.window, policy.engine.n_features)).astype(np.float32)  # (N, W, F)
    belief = policy.engine.initial_belief()
    beliefs = None if belief is None else np.tile(belief, (n, 1))  # (N, D)
    ours, theirs = policy.engine.run(obs, beliefs), onnx_policy.engine.run(obs, beliefs)
    if not np.array_equal(ours.steps, theirs.steps) or not np.array_equal(
        ours.logits.argmax(1), theirs.logits.argmax(1)
    ):
        raise ValueError(
            f"{out}: onnxruntime's decisions differ from torch's on random windows; do not use it"
        )
    return float(np.abs(ours.logits - theirs.logits).max())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user mistake)."""
    parser = _Parser(
        prog="python -m trm_act.export", description="Export a trained run as ONNX for trm_act.onnx."
    )
    parser.add_argument(
        "--run", required=True, help="run directory of python -m trm_act.train, or its checkpoint.pt"
    )
    parser.add_argument("--out", required=True, help="directory for encoder.onnx, step.onnx and policy.json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    try:
        policy = Policy.load(args.run)
        out = export_onnx(policy, args.out)
        diff = verify_onnx(policy, out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    carry = "belief" if policy.has_belief else "fresh"
    check = (
        "install onnxruntime (pip install 'trm-act[onnx]') to run and check it"
        if diff is None
        else f"onnxruntime matches torch (decisions, steps; logits within {diff:.1e}) on 64 random windows"
    )
    print(
        f"wrote {out / ENCODER_FILE}, {out / STEP_FILE}, {out / META_FILE} ({carry} carry, window {policy.window}, "
        f"max {policy.max_steps} steps); {check}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
