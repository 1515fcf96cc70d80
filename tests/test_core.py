"""Core behaviour of the hypernetwork and the steering intervention on tiny random models.

Everything runs in fp32 on CPU with seeded weights, so "unchanged" means bit-identical and "equal
to the reference" means the same arithmetic in the same order. Greedy generations are the slow
part, so each variant's generations are made once (the ``runs`` fixture) and checked by several
tests.
"""

from dataclasses import dataclass, field

import pytest
import torch

from axbench_hypersteer.model.config import ConfigError
from axbench_hypersteer.model.hypersteer import CONFIG_NAME, WEIGHTS_NAME, HyperSteer
from axbench_hypersteer.model.steering import (Steerer, SteeringSource, decoder_layers,
                                              residual_after, steering_hook)
from axbench_hypersteer.testing.tiny import build_tiny_gemma2

from helpers import (
    BASE, FACTORS, LAYER, STEER, VARIANTS, batch_inputs, build_tiny_llama, encode, make_hs,
    perturb_, positions, real_logits, strip_after_eos,
)

NEW_TOKENS = 10


def plain_forward(model, ids, mask, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                     use_cache=False, **kw)


def greedy(model, ids, mask, tokenizer, **kw):
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, **kw)
    return out[:, ids.shape[1]:]


def steered_greedy(hs, ids, mask, hyper_ids, hyper_mask, factors, **kw):
    return hs.generate_ids(ids, mask, hyper_ids, hyper_mask, torch.as_tensor(factors),
                           max_new_tokens=NEW_TOKENS, do_sample=False, **kw)


def _is_transformers_hook(hook) -> bool:
    return (getattr(hook, "__module__", None) or "").startswith("transformers.")


def leftover_hooks(model) -> list[str]:
    """Forward (pre-)hooks on ``model`` that transformers did not install itself, as
    ``module: hook`` names. transformers 5 records ``output_hidden_states``/``output_attentions``
    through hooks it installs once, on first use, and keeps: those are the model's own, not a
    leak. Any other hook still there after a call (ours, pyvene's, a test's) is one."""
    return [f"{name or '<root>'}: {getattr(hook, '__qualname__', hook)}"
            for name, m in model.named_modules()
            for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
            if not _is_transformers_hook(hook)]


def no_hooks_left(model) -> bool:
    return not leftover_hooks(model)


@pytest.fixture(scope="module")
def gemma(tokenizer):
    """The conftest tiny Gemma-2 (same seed and size), shared by tests that do not modify it."""
    return build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4, seed=0)


@pytest.fixture(scope="module")
def llama(tokenizer):
    return build_tiny_llama(tokenizer, num_layers=4)


@dataclass
class Runs:
    variant: str
    pyvene: HyperSteer
    hook: HyperSteer
    inputs: tuple  # left padded (ids, mask, hyper_ids, hyper_mask) for rows BASE/STEER
    tokens: dict = field(default_factory=dict)  # greedy new tokens, [3, NEW_TOKENS]
    alone: list = field(default_factory=list)  # each row generated on its own, [1, n]


@pytest.fixture(scope="module", params=VARIANTS)
def runs(request, gemma, tokenizer):
    """Two HyperSteers with identical (perturbed) weights, pyvene and hook backends, and their
    greedy generations for the 3-row batch (factors FACTORS)."""
    variant = request.param
    pv = make_hs(gemma, tokenizer, variant, backend="pyvene")
    perturb_(pv.hypernet)
    hook = make_hs(gemma, tokenizer, variant, backend="hook")
    hook.hypernet.load_state_dict(pv.hypernet.state_dict())
    inputs = batch_inputs(pv, BASE, STEER)
    ids, mask = inputs[:2]
    r = Runs(variant, pv, hook, inputs)
    r.tokens["unsteered"] = greedy(gemma, ids, mask, tokenizer)
    r.tokens["pyvene"] = steered_greedy(pv, *inputs, FACTORS)
    r.tokens["hook"] = steered_greedy(hook, *inputs, FACTORS)
    r.tokens["zero"] = steered_greedy(pv, *inputs, [0.0] * len(BASE))
    r.tokens["no_cache"] = steered_greedy(pv, *inputs, FACTORS, use_cache=False)
    for i in range(len(BASE)):
        r.alone.append(steered_greedy(pv, *batch_inputs(pv, BASE[i:i + 1], STEER[i:i + 1]),
                                      FACTORS[i:i + 1]))
    assert no_hooks_left(gemma)
    return r


# ----- 1. factor 0 is the identity ------------------------------------------------------------
def test_factor_zero_leaves_logits_and_generations_unchanged(runs, gemma):
    ids, mask, hyper_ids, hyper_mask = runs.inputs
    n = len(BASE)
    plain = plain_forward(gemma, ids, mask).logits
    for hs in (runs.pyvene, runs.hook):
        with torch.no_grad():
            zero = hs(ids, mask, hyper_ids, hyper_mask, factors=torch.zeros(n)).logits
            one = hs(ids, mask, hyper_ids, hyper_mask, factors=torch.ones(n)).logits
        assert torch.equal(zero, plain), hs.steerer.backend
        # The intervention is live: a non-zero factor moves every row's logits.
        for i in range(n):
            assert not torch.allclose(real_logits(one, mask, i), real_logits(plain, mask, i))
    assert torch.equal(runs.tokens["zero"], runs.tokens["unsteered"])


# ----- 2. exact arithmetic at the steering layer ----------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_hidden_state_after_steering_layer_is_exact(gemma, tokenizer, variant):
    hs = make_hs(gemma, tokenizer, variant, backend="hook")
    ids, mask, hyper_ids, hyper_mask = batch_inputs(hs, BASE, STEER)
    factors = torch.tensor([0.5, -1.0, 2.5])
    layers = decoder_layers(gemma)
    seen = {}

    def capture(index):
        def hook(module, args, kwargs):
            seen[index] = (args[0] if args else kwargs["hidden_states"]).clone()
        return hook

    handles = [layers[i].register_forward_pre_hook(capture(i), with_kwargs=True)
               for i in range(len(layers))]
    try:
        with torch.no_grad():
            out = hs(ids, mask, hyper_ids, hyper_mask, factors=factors)
    finally:
        for h in handles:
            h.remove()
    reference = plain_forward(gemma, ids, mask, output_hidden_states=True).hidden_states

    delta = out.steering_vectors
    assert delta.shape == (3, gemma.config.hidden_size)
    assert bool((delta.abs().sum(-1) > 0).all())
    # Inputs of blocks 0..l (embeddings and outputs of the blocks before l) are untouched.
    for i in range(LAYER + 1):
        assert torch.equal(seen[i], reference[i]), f"input of block {i} changed"
    # Output of block l = unsteered + factor * delta, bit for bit.
    expected = reference[LAYER + 1] + (factors[:, None] * delta)[:, None, :]
    assert torch.equal(seen[LAYER + 1], expected)
    assert not torch.equal(seen[LAYER + 1], reference[LAYER + 1])

    # The same through pyvene, read from output_hidden_states of the steered pass.
    with torch.no_grad():
        pv_out = Steerer(gemma, LAYER, backend="pyvene").forward(
            SteeringSource(factors, delta=delta), input_ids=ids, attention_mask=mask,
            position_ids=positions(mask), use_cache=False, output_hidden_states=True)
    assert len(pv_out.hidden_states) == len(reference)
    for i in range(LAYER + 1):
        assert torch.equal(pv_out.hidden_states[i], reference[i])
    assert torch.equal(pv_out.hidden_states[LAYER + 1], expected)

    # The hook backend steers before any other forward hook on the block runs (on transformers 5
    # that includes the model's own output_hidden_states recording), so they see what block l+1 sees.
    outputs = []
    handle = layers[LAYER].register_forward_hook(lambda m, a, out: outputs.append(out))
    try:
        with torch.no_grad():
            Steerer(gemma, LAYER, backend="hook").forward(
                SteeringSource(factors, delta=delta), input_ids=ids, attention_mask=mask,
                position_ids=positions(mask), use_cache=False)
    finally:
        handle.remove()
    assert len(outputs) == 1
    assert torch.equal(outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0], expected)


# ----- 3. rows are independent ----------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_rows_are_independent_in_forward(runs, side):
    hs = runs.pyvene
    ids, mask, hyper_ids, hyper_mask = batch_inputs(hs, BASE, STEER, side, side)
    assert not bool(mask.all()) and not bool(hyper_mask.all()), "rows must need padding"
    pad_col = 0 if side == "left" else -1
    assert not bool(mask[:, pad_col].all())
    with torch.no_grad():
        batch = hs(ids, mask, hyper_ids, hyper_mask, factors=torch.tensor(FACTORS))
        for i in range(len(BASE)):
            alone = hs(*batch_inputs(hs, BASE[i:i + 1], STEER[i:i + 1]),
                       factors=torch.tensor(FACTORS[i:i + 1]))
            torch.testing.assert_close(batch.steering_vectors[i], alone.steering_vectors[0],
                                       atol=1e-5, rtol=0)
            torch.testing.assert_close(real_logits(batch.logits, mask, i), alone.logits[0],
                                       atol=1e-5, rtol=0, msg=f"{side} padding, row {i}")


def test_batch_rows_are_independent_in_generate(runs, tokenizer):
    eos = tokenizer.eos_token_id
    batch = runs.tokens["pyvene"]
    assert batch.shape == (len(BASE), NEW_TOKENS)
    for i, alone in enumerate(runs.alone):
        assert strip_after_eos(batch[i], eos) == strip_after_eos(alone[0], eos), f"row {i}"
    # The text API encodes and pads exactly like the token API.
    texts = runs.pyvene.generate(BASE, STEER, FACTORS, max_new_tokens=NEW_TOKENS)
    assert texts == tokenizer.batch_decode(batch, skip_special_tokens=True)


# ----- 4. pyvene = plain hook -----------------------------------------------------------------
def test_pyvene_backend_equals_hook_backend(runs, gemma):
    ids, mask, hyper_ids, hyper_mask = runs.inputs
    with torch.no_grad():
        a = runs.hook(ids, mask, hyper_ids, hyper_mask, factors=torch.tensor(FACTORS))
        b = runs.pyvene(ids, mask, hyper_ids, hyper_mask, factors=torch.tensor(FACTORS))
    assert torch.equal(a.steering_vectors, b.steering_vectors)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(runs.tokens["hook"], runs.tokens["pyvene"])
    # Per-row vectors during generate: row 0 (factor 0) is unsteered, the others are steered.
    assert torch.equal(runs.tokens["pyvene"][0], runs.tokens["unsteered"][0])
    for i in (1, 2):
        assert not torch.equal(runs.tokens["pyvene"][i], runs.tokens["unsteered"][i]), i
    assert no_hooks_left(gemma)


class RecordingSource(SteeringSource):
    """A real SteeringSource that also records the shape of every layer output it steers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shapes = []

    def __call__(self, hidden):
        self.shapes.append(tuple(hidden.shape))
        return super().__call__(hidden)


@pytest.mark.parametrize("backend", ["pyvene", "hook"])
def test_every_decode_step_is_steered(gemma, tokenizer, backend):
    ids, mask = encode(tokenizer, BASE)
    d = gemma.config.hidden_size
    delta = torch.randn(3, d, generator=torch.Generator().manual_seed(0))
    source = RecordingSource(torch.tensor([0.0, 1.0, 2.0]), delta=delta)
    Steerer(gemma, LAYER, backend=backend).generate(
        source, ids, mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
        do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert source.shapes == [(3, ids.shape[1], d)] + [(3, 1, d)] * (NEW_TOKENS - 1)
    assert no_hooks_left(gemma)


def test_pyvene_call_keeps_other_hooks_on_the_base_model(gemma, tokenizer):
    calls = []
    handle = decoder_layers(gemma)[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        hs = make_hs(gemma, tokenizer, "nocontext", backend="pyvene")
        with torch.no_grad():
            hs(*batch_inputs(hs, BASE[:1], STEER[:1]))
        assert len(calls) == 1, "a hook on the base model did not run during a pyvene forward"
        hs.generate(BASE[:1], STEER[:1], [1.0], max_new_tokens=2)
        assert len(calls) == 3, "a hook on the base model did not run during pyvene generate"
        plain_forward(gemma, *encode(tokenizer, BASE[:1]))
        assert len(calls) == 4, "a hook registered before a pyvene call was removed by it"
    finally:
        handle.remove()
    assert no_hooks_left(gemma), leftover_hooks(gemma)


def test_pyvene_call_keeps_the_models_own_output_recording(tokenizer):
    """The first call that asks for hidden states goes through pyvene (transformers 5 installs
    its recording hooks then); plain calls afterwards must still return them."""
    model = build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4, seed=0)
    ids, mask = encode(tokenizer, BASE[:2])
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False,
              output_hidden_states=True)
    source = SteeringSource(torch.zeros(2), delta=torch.ones(2, model.config.hidden_size))
    with torch.no_grad():
        steered = Steerer(model, LAYER, backend="pyvene").forward(source, **kw)
    plain = plain_forward(model, ids, mask, output_hidden_states=True)
    assert len(steered.hidden_states) == len(plain.hidden_states) == 5
    for a, b in zip(steered.hidden_states, plain.hidden_states):
        assert torch.equal(a, b)
    assert no_hooks_left(model), leftover_hooks(model)


# ----- 5. only the hypernetwork learns --------------------------------------------------------
@pytest.mark.parametrize("backend", ["pyvene", "hook"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_only_the_hypernetwork(tiny_model, tokenizer, variant, backend):
    hs = make_hs(tiny_model, tokenizer, variant, backend=backend)
    base_before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    owned = {id(p) for p in hs.hypernet.parameters()}
    assert {id(p) for p in hs.parameters()} == owned
    assert not owned & {id(p) for p in tiny_model.parameters()}

    hs.train()
    ids, mask, hyper_ids, hyper_mask = batch_inputs(hs, BASE, STEER)
    out = hs(ids, mask, hyper_ids, hyper_mask, labels=ids.masked_fill(mask == 0, -100))
    assert out.loss is not None and out.loss.requires_grad
    out.loss.backward()

    for name, p in tiny_model.named_parameters():
        assert not p.requires_grad, name
        assert p.grad is None, name
    grads = {n: p.grad for n, p in hs.hypernet.named_parameters()}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient for {missing}"

    groups = ["readout.", "body.embed_tokens.", "body.layers.0.", "body.layers.1."]
    if variant == "xattn":
        assert len(hs.hypernet.cross_attentions) == 2
        groups += [f"cross_attentions.{i}.{part}" for i in range(2)
                   for part in ("q_proj", "k_proj", "v_proj", "o_proj", "query_norm",
                                "post_norm")]
    else:
        assert len(hs.hypernet.cross_attentions) == 0
    for prefix in groups:
        names = [n for n in grads if n.startswith(prefix)]
        assert names, prefix
        assert any(bool(grads[n].abs().sum() > 0) for n in names), f"{prefix}: zero gradient"

    hyper_before = {k: v.clone() for k, v in hs.hypernet.state_dict().items()}
    torch.optim.AdamW(hs.parameters(), lr=1e-3).step()
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, base_before[k]), f"base weight {k} changed"
    after = hs.hypernet.state_dict()
    for prefix in groups:
        assert any(not torch.equal(after[k], hyper_before[k]) for k in after
                   if k.startswith(prefix)), f"{prefix} did not change after the optimiser step"


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(gemma, tokenizer, reentrant):
    """The cross-attention must also run when checkpointed blocks are recomputed in backward."""
    def grads(checkpointing):
        hs = make_hs(gemma, tokenizer, "xattn", backend="hook")
        if checkpointing:
            hs.hypernet.enable_gradient_checkpointing(use_reentrant=reentrant)
            blocks = list(hs.hypernet.body.layers)
            assert blocks and all(block.gradient_checkpointing for block in blocks)
        hs.train()
        ids, mask, hyper_ids, hyper_mask = batch_inputs(hs, BASE, STEER)
        hs(ids, mask, hyper_ids, hyper_mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        return {n: p.grad for n, p in hs.hypernet.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert set(plain) == set(checkpointed)
    for name, g in plain.items():
        assert checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], g, atol=1e-6, rtol=1e-5, msg=name)


# ----- 6. initialisation ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["nocontext", "xattn"])
def test_pretrained_init_copies_embeddings_and_first_blocks(gemma, tokenizer, variant):
    base = gemma.model.state_dict()
    pre = make_hs(gemma, tokenizer, variant, init="pretrained", num_blocks=2)
    body = pre.hypernet.body.state_dict()
    assert len(pre.hypernet.body.layers) == 2
    # The final norm is not used (the readout reads the raw residual, as the official code does).
    assert set(body) == {k for k in base
                         if not k.startswith(("layers.2.", "layers.3.")) and k != "norm.weight"}
    for k, v in body.items():
        assert torch.equal(v, base[k]), k
    # A copy, not shared storage: training the hypernetwork must not move the base model.
    assert (pre.hypernet.body.embed_tokens.weight.data_ptr()
            != gemma.model.embed_tokens.weight.data_ptr())

    rnd = make_hs(gemma, tokenizer, variant, init="random", num_blocks=2)
    body = rnd.hypernet.body.state_dict()
    matrices = [k for k in body if body[k].dim() == 2]
    assert "embed_tokens.weight" in matrices and "layers.0.self_attn.q_proj.weight" in matrices
    for k in matrices:
        assert not torch.equal(body[k], base[k]), k


def test_num_blocks_default_is_full_depth(gemma, tokenizer):
    hs = make_hs(gemma, tokenizer, "nocontext", num_blocks=None)
    assert len(hs.hypernet.body.layers) == gemma.config.num_hidden_layers


# ----- 7. what each variant reads -------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_vectors_depend_on_base_prompt_only_where_variant_reads_it(gemma, tokenizer, variant):
    hs = make_hs(gemma, tokenizer, variant)
    with torch.no_grad():
        vecs = hs.steering_vectors([STEER[0]] * 3, [BASE[0], BASE[1], BASE[0]])
    if variant == "nocontext":
        assert torch.equal(vecs[0], vecs[1])
    else:
        assert not torch.allclose(vecs[0], vecs[1], atol=1e-4)
    torch.testing.assert_close(vecs[0], vecs[2], atol=1e-6, rtol=0)


def test_xattn_vectors_depend_on_base_prompt_content_not_only_length(gemma, tokenizer):
    hs = make_hs(gemma, tokenizer, "xattn")
    a, b = "Write a poem about a list.", "Write a poem about a file."
    ia, _ = encode(tokenizer, hs.format_prompts([a]))
    ib, _ = encode(tokenizer, hs.format_prompts([b]))
    assert ia.shape == ib.shape and not torch.equal(ia, ib)
    with torch.no_grad():
        vecs = hs.steering_vectors([STEER[0]] * 2, [a, b])
    assert not torch.allclose(vecs[0], vecs[1], atol=1e-4)


def test_xattn_requires_context(gemma, tokenizer):
    hs = make_hs(gemma, tokenizer, "xattn")
    _, _, hyper_ids, hyper_mask = batch_inputs(hs, BASE, STEER)
    with pytest.raises(ValueError, match="context"):
        hs.hypernet(hyper_ids, hyper_mask)
    ctx = torch.zeros(3, 5, gemma.config.hidden_size)
    with pytest.raises(ValueError, match="context_mask"):
        hs.hypernet(hyper_ids, hyper_mask, context=ctx,
                    context_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="base_prompts"):
        hs.steering_vectors(STEER)


@pytest.mark.parametrize("variant", ["nocontext", "xattn"])
def test_steering_vectors_track_gradients_only_in_training_mode(gemma, tokenizer, variant):
    """Inference callers get detached vectors (no autograd graph kept alive); a training loop
    that calls it in train mode still gets gradients."""
    hs = make_hs(gemma, tokenizer, variant)
    hs.hypernet.eval()
    assert not hs.steering_vectors(STEER, BASE).requires_grad
    hs.hypernet.train()
    vectors = hs.steering_vectors(STEER, BASE)
    assert vectors.requires_grad
    vectors.sum().backward()
    assert hs.hypernet.readout.weight.grad is not None
    with torch.no_grad():
        assert not hs.steering_vectors(STEER, BASE).requires_grad


def test_building_a_hypernetwork_leaves_the_global_rng_alone(gemma, tokenizer):
    """Construction is seeded by config.seed (same weights every time) on a forked RNG: the
    caller's random stream continues as if nothing had happened (it used to be reset)."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = make_hs(gemma, tokenizer, "xattn", seed=7)
    assert torch.equal(torch.rand(3), expected)
    second = make_hs(gemma, tokenizer, "xattn", seed=7)
    for (name, a), b in zip(first.hypernet.state_dict().items(),
                            second.hypernet.state_dict().values()):
        assert torch.equal(a, b), name


# ----- 8. persistence -------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["nocontext", "xattn"])
def test_save_and_load_round_trip(gemma, tokenizer, variant, tmp_path):
    hs = make_hs(gemma, tokenizer, variant)
    perturb_(hs.hypernet)  # weights that no fresh initialisation reproduces
    with torch.no_grad():
        before = hs.steering_vectors(STEER, BASE)
    hs.save_pretrained(tmp_path / "ckpt")

    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == sorted([CONFIG_NAME, WEIGHTS_NAME])
    assert all(f.endswith((".safetensors", ".json")) for f in files)
    raw = (tmp_path / "ckpt" / WEIGHTS_NAME).read_bytes()
    assert not raw.startswith((b"\x80", b"PK")), "weights look like a pickle / torch zip"

    loaded = HyperSteer.from_pretrained(tmp_path / "ckpt", gemma, tokenizer)
    assert loaded.config == hs.config
    saved_state = hs.hypernet.state_dict()
    loaded_state = loaded.hypernet.state_dict()
    assert set(loaded_state) == set(saved_state)
    for k, v in loaded_state.items():
        assert torch.equal(v, saved_state[k]), k
    with torch.no_grad():
        after = loaded.steering_vectors(STEER, BASE)
    assert torch.equal(after, before)


def test_load_onto_mismatched_base_names_the_key(gemma, llama, tokenizer, tmp_path):
    make_hs(gemma, tokenizer, "xattn").save_pretrained(tmp_path)
    narrow = build_tiny_gemma2(tokenizer, hidden_size=32, num_layers=4)
    with pytest.raises(ConfigError, match="hidden_size"):
        HyperSteer.from_pretrained(tmp_path, narrow, tokenizer)
    shallow = build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=3)
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        HyperSteer.from_pretrained(tmp_path, shallow, tokenizer)
    with pytest.raises(ConfigError, match="model_type"):
        HyperSteer.from_pretrained(tmp_path, llama, tokenizer)


def test_load_from_directory_without_checkpoint(gemma, tokenizer, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        HyperSteer.from_pretrained(empty, gemma, tokenizer)
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        HyperSteer.from_pretrained(missing, gemma, tokenizer)


# ----- 9. single pass = two-pass reference ----------------------------------------------------
def two_pass_reference(model, hs, ids, mask, hyper_ids, hyper_mask, factors, read_at):
    """Pass 1: the unsteered model's output of block ``read_at`` -> vectors. Pass 2: steer with
    those fixed vectors through a plain forward hook."""
    with torch.no_grad():
        hidden = plain_forward(model, ids, mask, output_hidden_states=True).hidden_states
        delta = hs.hypernet(hyper_ids, hyper_mask, context=hidden[read_at + 1],
                            context_mask=mask.bool())
        with steering_hook(model, LAYER, SteeringSource(factors, delta=delta)):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                           use_cache=False).logits
    return delta, logits, hidden


@pytest.mark.parametrize("context_layer", [None, 1])
def test_single_pass_cross_attention_equals_two_pass_reference(gemma, tokenizer, context_layer):
    hs = make_hs(gemma, tokenizer, "xattn", backend="pyvene", context_layer=context_layer)
    ids, mask, hyper_ids, hyper_mask = batch_inputs(hs, BASE, STEER)
    factors = torch.tensor([0.5, 1.0, 2.5])
    with torch.no_grad():
        out = hs(ids, mask, hyper_ids, hyper_mask, factors=factors)
    read_at = LAYER if context_layer is None else context_layer
    delta, ref, hidden = two_pass_reference(gemma, hs, ids, mask, hyper_ids, hyper_mask,
                                            factors, read_at)
    torch.testing.assert_close(out.steering_vectors, delta, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    if context_layer is not None:  # the earlier block really is the one read
        with torch.no_grad():
            at_l = hs.hypernet(hyper_ids, hyper_mask, context=hidden[LAYER + 1],
                               context_mask=mask.bool())
        assert not torch.allclose(at_l, delta, atol=1e-4)
    # steering_vectors (no steering) reads the same residual; residual_after cleans up its hook.
    with torch.no_grad():
        torch.testing.assert_close(hs.steering_vectors(STEER, BASE), delta, atol=1e-5, rtol=0)
        partial = residual_after(gemma, read_at, ids, mask, positions(mask))
    assert torch.equal(partial, hidden[read_at + 1])
    assert no_hooks_left(gemma)


def test_generate_with_and_without_cache_agree(runs):
    assert torch.equal(runs.tokens["pyvene"], runs.tokens["no_cache"])


# ----- 10. a second architecture --------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_llama_base_model(llama, tokenizer, variant):
    hs = make_hs(llama, tokenizer, variant, backend="pyvene")
    perturb_(hs.hypernet)
    ids, mask, hyper_ids, hyper_mask = batch_inputs(hs, BASE, STEER)
    n = len(BASE)
    with torch.no_grad():
        zero = hs(ids, mask, hyper_ids, hyper_mask, factors=torch.zeros(n)).logits
        steered = hs(ids, mask, hyper_ids, hyper_mask, factors=torch.full((n,), 2.0)).logits
    plain = plain_forward(llama, ids, mask).logits
    assert torch.equal(zero, plain)
    assert not torch.allclose(steered, plain)
    assert torch.equal(steered_greedy(hs, ids, mask, hyper_ids, hyper_mask, [0.0] * n),
                       greedy(llama, ids, mask, tokenizer))

    with torch.no_grad():
        vecs = hs.steering_vectors([STEER[0]] * 2, BASE[:2])
    assert vecs.shape == (2, llama.config.hidden_size)
    if variant == "nocontext":
        assert torch.equal(vecs[0], vecs[1])
    else:
        assert not torch.allclose(vecs[0], vecs[1], atol=1e-4)

    texts = hs.generate(BASE, STEER, FACTORS, max_new_tokens=5)
    assert len(texts) == n and all(isinstance(t, str) for t in texts)
    assert no_hooks_left(llama)


def test_llama_single_pass_equals_two_pass(llama, tokenizer):
    hs = make_hs(llama, tokenizer, "xattn")
    ids, mask, hyper_ids, hyper_mask = batch_inputs(hs, BASE, STEER)
    factors = torch.tensor(FACTORS)
    with torch.no_grad():
        out = hs(ids, mask, hyper_ids, hyper_mask, factors=factors)
    delta, ref, _ = two_pass_reference(llama, hs, ids, mask, hyper_ids, hyper_mask, factors,
                                       LAYER)
    torch.testing.assert_close(out.steering_vectors, delta, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)


# ----- 12. SteeringSource / Steerer input checks ----------------------------------------------
def test_steering_source_rejects_batch_mismatch():
    d = 8
    hidden = torch.zeros(3, 4, d)
    with pytest.raises(ValueError, match="batch 2 but the layer output has batch 3"):
        SteeringSource(torch.ones(2), delta=torch.ones(2, d))(hidden)
    with pytest.raises(ValueError, match="batch 2 but the layer output has batch 3"):
        SteeringSource(torch.ones(2), delta_fn=lambda h: torch.ones(2, d))(hidden)
    # Factors that do not match the vectors: a clear error, never silent broadcasting.
    with pytest.raises(ValueError, match="factors"):
        SteeringSource(torch.ones(1), delta=torch.ones(3, d))(hidden)
    with pytest.raises(ValueError, match="factors"):
        SteeringSource(torch.ones(2), delta=torch.ones(3, d))(hidden)
    with pytest.raises(ValueError, match="exactly one"):
        SteeringSource(torch.ones(3))
    with pytest.raises(ValueError, match="exactly one"):
        SteeringSource(torch.ones(3), delta=torch.ones(3, d), delta_fn=lambda h: h[:, 0])
    out = SteeringSource(torch.tensor([0.0, 1.0, 2.0]), delta=torch.ones(3, d))(hidden)
    assert torch.equal(out[:, :, 0], torch.tensor([0.0, 1.0, 2.0])[:, None].expand(3, 4))


def test_steering_source_computes_delta_once_and_reuses_it():
    calls = []

    def fn(h):
        calls.append(tuple(h.shape))
        return h[:, -1]

    src = SteeringSource(torch.ones(2), delta_fn=fn)
    prompt = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(src(prompt), prompt + prompt[:, -1][:, None, :])
    assert torch.equal(src(torch.zeros(2, 1, 4))[:, 0], prompt[:, -1])
    assert calls == [(2, 5, 4)]


def test_generate_rejects_num_return_sequences_mismatch(gemma, tokenizer):
    hs = make_hs(gemma, tokenizer, "nocontext", backend="hook")
    ids, mask, hyper_ids, hyper_mask = batch_inputs(hs, BASE[:2], STEER[:2])
    with pytest.raises(ValueError, match="batch"):
        hs.generate_ids(ids, mask, hyper_ids, hyper_mask, torch.ones(2), max_new_tokens=2,
                        do_sample=False, num_beams=2, num_return_sequences=2)
    assert no_hooks_left(gemma)


@pytest.mark.parametrize("backend", ["pyvene", "hook"])
def test_failed_steered_call_leaves_no_hooks(gemma, tokenizer, backend):
    """An error raised inside the steered forward (here: one factor for two rows) must not leave
    the steering hooks on the base model: pyvene's forward removes them only on success."""
    ids, mask = encode(tokenizer, BASE[:2])
    source = SteeringSource(torch.ones(1), delta=torch.ones(2, gemma.config.hidden_size))
    with torch.no_grad(), pytest.raises(ValueError, match="factors"):
        Steerer(gemma, LAYER, backend=backend).forward(source, input_ids=ids, attention_mask=mask)
    assert no_hooks_left(gemma), leftover_hooks(gemma)


def test_steerer_rejects_bad_layer_and_backend(gemma):
    with pytest.raises(ValueError, match="out of range"):
        Steerer(gemma, 4)
    with pytest.raises(ValueError, match="backend"):
        Steerer(gemma, 1, backend="nnsight")
