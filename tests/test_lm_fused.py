"""The fused CPU inference path of the language models (rwkv_hf.lm.cpu_fused: one C call per
block) against the eager blocks: the same logits and states, in float32 against a float64 eager
run, for every version, batch sizes above one, prompts long enough to split rows over threads,
and generation steps; and the eager path wherever the fused one would not compute the same
thing (gradients, hooks, PEFT adapters, other dtypes, no BLAS symbol in torch)."""
import copy

import pytest
import torch

from rwkv_hf.lm import cpu_fused
from rwkv_hf.ops import cpu_backend

from lm_utils import VERSIONS, VOCAB, rel_err, tiny_model

# Wide enough that heads hold several channels and long prompts cross the kernels' threading
# threshold (B * T * C >= 32768 floats).
SIZES = dict(hidden_size=64, head_size=16, num_hidden_layers=3, intermediate_size=160)


def _model(version, seed=0):
    return tiny_model(version, seed=seed, **SIZES)


def _states(cache):
    return [t for layer in cache.layers for t in (layer.conv_states[0], layer.recurrent_states[0],
                                                   layer.conv_states[1])]


class _CountFused:
    """Counts the blocks that ran on the fused path."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = cpu_fused.Runner.block

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(cpu_fused.Runner, "block", counted)


@pytest.fixture
def fused_calls(monkeypatch):
    return _CountFused(monkeypatch)


def _run(model, ids, prompt):
    """Logits, states and hidden states of a prompt, then of three generation steps."""
    out = model(ids[:, :prompt], use_cache=True, output_hidden_states=True)
    got = [out.logits, *out.hidden_states, *(t.clone() for t in _states(out.cache))]  # (updated in place)
    cache = out.cache
    for t in range(prompt, ids.shape[1]):
        out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
        got.append(out.logits)
    return got + _states(cache)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("batch,prompt", [(1, 1), (2, 13), (2, 300)])
def test_fused_prefill_and_steps_match_float64_eager(version, batch, prompt, fused_calls, monkeypatch):
    """Within 1e-5 of float64, or (long v4 states: exp-space sums) within twice the eager
    float32 error; hidden states returned are copies, not the buffer the blocks update."""
    model = _model(version)
    gen = torch.Generator().manual_seed(version)
    ids = torch.randint(0, VOCAB, (batch, prompt + 3), generator=gen)
    with torch.no_grad():
        fused = _run(model, ids, prompt)
        assert fused_calls.calls == 4 * SIZES["num_hidden_layers"]  # prompt + 3 steps
        want = _run(copy.deepcopy(model).double(), ids, prompt)  # float64: eager (fused is float32 only)
        monkeypatch.setenv(cpu_fused.ENV, "0")
        eager = _run(model, ids, prompt)
    assert fused_calls.calls == 4 * SIZES["num_hidden_layers"]  # prompt + 3 steps
    for got, fp32, exp in zip(fused, eager, want):
        assert rel_err(got, exp) <= max(1e-5, 2 * rel_err(fp32, exp))


@pytest.mark.parametrize("version", VERSIONS)
def test_fused_left_padded_batch_matches_float64_eager(version, fused_calls, monkeypatch):
    """Padding runs fused too: inputs of padded positions zeroed (v4: keys to -1e30), as eager."""
    model = _model(version)
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (3, 11), generator=gen)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, :4] = 0
    mask[2, :9] = 0
    with torch.no_grad():
        fused = model(ids, attention_mask=mask, use_cache=True)
        assert fused_calls.calls == SIZES["num_hidden_layers"]
        want = copy.deepcopy(model).double()(ids, attention_mask=mask, use_cache=True)
        monkeypatch.setenv(cpu_fused.ENV, "0")
        eager = model(ids, attention_mask=mask, use_cache=True)
    real = mask.bool()
    for got, fp32, exp in ((fused.logits[real], eager.logits[real], want.logits[real]),
                           *zip(_states(fused.cache), _states(eager.cache), _states(want.cache))):
        assert rel_err(got, exp) <= max(1e-5, 2 * rel_err(fp32, exp))


@pytest.mark.parametrize("version", VERSIONS)
def test_fused_generation_equals_eager_generation(version, monkeypatch, fused_calls):
    model = _model(version, seed=1)
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(1))
    fused = model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert fused_calls.calls > 0
    monkeypatch.setenv(cpu_fused.ENV, "0")
    calls = fused_calls.calls
    eager = model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert fused_calls.calls == calls  # the switch turns it off
    assert torch.equal(fused, eager)


def test_eager_path_where_fused_would_differ(fused_calls):
    model = _model(7)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    model(ids)  # gradients enabled: the eager (training) path
    with torch.no_grad():
        copy.deepcopy(model).double()(ids)  # float64
        assert fused_calls.calls == 0
        seen = []
        handle = model.model.blocks[1].attn.key.register_forward_hook(lambda *a: seen.append(1))
        model(ids)  # a hook must run, so the eager path runs
        assert seen == [1] and fused_calls.calls == 0
        handle.remove()
        model(ids)
        assert fused_calls.calls == SIZES["num_hidden_layers"]


def test_peft_adapters_take_the_eager_path(fused_calls):
    peft = pytest.importorskip("peft")
    model = _model(6)
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(ids).logits
    config = peft.LoraConfig(r=4, target_modules=["key", "value", "receptance"], init_lora_weights=False)
    lora = peft.get_peft_model(model, config).eval()
    fused_calls.calls = 0
    with torch.no_grad():
        adapted = lora(input_ids=ids).logits
        assert fused_calls.calls == 0
        merged = lora.merge_and_unload()  # plain Linears again: the fused path, the same function
        assert rel_err(merged(ids).logits, adapted) < 1e-5
    assert fused_calls.calls == SIZES["num_hidden_layers"]
    assert rel_err(adapted, base) > 1e-3  # the adapter is really applied


@pytest.mark.parametrize("version", VERSIONS)
def test_a_cache_read_with_use_cache_false_is_left_unchanged(version, fused_calls):
    model = _model(version)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
        before = [t.clone() for t in _states(cache)]
        peek = model(ids[:, :2], cache=cache, use_cache=False)
        assert peek.cache is None and fused_calls.calls == 2 * SIZES["num_hidden_layers"]
        assert all(torch.equal(a, b) for a, b in zip(_states(cache), before))
        step = model(ids[:, :2], cache=cache, use_cache=True)  # the same input, now kept
    assert rel_err(step.logits, peek.logits) < 1e-6
    assert not all(torch.equal(a, b) for a, b in zip(_states(cache), before))


def test_inputs_embeds_are_left_untouched(fused_calls):
    model = _model(7)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        before = embeds.clone()
        from_embeds = model(inputs_embeds=embeds).logits
        from_ids = model(ids).logits
    assert fused_calls.calls == 2 * SIZES["num_hidden_layers"]
    assert torch.equal(embeds, before)  # the blocks update their own copy (after ln0) in place
    assert rel_err(from_embeds, from_ids) < 1e-6


def test_without_torchs_sgemm_the_eager_path_runs(monkeypatch, fused_calls):
    model = _model(4)
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fused = model(ids).logits
        calls = fused_calls.calls
        monkeypatch.setattr(cpu_fused, "_lib", None)  # forget the loaded library ...
        monkeypatch.setattr(cpu_backend, "_blas_error", None)
        monkeypatch.setattr(cpu_backend, "_torch_sgemm", lambda: None)  # ... and find no BLAS symbol
        eager = model(ids).logits
        assert cpu_fused.available() == (False, "this torch build exports no sgemm_ from its CPU library")
    assert fused_calls.calls == calls
    assert rel_err(fused, eager) < 1e-5


def test_the_usable_check_sees_swapped_and_retyped_modules():
    model = _model(5)
    blocks, hidden = model.model.blocks, torch.zeros(1, 1, SIZES["hidden_size"])
    with torch.no_grad():
        assert cpu_fused.usable(blocks, hidden)
        assert not cpu_fused.usable(blocks, hidden.double())
        original = blocks[2].ffn.value
        blocks[2].ffn.value = torch.nn.utils.parametrizations.weight_norm(copy.deepcopy(original))
        assert not cpu_fused.usable(blocks, hidden)  # a parametrised Linear is another type
        blocks[2].ffn.value = original
        blocks[0].attn.time_mix_k.data = blocks[0].attn.time_mix_k.data.half()
        assert not cpu_fused.usable(blocks, hidden)

