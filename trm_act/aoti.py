"""One reasoning step for a batch of one row, compiled ahead of time by AOTInductor: a stream's hot path.

A streaming update of the default model is ~4 reasoning steps on one row. On the developers' 2-core Xeon
(AVX-512, one-thread fp32 matmul 211 GFLOP/s), under ``torch.compile`` each step costs ~0.25 ms on one thread, of which ~0.18 ms is inductor's kernels and the rest Dynamo's guard checks and
Python wrappers around them. The same graph compiled by AOTInductor into a shared library and called through its
C++ runner costs ~0.15 ms (``python -m trm_act.bench predict`` measures the stream end to end).

The model's parameters and buffers are inputs of the compiled graph, not constants baked into it, so the
library reads the live weights (``load_state_dict`` after building keeps working) and does not depend on them;
:meth:`LoneRowStep.fits` tells the caller when the weights changed dtype, device or shape under it.
The library depends only on the traced graph, torch's version and the CPU features the kernels target, so it
is cached on disk under inductor's cache directory (``TORCHINDUCTOR_CACHE_DIR``; by default under the system
temp folder), keyed by a hash of those: the first build on a machine takes ~15-20 s, later ones load in ~2 s
(the trace is repeated to compute the key).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

__all__ = ["LoneRowStep"]

# Environment variables that change the kernels inductor writes (the instruction sets it may use).
_KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "TORCHINDUCTOR_CPP_SIMDLEN")


class _Stepper(torch.nn.Module):
    """``flat_step`` as a module's forward, with the model as its submodule (what ``functional_call`` needs)."""

    def __init__(self, model: torch.nn.Module, flat_step: Callable[..., tuple]) -> None:
        super().__init__()
        self.model = model
        self.flat_step = flat_step

    def forward(self, *carry: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in self.flat_step(*carry) if t is not None)


class _WeightsAsInputs(torch.nn.Module):
    """A :class:`_Stepper` with every parameter and buffer of its model passed in after the carry tensors."""

    def __init__(self, stepper: _Stepper, names: list[str], n_carry: int) -> None:
        super().__init__()
        self.stepper = stepper
        self.names = [f"model.{name}" for name in names]
        self.n_carry = n_carry

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        carry, weights = inputs[: self.n_carry], inputs[self.n_carry :]
        return torch.func.functional_call(self.stepper, dict(zip(self.names, weights, strict=True)), carry)


class LoneRowStep:
    """``flat_step(*carry)`` for one row, as an AOTInductor library: carry tensors in, their successors out.

    ``flat_step`` maps the carry tensors (x, y, z and, for a belief model, belief and proposal; None entries
    are left out) to a tuple of output tensors (None entries are dropped). ``example`` fixes the shapes and
    dtypes every later call must have; calls are not checked (the caller guarantees a batch of one row on the
    CPU, in the example's dtypes).
    """

    def __init__(
        self, model: torch.nn.Module, flat_step: Callable[..., tuple], example: tuple[torch.Tensor, ...]
    ) -> None:
        state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        self._weights = list(state.values())  # live tensors: load_state_dict copies into them
        self._specs = [_spec(t) for t in self._weights]
        wrapper = _WeightsAsInputs(_Stepper(model, flat_step), list(state), len(example))
        # distinct copies: export traces two inputs that are one tensor (a fresh carry's belief and proposal)
        # as one input, and the library would then read one for the other
        inputs = tuple(t.detach().clone() for t in (*example, *self._weights))
        with torch.no_grad():
            program = torch.export.export(wrapper, inputs)
        package = _package_path(program, inputs)
        if not package.is_file():
            _build(program, package)
        try:
            self._run = _load(package)
        except (RuntimeError, OSError, ValueError):  # a damaged cache entry: build it again
            _build(program, package)
            self._run = _load(package)
        self.package = package

    def __call__(self, *carry: torch.Tensor) -> list[torch.Tensor]:
        return self._run([*carry, *self._weights])

    def fits(self) -> bool:
        """Whether the weights still have the dtypes, devices and shapes the library was built for (``model.to``
        and ``model.double`` change them in place, and the library would read them as float32 regardless).
        A parameter replaced by a new tensor object (``load_state_dict(..., assign=True)``) is not seen."""
        return all(_spec(t) == spec for t, spec in zip(self._weights, self._specs, strict=True))


def _spec(t: torch.Tensor) -> tuple[torch.dtype, torch.device, torch.Size]:
    return t.dtype, t.device, t.shape


def _package_path(program: torch.export.ExportedProgram, inputs: tuple[torch.Tensor, ...]) -> Path:
    """Where the library of ``program`` is cached: a hash of its graph, input specs, torch and the CPU."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    digest = hashlib.sha256()
    for part in (
        torch.__version__,
        platform.machine(),
        _cpu_flags(),
        *(f"{name}={os.environ.get(name, '')}" for name in _KERNEL_ENV),
        *(f"{tuple(t.shape)}:{t.dtype}:{t.device}" for t in inputs),
        program.graph_module.print_readable(print_output=False),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return Path(cache_dir()) / "trm_act_aoti" / f"{digest.hexdigest()[:32]}.pt2"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), which decide the kernels' instruction sets."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Mute a FutureWarning torch raises while copying its own tree specs (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
        yield


def _load(package: Path) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """The library's runner: a flat list of input tensors in, a flat list of outputs out."""
    with _quiet_torch():
        runner = torch._inductor.aoti_load_package(str(package))
    # the package's C++ runner, without the pytree handling of runner(*args) (~35 us a call)
    loader = getattr(runner, "loader", None)
    return loader.run if loader is not None else lambda args: list(runner(*args))


def _build(program: torch.export.ExportedProgram, package: Path) -> None:
    """Compile ``program`` into ``package``, atomically: a concurrent process sees all of it or none."""
    package.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(suffix=".pt2", dir=package.parent)
    os.close(fd)
    try:
        with _quiet_torch():
            torch._inductor.aoti_compile_and_package(program, package_path=scratch)
        os.replace(scratch, package)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
