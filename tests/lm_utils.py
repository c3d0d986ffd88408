"""Tiny RWKV language models with random weights, shared by the language-model tests."""
import torch

from rwkv_hf.lm import RWKV_LM_CLASSES

VERSIONS = (4, 5, 6, 7)
VOCAB = 97


def tiny_config(version, **overrides):
    kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, head_size=16, intermediate_size=48)
    if version == 6:
        kw.update(time_mix_extra_dim=8, time_decay_extra_dim=8)
    if version == 7:
        kw.update(decay_low_rank_dim=8, a_low_rank_dim=8, value_low_rank_dim=8, gate_low_rank_dim=8)
    kw.update(overrides)
    return RWKV_LM_CLASSES[version][0](**kw)


def randomize(model, seed=0, scale=0.3):
    """Perturb every parameter: the init zeroes output projections, which would hide bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * scale)
    return model


def tiny_model(version, kind="causal", seed=0, **overrides):
    config = tiny_config(version, **overrides)
    cls = {"base": 1, "causal": 2, "seq": 3}[kind]
    torch.manual_seed(seed)
    return randomize(RWKV_LM_CLASSES[version][cls](config), seed).eval()


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
