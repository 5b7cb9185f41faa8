"""Recurrent Tiny Recursive Model (TRM): one reasoning step per call, carry in and carry out.

The model follows TRM (Jolicoeur-Martineau 2025, "Less is More: Recursive Reasoning with Tiny
Networks"): one small shared network ``net`` refines a latent ``z`` and an answer ``y``. A reasoning
step runs ``n_cycles`` (T) cycles; each cycle does ``n_latent`` (n) latent updates
``z = net(x + y + z)`` and then one answer update ``y = net(y + z)``. The first T-1 cycles run
without gradient and only the last cycle is backpropagated (TRM's "deep recursion"), and the carry
handed back is detached, so a reasoning step costs the same memory whatever step it is.

Halting is not decided here: the model emits a halt logit and :mod:`trm_act.act` applies the single
halting rule. The model knows nothing about markets or environments: it maps observations of shape
(B, window, n_features) to 8 strategy logits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Annotated, Literal, NamedTuple

import torch
import torch.nn.functional as F
import tyro
from torch import nn

from trm_act.shapes import N_FEATURES, N_STRATEGIES, WINDOW

__all__ = [
    "BELIEF_SOURCES",
    "CARRIES",
    "GRAPHS",
    "MIXERS",
    "NORMS",
    "POOLINGS",
    "RecurrentTRM",
    "StepOutput",
    "TRMCarry",
    "TRMConfig",
    "scale_gradient",
]


def _rms_norm(h: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Parameter-free RMSNorm computed in float32 (safe under bf16 autocast), returned in h's dtype."""
    h32 = h.float()
    return (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)


class AttentionMixer(nn.Module):
    """Bidirectional multi-head self-attention over the window (every bar is already in the past).

    With ``attn_radius`` r > 0 the attention is banded: a bar sees the bars at most r away. Eager mode runs
    it as SDPA with a (W, W) mask (one flash kernel, the fastest eager form measured); under
    ``torch.compile`` it runs :meth:`banded`, which scores only the 2r + 1 neighbours and which inductor
    fuses into a few loops (fewer FLOPs and no W x W scores; ``python -m trm_act.bench train``). Both give
    the same numbers up to float rounding (tests/test_model.py).
    """

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.radius = config.attn_radius
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = config.dropout
        mask = band_bias = None
        if config.attn_radius > 0:  # banded attention: each bar sees bars at most attn_radius away
            pos = torch.arange(config.window)
            mask = (pos[:, None] - pos[None, :]).abs() <= config.attn_radius  # (W, W) True = may attend
            offsets = torch.arange(-config.attn_radius, config.attn_radius + 1)  # (2r+1,)
            neighbour = pos[:, None] + offsets[None, :]  # (W, 2r+1) index of each neighbour
            outside = (neighbour < 0) | (neighbour >= config.window)  # neighbours beyond the window's edges
            band_bias = torch.zeros(outside.shape).masked_fill(outside, float("-inf"))[:, None, :]  # (W, 1, 2r+1)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("band_bias", band_bias, persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.radius > 0 and torch.compiler.is_compiling():
            return self.banded(h)
        b, w, d = h.shape
        qkv = self.qkv(h).view(b, w, 3, self.n_heads, d // self.n_heads)  # (B, W, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, W, D/H)
        p = self.dropout if self.training else 0.0
        # A window cut to its last w bars (answer_bars; the whole: w = W): only its last bars are exact, its first
        # r bars miss their left neighbours here and see zero padding in banded(); no answer reads them.
        mask = None if self.mask is None else self.mask[-w:, -w:]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, W, D/H)
        return self.out(a.transpose(1, 2).reshape(b, w, d))  # (B, W, D)

    def banded(self, h: torch.Tensor) -> torch.Tensor:
        """The banded attention as 2r + 1 shifted products: what a band costs, not what a W x W mask costs."""
        b, w, d = h.shape
        r, head = self.radius, d // self.n_heads
        q, k, v = self.qkv(h).view(b, w, 3, self.n_heads, head).unbind(2)  # 3 x (B, W, H, D/H)
        k, v = F.pad(k, (0, 0, 0, 0, r, r)), F.pad(v, (0, 0, 0, 0, r, r))  # (B, W+2r, H, D/H)
        scores = torch.stack([(q * k[:, j : j + w]).sum(-1) for j in range(2 * r + 1)], dim=-1)  # (B, W, H, 2r+1)
        bias = self.band_bias[-w:].to(scores.dtype)  # (w, 1, 2r+1) a cut window's last w bars, as in forward
        weights = (scores * head**-0.5 + bias).softmax(dim=-1)  # (B, W, H, 2r+1)
        weights = F.dropout(weights, self.dropout, self.training)
        a = sum(weights[..., j : j + 1] * v[:, j : j + w] for j in range(2 * r + 1))  # (B, W, H, D/H)
        return self.out(a.reshape(b, w, d))  # (B, W, D)


class TokenMLPMixer(nn.Module):
    """MLP-mixer token mixing: an MLP across the window, shared over channels.

    TRM found the attention-free mixer better on small fixed contexts (Sudoku); the window here is
    also small and fixed, so both are offered.
    """

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        hidden = max(1, round(config.mlp_ratio * config.window))
        self.up = nn.Linear(config.window, hidden)
        self.down = nn.Linear(hidden, config.window)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t = h.transpose(1, 2)  # (B, D, W): mix along the window
        return self.down(F.gelu(self.up(t))).transpose(1, 2)  # (B, W, D)


# Explicit registry of token mixers: TRMConfig.mixer must name one of these.
MIXERS: dict[str, Callable[[TRMConfig], nn.Module]] = {
    "attention": AttentionMixer,
    "mlp": TokenMLPMixer,
}

# How the answer y is pooled over the window before the heads.
POOLINGS = ("mean", "last")

# Where each block normalises (TRMConfig.norm).
NORMS = ("post", "pre")

# What survives from one decision to the next (TRMConfig.carry).
CARRIES = ("fresh", "belief")

# What a belief's revision reads (TRMConfig.belief_source).
BELIEF_SOURCES = ("answer", "evidence")

# What forward's autograd graph covers (TRMConfig.graph).
GRAPHS = ("answer", "window")


class SwiGLU(nn.Module):
    """Channel MLP with a SwiGLU gate, as in TRM's blocks."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        hidden = max(1, round(config.mlp_ratio * config.d_model))
        self.gate_up = nn.Linear(config.d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, config.d_model, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(h).chunk(2, dim=-1)  # 2 x (B, W, hidden)
        return self.down(F.silu(gate) * up)  # (B, W, D)


class Block(nn.Module):
    """Residual block, post-norm as in TRM (h = norm(h + f(h))) or pre-norm (h = h + f(norm(h)))."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.mix = MIXERS[config.mixer](config)
        self.mlp = SwiGLU(config)
        self.drop = nn.Dropout(config.dropout)
        self.pre_norm = config.norm == "pre"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in (self.mix, self.mlp):
            if self.pre_norm:  # the residual stream stays linear in the input: features pass through as-is
                h = h + self.drop(layer(_rms_norm(h)))  # (B, W, D)
            else:
                h = _rms_norm(h + self.drop(layer(h)))  # (B, W, D)
        return h


def scale_gradient(t: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``t``'s value exactly, passing ``scale`` times its gradient back (``scale`` broadcasts against ``t``)."""
    kept = t.detach()
    return kept + scale * (t - kept)


def _is_int_at_least(value: object, low: int) -> bool:
    """Whether ``value`` is an int (a bool is not) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclass
class TRMConfig:
    """Hyperparameters of RecurrentTRM. The defaults are the model that python -m trm_act.train trains, chosen on
    validation markets (docs/results.md, "How the recipe was chosen") and sized so that the default run finishes
    within minutes on 2 CPU cores."""

    # window, n_features and num_classes follow the data; the CLI derives them from the env (no flags). Their
    # defaults are the trade-replay env's shape (trm_act.shapes), so TRMConfig() reads its observations as they are.
    window: Annotated[int, tyro.conf.Suppress] = WINDOW
    """Bars per observation (the W of obs (B, W, F)); one token per bar."""
    n_features: Annotated[int, tyro.conf.Suppress] = N_FEATURES
    """Features per bar (the F of obs (B, W, F)); must match the environment's observation."""
    num_classes: Annotated[int, tyro.conf.Suppress] = N_STRATEGIES
    """Width of the task head: one logit per strategy."""
    d_model: int = 32
    """Token width of the encoder, the latent z and the answer y."""
    n_layers: int = 2
    """Blocks in the single shared network net (TRM uses 2)."""
    norm: Literal["post", "pre"] = "pre"
    """Where each block normalises: "post" (TRM: h = norm(h + f(h))) or "pre" (h = h + f(norm(h)); y and z are
    normalised once per reasoning step, where they are handed on, so that the recursion keeps unit scale). "pre"
    keeps the features' scale in the residual stream, which TRM's post-norm rescales at every token."""
    mixer: Literal["attention", "mlp"] = "attention"
    """Token mixer in each block, one of MIXERS: "attention" or "mlp" (MLP-mixer over the window; cheaper)."""
    n_heads: int = 4
    """Attention heads (mixer="attention" only); must divide d_model."""
    attn_radius: int = 2
    """Local attention: a bar attends to bars at most this far away (0 = the whole window), so what the decision
    bar has read grows with every reasoning step. Only for mixer="attention" (the MLP mixer mixes all bars)."""
    mlp_ratio: float = 2.0
    """Hidden width of the MLPs as a multiple of d_model (channel MLP) or of window (token MLP)."""
    n_latent: int = 1
    """n: latent updates z = net(x + y + z) per cycle, before each answer update y = net(y + z)."""
    n_cycles: int = 1
    """T: cycles per reasoning step; the first T-1 run without gradient, the last with gradient. TRM uses 3. One
    cycle per step learned as much as two on both market families' validation markets, at half a step's compute
    (docs/thinking.md, section 11)."""
    max_steps: int = 4
    """Cap on reasoning steps per sample for ACT (training and act_predict's default)."""
    pool: Literal["mean", "last"] = "last"
    """How y is pooled over the window for the heads: "last" (the decision bar, what the banded attention grows
    around) or "mean"."""
    halt_bias_init: float = -5.0
    """Initial bias of the halt head (TRM: -5), so that halting is learned rather than assumed."""
    halt_exploration_prob: float = 0.1
    """Fraction of new training samples that draw a minimum step count in [2, max_steps]."""
    halt_grad: float = 1.0
    """Share of the halt loss's gradient that reaches the shared network: 1 (TRM, HRM: the halt loss trains the
    features the answer reads too), 0 (only the halt head learns from halting, on the answer's detached features,
    so that a noisy halt target cannot bend what the answer reads) or a share in between. The halt logits are the
    same whatever it is; only their gradient is scaled. 0 did better on the synthetic markets' validation runs, but
    kept later steps from learning in the ACT test where thinking pays (docs/thinking.md, section 11)."""
    graph: Literal["answer", "window"] = "answer"
    """What forward's autograd graph covers: "answer" (the window's last bars that the heads' outputs depend on,
    RecurrentTRM.answer_bars(); the whole window runs once more without a graph, for the carry) or "window"
    (every bar: the plain step, as commit 1d55271 ran it, the benchmarks' peer). The outputs and gradients are the
    same up to float rounding; "answer" trains faster wherever the mixer is local and the heads read the decision
    bar."""
    dropout: float = 0.0
    """Dropout inside the blocks (training only)."""
    carry: Literal["fresh", "belief"] = "belief"
    """What survives from one decision to the next: "belief" (the default: a belief vector persists across the
    decisions of one episode and instrument: every reasoning step reads it into the tokens and proposes a revision
    of it from its answer, and the proposal of the step that halts becomes the next decision's belief) or "fresh"
    (every decision starts from the initial y and z and sees only its window). The belief earned more than a
    fresh carry on the validation markets of the slow family and as much on today's (docs/thinking.md §17)."""
    belief_source: Literal["answer", "evidence"] = "answer"
    """What a belief's revision reads (BELIEF_SOURCES), with carry="belief": "answer" (each step's pooled answer, so
    the revision handed on depends on the step that halts) or "evidence" (the decision's own tokens, pooled as the
    answer is, before the belief is read: every step proposes the same revision, so how long a decision thinks
    changes its answer but never the belief later decisions inherit)."""

    def __post_init__(self) -> None:
        for name in (
            "window",
            "n_features",
            "d_model",
            "n_layers",
            "n_heads",
            "n_latent",
            "n_cycles",
            "max_steps",
        ):
            value = getattr(self, name)
            if not _is_int_at_least(value, 1):
                raise ValueError(
                    f"TRMConfig.{name} must be an integer >= 1, got {value!r}; pass a positive int."
                )
        if not _is_int_at_least(self.attn_radius, 0):
            raise ValueError(
                f"TRMConfig.attn_radius must be an integer >= 0 (0 = global attention), got {self.attn_radius!r}."
            )
        if not _is_int_at_least(self.num_classes, 2):
            raise ValueError(f"TRMConfig.num_classes must be an integer >= 2, got {self.num_classes!r}.")
        for name, choices, kind in (
            ("mixer", sorted(MIXERS), "mixer"),
            ("norm", list(NORMS), "placement"),
            ("carry", list(CARRIES), "carry"),
            ("belief_source", list(BELIEF_SOURCES), "belief source"),
            ("pool", list(POOLINGS), "pooling"),
            ("graph", list(GRAPHS), "graph"),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(
                    f"TRMConfig.{name}={value!r} is not a known {kind}; choose one of {choices}."
                )
        if self.mixer == "attention" and self.d_model % self.n_heads:
            raise ValueError(
                f"TRMConfig.n_heads={self.n_heads} must divide d_model={self.d_model}; "
                "pick n_heads among the divisors of d_model."
            )
        if not (
            isinstance(self.mlp_ratio, (int, float)) and math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0
        ):
            raise ValueError(f"TRMConfig.mlp_ratio must be a finite number > 0, got {self.mlp_ratio!r}.")
        if not (isinstance(self.halt_bias_init, (int, float)) and math.isfinite(self.halt_bias_init)):
            raise ValueError(
                f"TRMConfig.halt_bias_init must be a finite number, got {self.halt_bias_init!r}."
            )
        if not (
            isinstance(self.halt_exploration_prob, (int, float)) and 0.0 <= self.halt_exploration_prob <= 1.0
        ):
            raise ValueError(
                f"TRMConfig.halt_exploration_prob must lie in [0, 1], got {self.halt_exploration_prob!r}."
            )
        if isinstance(self.halt_grad, bool):  # configs saved when it was a switch: True = 1, False = 0
            self.halt_grad = float(self.halt_grad)
        if not (isinstance(self.halt_grad, (int, float)) and 0.0 <= self.halt_grad <= 1.0):
            raise ValueError(
                f"TRMConfig.halt_grad must lie in [0, 1] (1 = TRM, 0 = halt head alone), got {self.halt_grad!r}."
            )
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"TRMConfig.dropout must lie in [0, 1), got {self.dropout!r}.")

    def to_dict(self) -> dict[str, object]:
        """Plain dict of the fields (for checkpoints and logged hyperparameters)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> TRMConfig:
        """The config a checkpoint saved (``to_dict``). A field the saving version did not have takes the value
        that version built (``ABSENT_FIELDS``), not today's default, so an old model is rebuilt as it trained."""
        return cls(**{**{k: v for k, v in ABSENT_FIELDS.items() if k not in values}, **values})


# The value a config saved before a field existed stands for: that version's behaviour, which may differ from
# the field's default today (an old post-norm model must not be rebuilt pre-norm).
ABSENT_FIELDS: dict[str, object] = {"norm": "post", "carry": "fresh"}


def _rows_where(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Rows of ``new`` where ``mask`` (B,) is True, of ``old`` elsewhere (torch.where, no host sync)."""
    m = mask.view(-1, *([1] * (old.dim() - 1)))  # (B, 1, ...) broadcast over the row's trailing dims
    return torch.where(m, new.to(old.dtype), old)


@dataclass
class TRMCarry:
    """What one reasoning step hands to the next.

    ``y`` and ``z`` (B, window, d_model) are the answer and latent of the current decision. With
    ``TRMConfig.carry="belief"``, ``belief`` (B, d_model) is what the model believed when this decision
    began (constant over its reasoning steps) and ``proposal`` (B, d_model) the revision the last step
    proposes; when the decision halts, the proposal becomes the next decision's belief (:meth:`advance`).
    Both are None with ``carry="fresh"``.
    """

    y: torch.Tensor
    z: torch.Tensor
    belief: torch.Tensor | None = None
    proposal: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.y.shape[0]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TRMCarry:
        """The carry with ``fn`` applied to each of its tensors."""
        return TRMCarry(*(None if t is None else fn(t) for t in (self.y, self.z, self.belief, self.proposal)))

    def select(self, index: torch.Tensor | slice) -> TRMCarry:
        """Rows ``index`` (long indices, a (B,) bool mask or a slice): used by adaptive inference to compact."""
        return self.map(lambda t: t[index])

    def reset(self, mask: torch.Tensor, fresh: TRMCarry) -> TRMCarry:
        """Rows where ``mask`` (B,) is True come from ``fresh`` entirely (belief included: a new episode)."""
        parts = (self.y, self.z, self.belief, self.proposal)
        new = (fresh.y, fresh.z, fresh.belief, fresh.proposal)
        return TRMCarry(*(None if o is None else _rows_where(mask, n, o) for o, n in zip(parts, new, strict=True)))

    def advance(self, mask: torch.Tensor, fresh: TRMCarry) -> TRMCarry:
        """Rows where ``mask`` (B,) is True finished their decision and start the next one of the same
        stream: y and z come from ``fresh``, the belief becomes the proposal of the step that halted."""
        y, z = _rows_where(mask, fresh.y, self.y), _rows_where(mask, fresh.z, self.z)  # (B, W, D)
        if self.belief is None:
            return TRMCarry(y, z)
        return TRMCarry(y, z, _rows_where(mask, self.proposal, self.belief), self.proposal)  # (B, D)

    def last_bars(self, bars: int) -> TRMCarry:
        """The carry of the window's last ``bars`` bars (the belief and proposal are per row: kept whole)."""
        return TRMCarry(self.y[:, -bars:], self.z[:, -bars:], self.belief, self.proposal)

    def with_belief(self, belief: torch.Tensor) -> TRMCarry:
        """The same carry with the decision's belief (B, D) replaced (a caller's explicit belief: ``act_predict``'s,
        or the one the unrolled trainer carries from one optimizer step to the next)."""
        return TRMCarry(self.y, self.z, belief, belief)

    def detach(self) -> TRMCarry:
        return self.map(torch.Tensor.detach)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TRMCarry:
        return self.map(lambda t: t.to(device=device, dtype=dtype))


class StepOutput(NamedTuple):
    """One reasoning step: float32 task logits (B, num_classes), halt logits (B,), and the detached carry."""

    task_logits: torch.Tensor
    halt_logits: torch.Tensor
    carry: TRMCarry
    proposal: torch.Tensor | None = None
    """(B, D) belief mode: ``carry.proposal`` with its graph, for a trainer that backpropagates through
    consecutive decisions (``train.bptt_decisions``); None with a fresh carry."""


class RecurrentTRM(nn.Module):
    """Tiny Recursive Model; ``forward(obs, carry)`` runs one reasoning step.

    obs (B, window, n_features) -> tokens x (B, W, D) (a linear encoder per bar plus learned positions),
    then n_cycles cycles of [n_latent x ``z = net(x + y + z)``, ``y = net(y + z)``] with one shared
    ``net``; heads read y pooled over the window.

    With ``carry="belief"`` a belief vector b (B, D) persists across decisions, in the spirit of the
    Recurrent Memory Transformer's memory carried across segments (Bulatov et al. 2022) but one vector,
    not tokens: a market's state is a few numbers (which regime, how sure), and a vector read into every
    token costs one (B, D) add. Each step reads b into the tokens (``x + read(b)``), proposes a revision
    ``b' = GRUCell(pooled y, b)`` and its heads read ``pooled y + b'``. Within a decision b stays fixed, so
    more reasoning steps refine how this window is read against the belief rather than counting the same
    bars twice; the proposal of the halting step becomes the next decision's belief. The carry is
    detached between decisions (truncated backpropagation of one decision): the revision is trained to
    serve the decision at hand, and what serves it (a running summary of the regime) is what the next
    decision needs too. ``StepOutput.proposal`` keeps the revision's graph for a trainer that
    backpropagates through several decisions (``train.bptt_decisions``). With ``belief_source="evidence"`` the
    revision reads the decision's pooled tokens instead of its answer, ``b' = GRUCell(pool(x), b)``, so every step
    proposes the same one and depth cannot reach the belief later decisions inherit.
    """

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.in_proj = nn.Linear(config.n_features, d)
        self.pos = nn.Parameter(torch.randn(config.window, d) * 0.02)  # (W, D) learned positions
        self.net = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.task_head = nn.Linear(d, config.num_classes)
        self.halt_head = nn.Linear(d, 1)
        # TRM: the halt (Q) head starts at weight 0 and bias -5, so no sample halts until the
        # halt loss teaches it to; the weight still receives gradient because y is not zero.
        nn.init.zeros_(self.halt_head.weight)
        nn.init.constant_(self.halt_head.bias, config.halt_bias_init)
        # TRM: fixed (non-learned) initial y and z, truncated-normal with std 1, broadcast over
        # batch and window; buffers so that they travel with the checkpoint and the device.
        self.register_buffer("y_init", nn.init.trunc_normal_(torch.empty(d), std=1.0, a=-2.0, b=2.0))
        self.register_buffer("z_init", nn.init.trunc_normal_(torch.empty(d), std=1.0, a=-2.0, b=2.0))
        # Belief modules exist only in belief mode, so a fresh model's state_dict is what it always was.
        self.belief_read = self.belief_write = None
        if config.carry == "belief":
            self.belief_read = nn.Linear(d, d, bias=False)
            self.belief_write = nn.GRUCell(d, d)
            self.register_buffer("belief_init", torch.zeros(d))  # no evidence yet

    @property
    def has_belief(self) -> bool:
        """True when a belief persists across decisions (``config.carry == "belief"``)."""
        return self.belief_write is not None

    def init_carry(self, batch_size: int, device: torch.device | str | None = None) -> TRMCarry:
        """Fresh carry for ``batch_size`` samples, on ``device`` (default: the model's device)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"batch_size must be an integer >= 0, got {batch_size!r}.")
        shape = (batch_size, self.config.window, self.config.d_model)
        y = self.y_init.to(device).expand(shape)  # (B, W, D), a broadcast view: no copy
        z = self.z_init.to(device).expand(shape)  # (B, W, D)
        if not self.has_belief:
            return TRMCarry(y, z)
        belief = self.belief_init.to(device).expand(batch_size, self.config.d_model)  # (B, D)
        return TRMCarry(y, z, belief, belief)

    def net_forward(self, h: torch.Tensor) -> torch.Tensor:
        """The shared network: n_layers post-norm blocks, (B, W, D) -> (B, W, D)."""
        for block in self.net:
            h = block(h)
        return h

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations (B, W, F) -> input tokens x (B, W, D); constant across reasoning steps."""
        if obs.dim() != 3 or tuple(obs.shape[1:]) != (self.config.window, self.config.n_features):
            raise ValueError(
                f"obs must have shape (batch, window={self.config.window}, n_features={self.config.n_features}), "
                f"got {tuple(obs.shape)}; set TRMConfig.window / n_features to the environment's observation."
            )
        x = self.in_proj(obs.to(self.pos.dtype)) + self.pos  # (B, W, D)
        return _rms_norm(x)  # unit RMS, like y and z, so that no term of x + y + z dominates

    def _cycle(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(self.config.n_latent):
            z = self.net_forward(x + y + z)  # (B, W, D) latent update sees the input
        y = self.net_forward(y + z)  # (B, W, D) answer update does not (TRM)
        return y, z

    def pool(self, y: torch.Tensor) -> torch.Tensor:
        """Answer tokens y (B, W, D) -> the (B, D) vector the heads read (``TRMConfig.pool``)."""
        return y.mean(dim=1) if self.config.pool == "mean" else y[:, -1]  # (B, D)

    def step(self, x: torch.Tensor, carry: TRMCarry) -> StepOutput:
        """One reasoning step from encoded tokens x (B, W, D); ``forward`` = ``step(encode(obs), carry)``."""
        if carry.y.shape != x.shape or carry.z.shape != x.shape:
            raise ValueError(
                f"carry shapes y={tuple(carry.y.shape)}, z={tuple(carry.z.shape)} must equal the tokens' "
                f"{tuple(x.shape)}; build it with model.init_carry(batch_size)."
            )
        evidence = None
        if self.has_belief:
            if carry.belief is None:
                raise ValueError("this model carries a belief (carry='belief'); build the carry with model.init_carry.")
            if self.config.belief_source == "evidence":
                evidence = self.pool(x)  # (B, D) the decision's tokens, read where the answer is, before the belief
            x = x + self.belief_read(carry.belief.to(x.dtype))[:, None, :]  # (B, W, D) the belief reaches every bar
        y, z = carry.y, carry.z
        # TRM deep recursion: T-1 cycles only move the state (no graph, no saved activations) ...
        with torch.no_grad():
            for _ in range(self.config.n_cycles - 1):
                y, z = self._cycle(x, y, z)
        # ... and the last cycle is the only one backpropagated (the 1-step gradient approximation).
        y, z = self._cycle(x, y, z)
        pooled = self.pool(y)  # (B, D)
        if self.config.norm == "pre":  # pre-norm states grow with every update: hand on unit-RMS ones
            y, z = _rms_norm(y), _rms_norm(z)
        proposal = None
        if self.has_belief:
            # In the cell's own dtype: float32 under bf16 autocast (the belief persists), float64 in a .double() model.
            dtype = self.belief_write.weight_ih.dtype
            source = pooled if evidence is None else evidence  # (B, D)
            proposal = self.belief_write(source.to(dtype), carry.belief.to(dtype))  # (B, D) revised belief
            pooled = pooled + proposal.to(pooled.dtype)  # (B, D) the heads answer from window and belief
        task_logits = self.task_head(pooled).float()  # (B, C) float32 even under bf16 autocast
        share = self.config.halt_grad
        halt_in = pooled if share == 1 else pooled.detach()  # (B, D)
        if 0 < share < 1:  # pooled's value exactly, with that share of its gradient
            halt_in = scale_gradient(pooled, share)  # (B, D)
        halt_logits = self.halt_head(halt_in).float().squeeze(-1)  # (B,)
        # Detached carry: the next step's graph never reaches this one, so memory is flat in steps.
        carry_dtype = self.y_init.dtype
        next_carry = TRMCarry(y, z) if proposal is None else TRMCarry(y, z, carry.belief, proposal)
        return StepOutput(task_logits, halt_logits, next_carry.detach().to(dtype=carry_dtype), proposal)

    def forward(self, obs: torch.Tensor, carry: TRMCarry) -> StepOutput:
        """One reasoning step: ``step(encode(obs), carry)``.

        With autograd on and ``TRMConfig.graph="answer"`` (the default), the graph covers only what the heads read:
        the last :meth:`answer_bars` bars (all of them unless the mixer is local and the heads read the decision
        bar). The whole window runs once without a graph, for the y and z the next step needs, and those bars run
        a second time with one. The outputs are the plain step's up to float rounding (under ``torch.compile`` on
        the developers' CPU, bit for bit), and so are the parameters' gradients, but the backward does not run
        through the bars whose gradient is zero: at the defaults the training step takes ~0.6x the time (``python
        -m trm_act.bench train``). With dropout in training mode it runs the plain step, so that the carry and the
        answer share one draw of the masks.
        """
        x = self.encode(obs)  # (B, W, D)
        bars = self.answer_bars()
        # Dropout in training would draw other masks in the two passes: the carry would not be the answer's.
        dropping = self.training and self.config.dropout > 0
        if self.config.graph == "window" or bars == self.config.window or not torch.is_grad_enabled() or dropping:
            return self.step(x, carry)
        with torch.no_grad():
            whole = self.step(x, carry)  # the next step's y and z, every bar of them
        answer = self.step(x[:, -bars:], carry.last_bars(bars))  # the heads' outputs, with their graph
        next_carry = whole.carry
        if answer.proposal is not None:  # the belief handed on is the proposal returned, as in the plain step
            next_carry = dataclasses.replace(next_carry, proposal=answer.carry.proposal)
        return StepOutput(answer.task_logits, answer.halt_logits, next_carry, answer.proposal)

    def answer_bars(self) -> int:
        """Bars at the window's end that the decision bar's answer after one reasoning step depends on.

        With banded attention each block reaches ``attn_radius`` bars further back, a cycle runs ``n_layers``
        blocks ``n_latent + 1`` times, and the heads read the last bar (``pool="last"``); any other mixer or
        pooling reads the whole window.
        """
        c = self.config
        if c.mixer != "attention" or c.attn_radius == 0 or c.pool != "last":
            return c.window
        reach = c.n_cycles * (c.n_latent + 1) * c.n_layers * c.attn_radius  # bars back the last bar can read
        return min(c.window, reach + 1)

    def answer_logits(self, obs: torch.Tensor, carry: TRMCarry) -> torch.Tensor:
        """(B, C) the task logits of one reasoning step from ``carry``, and nothing else ("gain" halting's
        look-ahead, ``trm_act.supervision.look_ahead``).

        The step runs on the last :meth:`answer_bars` bars only: the bars before them cannot reach the decision
        bar's answer, and the errors a cut window makes at its first bars travel ``attn_radius`` bars a block,
        never as far as the last bar. At the defaults that is 9 of 32 bars, ~4x less work than ``forward``, whose
        logits it equals up to float rounding (bit for bit under ``torch.compile`` on the developers' CPU). It cuts
        the window whatever ``TRMConfig.graph`` says: ``graph`` is about what training differentiates.
        """
        bars = self.answer_bars()
        x = self.encode(obs)[:, -bars:]  # (B, bars, D)
        return self.step(x, carry.last_bars(bars)).task_logits  # (B, C)
