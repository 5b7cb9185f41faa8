"""RecurrentTRM and TRMConfig: shapes, dtypes, devices, validation, and TRM's gradient structure."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap

import pytest
import torch
import torch.nn.functional as F

from trm_act.model import MIXERS, NORMS, POOLINGS, RecurrentTRM, StepOutput, TRMCarry, TRMConfig

MIXER_NAMES = sorted(MIXERS)


def small_config(**overrides) -> TRMConfig:
    base = dict(
        window=8, n_features=5, d_model=16, n_heads=2, n_layers=2, n_latent=2, n_cycles=2, max_steps=4,
        carry="fresh",  # the carry's mechanics within a decision; tests/test_belief.py covers the belief
    )
    base.update(overrides)
    return TRMConfig(**base)


def make_model(seed: int = 0, **overrides) -> RecurrentTRM:
    torch.manual_seed(seed)
    return RecurrentTRM(small_config(**overrides))


def make_obs(config: TRMConfig, batch: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.window, config.n_features, generator=gen)


# ----------------------------------------------------------------------------- config


def test_every_config_field_has_a_default_and_a_docstring():
    tree = ast.parse(textwrap.dedent(inspect.getsource(TRMConfig)))
    body = tree.body[0].body
    documented = {
        stmt.target.id
        for stmt, nxt in itertools.pairwise(body)
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant)
        and isinstance(nxt.value.value, str)
    }
    names = {f.name for f in dataclasses.fields(TRMConfig)}
    assert names == documented
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(TRMConfig))
    assert TRMConfig().num_classes == 8 and TRMConfig().halt_bias_init == -5.0
    assert TRMConfig().halt_exploration_prob == 0.1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window", 0),
        ("n_features", -1),
        ("d_model", 1.5),
        ("n_layers", 0),
        ("n_latent", 0),
        ("n_cycles", 0),
        ("max_steps", 0),
        ("num_classes", 1),
        ("mlp_ratio", 0.0),
        ("halt_bias_init", float("nan")),
        ("halt_exploration_prob", 1.5),
        ("dropout", 1.0),
        ("attn_radius", -1),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        small_config(**{field: value})


def test_attention_options_are_checked_against_the_mixer():
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=16"):
        small_config(mixer="attention", n_heads=3)


def test_the_mlp_mixer_ignores_attention_options():
    # `--mixer mlp` must work with the CLI's default attn_radius (2): the option only shapes attention.
    banded, full = make_model(mixer="mlp", attn_radius=2), make_model(mixer="mlp", attn_radius=0)
    obs = make_obs(banded.config)
    with torch.no_grad():
        a, b = banded(obs, banded.init_carry(obs.shape[0])), full(obs, full.init_carry(obs.shape[0]))
    assert torch.equal(a.task_logits, b.task_logits) and torch.equal(a.halt_logits, b.halt_logits)


def test_config_registries_list_the_valid_choices():
    with pytest.raises(ValueError, match=r"mixer='transformer'.*\['attention', 'mlp'\]"):
        small_config(mixer="transformer")
    with pytest.raises(ValueError, match=r"pool='max'.*\['mean', 'last'\]"):
        small_config(pool="max")
    with pytest.raises(ValueError, match=r"norm='layer'.*\['post', 'pre'\]"):
        small_config(norm="layer")
    small_config(mixer="mlp", n_heads=3)  # n_heads only matters for attention


def test_config_to_dict_round_trips():
    config = small_config(mixer="mlp")
    assert TRMConfig(**config.to_dict()) == config


# ----------------------------------------------------------------------------- shapes, dtypes, devices


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("pool", POOLINGS)
@pytest.mark.parametrize("mixer", MIXER_NAMES)
def test_step_shapes_and_dtypes(mixer, pool, norm):
    model = make_model(mixer=mixer, pool=pool, norm=norm)
    config = model.config
    obs = make_obs(config, batch=6)
    carry = model.init_carry(6)
    out = model(obs, carry)
    assert isinstance(out, StepOutput)
    assert out.task_logits.shape == (6, config.num_classes) and out.task_logits.dtype == torch.float32
    assert out.halt_logits.shape == (6,) and out.halt_logits.dtype == torch.float32
    assert isinstance(out.carry, TRMCarry)
    assert out.carry.y.shape == out.carry.z.shape == (6, config.window, config.d_model)
    assert out.carry.y.dtype == torch.float32
    # The halt head starts at exactly its bias: weight 0, bias -5 (TRM), whatever the input.
    torch.testing.assert_close(out.halt_logits, torch.full((6,), -5.0))
    # A second step takes the carry back.
    out2 = model(obs, out.carry)
    assert torch.isfinite(out2.task_logits).all()


@pytest.mark.parametrize("mixer", MIXER_NAMES)
@pytest.mark.parametrize("carry", ["fresh", "belief"])
def test_float64_model_keeps_its_dtype(mixer, carry):
    model = make_model(mixer=mixer, carry=carry).double()
    obs = make_obs(model.config)  # float32 observations are cast to the model's dtype
    out = model(obs, model.init_carry(obs.shape[0]))
    assert out.carry.y.dtype == torch.float64 and out.task_logits.dtype == torch.float32
    if carry == "belief":  # the belief is revised in the model's dtype too
        assert out.carry.proposal.dtype == torch.float64


def test_init_carry_is_the_fixed_init_broadcast():
    model = make_model()
    carry = model.init_carry(3)
    assert carry.y.shape == (3, 8, 16) and carry.batch_size == 3
    torch.testing.assert_close(carry.y[2, 5], model.y_init)
    torch.testing.assert_close(carry.z[0, 0], model.z_init)
    assert not carry.y.requires_grad
    # the init vectors are buffers: saved with the weights, not trained
    assert {"y_init", "z_init"} <= set(model.state_dict())
    assert all(p is not model.y_init for p in model.parameters())
    with pytest.raises(ValueError, match="batch_size"):
        model.init_carry(-1)


def test_carry_select_and_reset():
    gen = torch.Generator().manual_seed(0)
    a = TRMCarry(torch.randn(4, 2, 3, generator=gen), torch.randn(4, 2, 3, generator=gen))
    b = TRMCarry(torch.zeros(4, 2, 3), torch.ones(4, 2, 3))
    mask = torch.tensor([True, False, True, False])
    r = a.reset(mask, b)
    torch.testing.assert_close(r.y[0], b.y[0])
    torch.testing.assert_close(r.z[2], b.z[2])
    torch.testing.assert_close(r.y[1], a.y[1])
    torch.testing.assert_close(r.z[3], a.z[3])
    s = a.select(torch.tensor([3, 1]))
    torch.testing.assert_close(s.y, a.y[[3, 1]])
    assert a.select(mask).batch_size == 2


def test_bad_observation_shape_names_the_fix():
    model = make_model()
    with pytest.raises(ValueError, match="n_features"):
        model(torch.zeros(2, 8, 7), model.init_carry(2))
    with pytest.raises(ValueError, match="init_carry"):
        model(torch.zeros(2, 8, 5), model.init_carry(3))


@pytest.mark.parametrize("mixer", MIXER_NAMES)
def test_runs_under_bf16_autocast(mixer):
    model = make_model(mixer=mixer)
    obs = make_obs(model.config, batch=4)
    carry = model.init_carry(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(obs, carry)
        out2 = model(obs, out.carry)
        loss = F.cross_entropy(out2.task_logits, torch.zeros(4, dtype=torch.long)) + out2.halt_logits.mean()
    loss.backward()
    assert out2.task_logits.dtype == torch.float32 and out2.halt_logits.dtype == torch.float32
    assert out2.carry.y.dtype == torch.float32  # carry keeps the model's dtype across steps
    assert torch.isfinite(out2.task_logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mixer", MIXER_NAMES)
def test_runs_on_cuda(mixer):
    model = make_model(mixer=mixer).cuda()
    obs = make_obs(model.config).cuda()
    out = model(obs, model.init_carry(obs.shape[0]))
    assert out.task_logits.device.type == "cuda" and out.carry.y.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(obs, out.carry)
    assert out.task_logits.dtype == torch.float32


# ----------------------------------------------------------------------------- gradient structure (TRM)


@pytest.mark.parametrize("mixer", MIXER_NAMES)
def test_returned_carry_is_detached_and_no_gradient_reaches_the_previous_step(mixer):
    model = make_model(mixer=mixer, n_cycles=1)  # T=1: even the first cycle is the gradient cycle
    obs = make_obs(model.config)
    first = model(obs, model.init_carry(obs.shape[0]))
    assert first.carry.y.grad_fn is None and not first.carry.y.requires_grad
    assert first.carry.z.grad_fn is None and not first.carry.z.requires_grad

    # Gradients of step 2 equal those of a step run from a copy of the carry with no history:
    # nothing flows back into step 1.
    second = model(obs, first.carry)
    model.zero_grad()
    second.task_logits.sum().backward()
    through_chain = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    fresh_carry = TRMCarry(first.carry.y.clone(), first.carry.z.clone())
    model.zero_grad()
    model(obs, fresh_carry).task_logits.sum().backward()
    isolated = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(through_chain, isolated, strict=True):
        torch.testing.assert_close(a, b)

    # Even a carry that requires grad gets none when T > 1: the first T-1 cycles are no_grad.
    model3 = make_model(mixer=mixer, n_cycles=2)
    carry = TRMCarry(first.carry.y.clone().requires_grad_(), first.carry.z.clone().requires_grad_())
    model3(obs, carry).task_logits.sum().backward()
    assert carry.y.grad is None and carry.z.grad is None


def _halt_loss_gradients(halt_grad: float) -> tuple[dict[str, torch.Tensor | None], torch.Tensor]:
    """Gradients of a halt-only loss (parameter name -> grad) and the halt logits, on make_model's weights."""
    model = make_model(halt_grad=halt_grad)
    with torch.no_grad():  # the head starts at zero weights, which would pass no gradient on either way
        model.halt_head.weight.normal_(generator=torch.Generator().manual_seed(1))
    out = model(make_obs(model.config), model.init_carry(6))
    out.halt_logits.square().sum().backward()
    return {name: p.grad for name, p in model.named_parameters()}, out.halt_logits.detach()


@pytest.mark.parametrize("halt_grad", [1.0, 0.3, 0.0])
def test_halt_grad_is_the_share_of_the_halt_gradient_that_trains_the_shared_network(halt_grad):
    grads, halt_logits = _halt_loss_gradients(halt_grad)
    full, full_logits = _halt_loss_gradients(1.0)
    trunk = [name for name in grads if not name.startswith(("halt_head", "task_head"))]
    reached = any(grads[name] is not None and grads[name].abs().sum() > 0 for name in trunk)
    assert reached == (halt_grad > 0)  # the shared network, encoder included, learns from halting only when asked
    for name in trunk:  # ... and by the share asked: the same gradient, scaled
        if halt_grad > 0:
            torch.testing.assert_close(grads[name], halt_grad * full[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads["halt_head.weight"], full["halt_head.weight"], rtol=1e-5, atol=1e-7)
    assert grads["task_head.weight"] is None  # the answer's head never learns from halting
    assert torch.equal(halt_logits, full_logits)  # and the logits themselves do not depend on it


def test_halt_grad_reads_a_saved_switch_and_refuses_a_share_outside_0_1():
    assert small_config(halt_grad=False).halt_grad == 0.0  # configs saved when it was a switch
    assert small_config(halt_grad=True).halt_grad == 1.0
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ValueError, match=r"^TRMConfig.halt_grad must lie in \[0, 1\]"):
            small_config(halt_grad=bad)


@pytest.mark.parametrize("n_cycles", [1, 3])
@pytest.mark.parametrize("mixer", MIXER_NAMES)
def test_only_the_last_cycle_carries_gradient(mixer, n_cycles):
    # TRM's own layout (post-norm blocks, mean pooling), which the hand-written cycle below spells out.
    model = make_model(mixer=mixer, n_cycles=n_cycles, n_latent=2, n_layers=2, norm="post", pool="mean")
    config = model.config
    obs = make_obs(config)
    calls = {"grad": 0, "no_grad": 0}

    def count(module, args, output):
        calls["grad" if output.requires_grad else "no_grad"] += 1

    handles = [block.register_forward_hook(count) for block in model.net]
    out = model(obs, model.init_carry(obs.shape[0]))
    for handle in handles:
        handle.remove()
    per_cycle = (
        config.n_latent + 1
    ) * config.n_layers  # n latent updates + 1 answer update, each n_layers blocks
    assert calls == {"grad": per_cycle, "no_grad": (n_cycles - 1) * per_cycle}

    # The gradient equals that of one hand-written cycle started from the no-grad state: the
    # first T-1 cycles contribute nothing but their (detached) result.
    model.zero_grad()
    (out.task_logits.sum() + out.halt_logits.sum()).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    x = model.encode(obs)
    carry = model.init_carry(obs.shape[0])
    y, z = carry.y, carry.z
    with torch.no_grad():
        for _ in range(n_cycles - 1):
            for _ in range(config.n_latent):
                z = model.net_forward(x + y + z)
            y = model.net_forward(y + z)
    for _ in range(config.n_latent):
        z = model.net_forward(x + y + z)
    y = model.net_forward(y + z)
    pooled = y.mean(dim=1)
    (model.task_head(pooled).sum() + model.halt_head(pooled).sum()).backward()
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.grad, expected[name], msg=name)


@pytest.mark.parametrize("radius", [0, 1])
def test_attn_radius_limits_how_far_one_step_sees(radius):
    # 1 block per net call and 2 net calls per step (n_latent=1, T=1): with radius 1, a change at
    # bar 0 reaches bars 0-2 after one step and bars 0-4 after two; with radius 0 (global), all bars.
    model = make_model(mixer="attention", attn_radius=radius, pool="last", n_layers=1, n_latent=1, n_cycles=1)
    obs = make_obs(model.config, batch=2)
    far = obs.clone()
    far[:, 0] += 1.0
    with torch.no_grad():
        a1, b1 = model(obs, model.init_carry(2)), model(far, model.init_carry(2))
        a2, b2 = model(obs, a1.carry), model(far, b1.carry)
    reached1 = (a1.carry.y != b1.carry.y).flatten(2).any(-1).any(0)  # (W,) bars the change reached
    reached2 = (a2.carry.y != b2.carry.y).flatten(2).any(-1).any(0)  # (W,)
    if radius == 1:
        assert reached1.tolist() == [True] * 3 + [False] * 5
        assert reached2.tolist() == [True] * 5 + [False] * 3
        assert torch.equal(a1.task_logits, b1.task_logits)  # the decision bar has not seen it yet
    else:
        assert reached1.all() and not torch.equal(a1.task_logits, b1.task_logits)


def test_pre_norm_block_is_an_identity_plus_residual_branch():
    # Zeroing the branches' output layers leaves h = h + 0: the pre-norm residual stream passes the input
    # through unchanged, where a post-norm block would rescale every token to unit RMS.
    pre, post = make_model(norm="pre", mixer="attention"), make_model(norm="post", mixer="attention")
    h = 3.0 * torch.randn(4, pre.config.window, pre.config.d_model)  # (B, W, D), RMS about 3
    for model in (pre, post):
        for block in model.net:
            torch.nn.init.zeros_(block.mix.out.weight)
            torch.nn.init.zeros_(block.mlp.down.weight)
    with torch.no_grad():
        torch.testing.assert_close(pre.net_forward(h), h)
        rms = post.net_forward(h).pow(2).mean(-1).sqrt()  # (B, W)
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)


def test_pre_norm_hands_on_a_unit_rms_carry_whatever_the_step():
    model = make_model(norm="pre")
    obs = 5.0 * make_obs(model.config)
    carry = model.init_carry(obs.shape[0])
    with torch.no_grad():
        for _ in range(3):
            carry = model(obs, carry).carry
            for state in (carry.y, carry.z):
                rms = state.pow(2).mean(-1).sqrt()  # (B, W)
                torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)


def test_dropout_is_active_only_in_training():
    model = make_model(dropout=0.5)
    obs = make_obs(model.config)
    carry = model.init_carry(obs.shape[0])
    model.eval()
    torch.testing.assert_close(model(obs, carry).task_logits, model(obs, carry).task_logits)
    model.train()
    assert not torch.allclose(model(obs, carry).task_logits, model(obs, carry).task_logits)


def _stepped_carry(model: RecurrentTRM, obs: torch.Tensor) -> TRMCarry:
    """The carry after one reasoning step: y and z differ from bar to bar, as in a look-ahead."""
    with torch.no_grad():
        return model(obs, model.init_carry(obs.shape[0])).carry


@pytest.mark.parametrize(
    "overrides, bars",
    [
        (dict(window=32), 13),  # 2 cycles x (2 latent + 1 answer) updates x 2 layers x radius 1, plus the last bar
        (dict(window=32, n_cycles=1, n_latent=1, attn_radius=2), 9),  # the CLI default's reach
        (dict(window=32, carry="belief"), 13),
        (dict(window=32, norm="post"), 13),
        (dict(window=12), 12),  # reach beyond the window: the whole window
        (dict(window=32, attn_radius=0), 32),  # global attention
        (dict(window=32, pool="mean"), 32),  # the heads read every bar
        (dict(window=32, mixer="mlp"), 32),
    ],
)
def test_answer_logits_are_one_steps_logits_from_the_bars_the_answer_can_reach(overrides, bars):
    model = make_model(**{"attn_radius": 1, **overrides})
    assert model.answer_bars() == bars
    obs = make_obs(model.config, batch=5)
    carry = _stepped_carry(model, obs)
    with torch.no_grad():
        full = model(obs, carry).task_logits  # (B, C)
        torch.testing.assert_close(model.answer_logits(obs, carry), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", [dict(n_latent=1, attn_radius=2), dict(n_latent=2, attn_radius=1)])
def test_answer_bars_are_exactly_the_bars_one_steps_answer_depends_on(overrides):
    # One cycle, so that the gradient runs through every update (TRM's no-grad cycles would cut it): a bar is
    # read when the answer's gradient reaches its features or its carry, however faintly.
    model = make_model(window=32, n_cycles=1, **overrides)
    obs = make_obs(model.config, batch=5).requires_grad_()
    stepped = _stepped_carry(model, obs.detach())
    y, z = stepped.y.clone().requires_grad_(), stepped.z.clone().requires_grad_()
    model.step(model.encode(obs), TRMCarry(y, z)).task_logits.sum().backward()  # the whole window's step
    per_bar = sum(t.grad.abs().sum(dim=(0, 2)) for t in (obs, y, z))  # (W,)
    read = (per_bar > 0).tolist()
    bars = model.answer_bars()
    assert read == [False] * (32 - bars) + [True] * bars


@pytest.mark.parametrize("carry", ["fresh", "belief"])
@pytest.mark.parametrize(
    "layout",
    [dict(n_cycles=1, n_latent=1, attn_radius=2), dict(n_cycles=2, n_latent=1, attn_radius=1, norm="post")],
)
def test_forward_with_autograd_gives_the_whole_windows_outputs_and_gradients(carry, layout):
    # forward builds its graph over the answer's bars only; what it returns and what backward gives must be the
    # whole window's step's (up to float rounding), the no-grad cycles' edge included.
    model = make_model(window=32, carry=carry, **layout)
    assert model.answer_bars() < model.config.window  # the cut path
    obs = make_obs(model.config, batch=5)
    carry_in = _stepped_carry(model, obs)
    results = []
    for run in (model.forward, lambda o, c: model.step(model.encode(o), c)):
        model.zero_grad(set_to_none=True)
        out = run(obs, carry_in)
        loss = out.task_logits.square().sum() + out.halt_logits.sum()
        if carry == "belief":
            loss = loss + out.proposal.sum()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (cut, cut_grads), (whole, whole_grads) = results
    for name in ("task_logits", "halt_logits", "proposal"):
        if getattr(whole, name) is not None:
            torch.testing.assert_close(getattr(cut, name), getattr(whole, name), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cut.carry.y, whole.carry.y)
    torch.testing.assert_close(cut.carry.z, whole.carry.z)
    assert not cut.carry.y.requires_grad and not cut.carry.z.requires_grad  # detached, as the step's
    if carry == "belief":  # the belief handed on is the proposal returned, as in the plain step
        assert torch.equal(cut.carry.proposal, cut.proposal.detach())
    assert cut_grads.keys() == whole_grads.keys()
    for name, grad in whole_grads.items():
        torch.testing.assert_close(cut_grads[name], grad, rtol=1e-4, atol=1e-5 * max(1.0, grad.abs().max().item()))


@pytest.mark.parametrize(
    ("graph", "grad", "dropout", "steps_run"),
    [("answer", True, 0.0, 2), ("window", True, 0.0, 1), ("answer", False, 0.0, 1), ("answer", True, 0.1, 1)],
)
def test_graph_decides_whether_forward_cuts_the_graph_to_the_answers_bars(graph, grad, dropout, steps_run, monkeypatch):
    # "answer" runs the window without a graph and the answer's bars with one; "window" (the benchmarks' peer, the
    # step of commit 1d55271), any forward without autograd, and training with dropout (the two passes would draw
    # other masks) run the plain step once.
    model = make_model(window=32, n_cycles=1, n_latent=1, attn_radius=2, graph=graph, dropout=dropout)
    windows = []
    plain_step = model.step
    monkeypatch.setattr(model, "step", lambda x, carry: windows.append(x.shape[1]) or plain_step(x, carry))
    obs = make_obs(model.config, batch=3)
    with torch.set_grad_enabled(grad):
        model(obs, model.init_carry(3))
    assert windows == ([32, model.answer_bars()] if steps_run == 2 else [32])


def test_graph_refuses_an_unknown_value():
    with pytest.raises(ValueError, match=r"^TRMConfig.graph='bars' is not a known graph; choose one of"):
        small_config(graph="bars")


def test_look_ahead_takes_the_answer_of_a_model_or_the_model_itself():
    from trm_act.supervision import answer_of, look_ahead

    model = make_model(window=32, n_cycles=1, n_latent=1, attn_radius=2)
    obs = make_obs(model.config, batch=4)
    with torch.no_grad():
        out = model(obs, model.init_carry(4))
    at_cap = torch.tensor([False, True, False, True])
    ahead = look_ahead(answer_of(model), obs, out, at_cap)  # (B, C)
    assert torch.equal(look_ahead(model, obs, out, at_cap), ahead)
    torch.testing.assert_close(ahead[~at_cap], model(obs, out.carry).task_logits[~at_cap].detach())
    assert torch.equal(ahead[at_cap], out.task_logits[at_cap])  # no next step at the cap: its own logits
