"""Checkpoint conversion (rwkv_hf.conversion.convert, ``rwkv-hf convert``): every source
layout into rwkv_hf folders with equal logits, the BlinkDL round trip bit for bit, safe
loading, bad input and the model card. Small random models (L >= 2, no size-1 dims)."""
import json
import os
import pathlib
import re

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import rwkv_hf  # noqa: F401  (registers the model types)
from rwkv_hf.cli import main
from rwkv_hf.conversion.blinkdl import to_blinkdl
from rwkv_hf.conversion.convert import convert
from rwkv_hf.conversion.loading import ConversionError
from lm_utils import rel_err, tiny_model

SHAPE = dict(hidden_size=64, head_size=32, num_hidden_layers=3, intermediate_size=96)
IDS = torch.randint(0, 97, (1, 13), generator=torch.Generator().manual_seed(1))


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits[0]


def _our_steps(model, ids=IDS):
    out, steps = None, []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            out = model(ids[:, t:t + 1], cache=None if out is None else out.cache, use_cache=True)
            steps.append(out.logits[0, -1])
    return torch.stack(steps)


def _no_partial_output(folder):
    return not any(".partial-" in p.name for p in pathlib.Path(folder).iterdir())


# ----------------------------------------------------------------- transformers' own RWKV-4


def test_transformers_rwkv4_folder_matches_transformers(tmp_path):
    from transformers import RwkvConfig, RwkvForCausalLM

    # rescale_every=0: transformers halves the hidden state every `rescale_every` blocks in eval
    # (an fp16 overflow guard, neutral up to LayerNorm eps); the stored weights are unscaled either
    # way, and 0 makes their forward the plain one we compare against.
    config = RwkvConfig(vocab_size=97, hidden_size=64, num_hidden_layers=3, intermediate_size=96,
                        rescale_every=0, context_length=64)
    torch.manual_seed(0)
    theirs = RwkvForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.3
            if name.endswith("time_decay"):  # keep the decay in BlinkDL's range: w = -exp(td)
                p.copy_(torch.linspace(-3, 1, p.numel()) + noise)
            else:
                p.add_(noise)
    theirs.save_pretrained(tmp_path / "hf")
    report = convert(tmp_path / "hf", tmp_path / "out", verbose=False)
    assert report["layout"] == "hf" and report["version"] == 4
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(ours).__name__ == "RwkvV4ForCausalLM"

    with torch.no_grad():
        ref_full = theirs(IDS, use_cache=False).logits[0]
        state, ref_steps = None, []
        for t in range(IDS.shape[1]):
            out = theirs(IDS[:, t:t + 1], state=state, use_cache=True)
            state = out.state
            ref_steps.append(out.logits[0, -1])
        ref_steps = torch.stack(ref_steps)
    assert rel_err(_logits(ours), ref_full) <= 1e-4
    assert rel_err(_our_steps(ours), ref_steps) <= 1e-4
    assert rel_err(_our_steps(ours), ref_full) <= 1e-4


# ----------------------------------------------------------------- BlinkDL .pth, both directions


@pytest.mark.parametrize("version", (4, 5, 6, 7))
def test_blinkdl_pth_through_the_cli_and_back_bit_for_bit(version, tmp_path, capsys):
    model = tiny_model(version, seed=version, vocab_size=97, **SHAPE)
    sd = to_blinkdl(model)
    if version == 7:  # unused by the math, but must survive the round trip
        gen = torch.Generator().manual_seed(7)
        for k in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"):
            sd[k] = torch.randn(sd[k].shape, generator=gen)
    torch.save(sd, tmp_path / "rand.pth")

    assert main(["convert", str(tmp_path / "rand.pth"), str(tmp_path / "hf")]) == 0
    printed = capsys.readouterr().out
    assert f"BlinkDL .pth (RWKV-{version})" in printed and str(tmp_path / "hf") in printed
    if version == 7:
        assert "blocks.0.att.v0" in printed
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(_logits(converted), _logits(model))

    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(back) == list(sd)  # BlinkDL's key order
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_bf16_checkpoint_stays_bf16_and_v7_unused_tensors_default_to_zeros(tmp_path):
    sd = {k: v.to(torch.bfloat16) for k, v in to_blinkdl(tiny_model(7, **SHAPE)).items()}
    torch.save(sd, tmp_path / "bf16.pth")
    convert(tmp_path / "bf16.pth", tmp_path / "hf", verbose=False)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    convert(tmp_path / "hf", tmp_path / "back.pth", verbose=False)
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], v) for k, v in sd.items())
    # a folder without blinkdl_unused.safetensors (a model trained here) writes them as zeros
    os.remove(tmp_path / "hf" / "blinkdl_unused.safetensors")
    report = convert(tmp_path / "hf", tmp_path / "zeros.pth", verbose=False)
    assert any("as zeros" in n for n in report["notes"])
    assert not torch.load(tmp_path / "zeros.pth", weights_only=True)["blocks.0.att.v1"].any()


# ----------------------------------------------------------------- Hub remote-code v5 / v6

# Written from the reference doc (transformers' convert_rwkv_checkpoint_to_hf renames, which the
# Hub v5/v6 repositories follow), not from rwkv_hf's converter.
_HUB_RENAMES = [(r"^emb\.", "embeddings."), (r"^blocks\.0\.ln0\.", "blocks.0.pre_ln."),
                (r"\.att\.", ".attention."), (r"\.ffn\.", ".feed_forward."),
                (r"\.time_mix_k$", ".time_mix_key"), (r"\.time_mix_v$", ".time_mix_value"),
                (r"\.time_mix_r$", ".time_mix_receptance"), (r"\.time_mix_g$", ".time_mix_gate")]


def _hub_state_dict(blinkdl_sd):
    out = {}
    for key, tensor in blinkdl_sd.items():
        name = key
        for pattern, repl in _HUB_RENAMES:
            name = re.sub(pattern, repl, name)
        out[name if name == "head.weight" else "rwkv." + name] = tensor.clone()
    return out


@pytest.mark.parametrize("version", (5, 6))
def test_hub_remote_code_layouts(version, tmp_path):
    model = tiny_model(version, seed=version, **SHAPE)
    hub = _hub_state_dict(to_blinkdl(model))
    assert "rwkv.blocks.0.pre_ln.weight" in hub and "rwkv.blocks.1.attention.ln_x.weight" in hub
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": [f"Rwkv{version}ForCausalLM"], "model_type": f"rwkv{version}", "hidden_size": 64,
        "num_hidden_layers": 3, "head_size": 32, "head_size_divisor": 8, "vocab_size": 97,
        "intermediate_size": 96, "layer_norm_epsilon": 1e-5, "rescale_every": 6}))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a Hub model\n")
    if version == 5:  # Eagle ships pytorch_model.bin
        torch.save(hub, folder / "pytorch_model.bin")
    else:  # sharded safetensors
        keys = list(hub)
        shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, part in shards.items():
            save_file({k: hub[k].contiguous() for k in part}, folder / name)
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}))
    report = convert(folder, tmp_path / "out", verbose=False)
    assert report["layout_name"] == f"Hub remote code Rwkv{version}ForCausalLM"
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert converted.config.head_size == 32 and converted.config.group_norm_epsilon == 64e-5
    assert rel_err(_logits(converted), _logits(model)) <= 1e-6
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "apache-2.0"


# ----------------------------------------------------------------- flash-linear-attention RWKV-7


def _blinkdl_to_fla(sd, num_layers):
    """BlinkDL -> fla names, following fla's utils/convert_from_rwkv7.py as the reference doc
    describes it: transpose the [wvag][12] LoRA matrices, X0 -> lora.2.bias, squeeze [1,1,C],
    drop block 0's v0/v1/v2."""
    out = {"model.embeddings.weight": sd["emb.weight"], "lm_head.weight": sd["head.weight"],
           "model.norm.weight": sd["ln_out.weight"], "model.norm.bias": sd["ln_out.bias"]}
    proj = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"}
    for i in range(num_layers):
        b, f = f"blocks.{i}.", f"model.layers.{i}."
        for ln, name in (("ln0", "pre_norm"), ("ln1", "attn_norm"), ("ln2", "ffn_norm")):
            if i > 0 and ln == "ln0":
                continue
            out[f + name + ".weight"], out[f + name + ".bias"] = sd[b + ln + ".weight"], sd[b + ln + ".bias"]
        for x in "rwkvag":
            out[f + f"attn.x_{x}"] = sd[b + f"att.x_{x}"]  # fla keeps [1, 1, C] here
        out[f + "attn.k_k"] = sd[b + "att.k_k"].flatten()
        out[f + "attn.k_a"] = sd[b + "att.k_a"].flatten()
        out[f + "attn.r_k"] = sd[b + "att.r_k"]
        for ours, theirs in proj.items():
            out[f + f"attn.{theirs}.weight"] = sd[b + f"att.{ours}.weight"]
        for x in "wavg":
            if x == "v" and i == 0:
                continue
            out[f + f"attn.{x}_lora.lora.0.weight"] = sd[b + f"att.{x}1"].t().contiguous()
            out[f + f"attn.{x}_lora.lora.2.weight"] = sd[b + f"att.{x}2"].t().contiguous()
            if x != "g":
                out[f + f"attn.{x}_lora.lora.2.bias"] = sd[b + f"att.{x}0"].flatten()
        out[f + "attn.g_norm.weight"], out[f + "attn.g_norm.bias"] = sd[b + "att.ln_x.weight"], sd[b + "att.ln_x.bias"]
        out[f + "ffn.x_k"] = sd[b + "ffn.x_k"].flatten()
        out[f + "ffn.key.weight"], out[f + "ffn.value.weight"] = sd[b + "ffn.key.weight"], sd[b + "ffn.value.weight"]
    return out


def test_fla_rwkv7_layout(tmp_path):
    fla_models = pytest.importorskip("fla.models")
    model = tiny_model(7, seed=3, **SHAPE)
    config = model.config
    fla_config = fla_models.RWKV7Config(
        hidden_size=64, num_hidden_layers=3, head_dim=32, vocab_size=97, intermediate_size=96,
        decay_low_rank_dim=config.decay_low_rank_dim, a_low_rank_dim=config.a_low_rank_dim,
        v_low_rank_dim=config.value_low_rank_dim, gate_low_rank_dim=config.gate_low_rank_dim,
        fuse_norm=False, fuse_cross_entropy=False)
    fla_model = fla_models.RWKV7ForCausalLM(fla_config)
    fla_sd = _blinkdl_to_fla(to_blinkdl(model), 3)
    # the table produces exactly fla's own parameter names and shapes
    expected = {k: tuple(v.shape) for k, v in fla_model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in fla_sd.items()} == expected
    fla_model.load_state_dict(fla_sd, strict=True)
    fla_model.save_pretrained(tmp_path / "fla")  # a real fla folder (config.json + safetensors)

    report = convert(tmp_path / "fla", tmp_path / "out", verbose=False)
    assert report["layout"] == "fla" and report["ignored_by_math"] == []
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    mine = model.state_dict()
    assert converted.state_dict().keys() == mine.keys()
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in mine.items())
    assert torch.equal(_logits(converted), _logits(model))
    # fla's forward needs Triton on a GPU; on CPU it cannot run, hence the tensor-level check.


# ----------------------------------------------------------------- safe loading


class _Marker:
    """Unpickling it would create a file: proof that nothing was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_pickled_objects_become_inert_placeholders_and_training_checkpoints_convert(tmp_path, capsys):
    import argparse

    sd = to_blinkdl(tiny_model(4))
    marker = tmp_path / "executed"
    # a payload next to the weights: read as a placeholder, never run; the stray entry is named
    torch.save({"weights": sd["emb.weight"], "hook": _Marker(str(marker))}, tmp_path / "evil.pth")
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "evil.pth" in err and "'hook'" in err and "pathlib.Path.touch" in err and "Traceback" not in err
    assert "--trust-pickle" not in err  # trusting the file would not make it a state dict
    assert not marker.exists() and not (tmp_path / "out").exists() and _no_partial_output(tmp_path)

    # a training checkpoint: the weights plus an argparse.Namespace, read without --trust-pickle
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1e-4), "hook": _Marker(str(marker))},
               tmp_path / "train.pth")
    convert(tmp_path / "train.pth", tmp_path / "out", verbose=False)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.model_type == "rwkv_hf_v4"
    assert not marker.exists()
    # --trust-pickle still reads it with the full pickle machinery (which runs the payload)
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "train2.pth")
    assert main(["convert", str(tmp_path / "train2.pth"), str(tmp_path / "out2"), "--trust-pickle"]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out2").config.model_type == "rwkv_hf_v4"


# ----------------------------------------------------------------- bad input


def _fails(capsys, src, dst, *words):
    assert main(["convert", str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not os.path.exists(dst) and _no_partial_output(os.path.dirname(dst))


def test_bad_input_is_refused_with_a_named_reason(tmp_path, capsys):
    out = tmp_path / "out"
    save_file({"foo.weight": torch.zeros(3, 4), "bar.bias": torch.zeros(4)}, tmp_path / "odd.safetensors")
    _fails(capsys, tmp_path / "odd.safetensors", out, "unknown checkpoint layout", "foo.weight")

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    _fails(capsys, tmp_path / "notes", out, "not a model folder", "notes")

    good = to_blinkdl(tiny_model(7, **SHAPE))
    torch.save(good, tmp_path / "good.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:5000])
    _fails(capsys, tmp_path / "cut.pth", out, "cut.pth", "truncated")

    (tmp_path / "text.pth").write_text("not a checkpoint")
    _fails(capsys, tmp_path / "text.pth", out, "text.pth")

    bad_head = dict(good, **{f"blocks.{i}.att.r_k": torch.zeros(2, 24) for i in range(3)})
    torch.save(bad_head, tmp_path / "head.pth")
    _fails(capsys, tmp_path / "head.pth", out, "head.pth", "head_size=24", "not divisible")

    wrong = dict(good, **{"blocks.1.ffn.key.weight": torch.zeros(95, 64)})
    torch.save(wrong, tmp_path / "shape.pth")
    _fails(capsys, tmp_path / "shape.pth", out, "blocks.1.ffn.key.weight", "(95, 64)", "(96, 64)")

    missing = {k: v for k, v in good.items() if k != "blocks.2.att.k_a"}
    torch.save(missing, tmp_path / "missing.pth")
    _fails(capsys, tmp_path / "missing.pth", out, "missing.pth", "k_a")

    hub = _hub_state_dict(to_blinkdl(tiny_model(6)))
    hub["rwkv.blocks.1.attention.mystery"] = torch.zeros(3)
    save_file(hub, tmp_path / "hub.safetensors")
    _fails(capsys, tmp_path / "hub.safetensors", out, "rwkv.blocks.1.attention.mystery")

    # an existing, non-empty destination is never overwritten without --overwrite
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", str(tmp_path / "good.pth"), str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()


# ----------------------------------------------------------------- model card and tokenizer


def test_model_card_and_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    model = tiny_model(7, vocab_size=65536, hidden_size=32, head_size=16, num_hidden_layers=2)
    torch.save(to_blinkdl(model), tmp_path / "world.pth")
    convert(tmp_path / "world.pth", tmp_path / "out", verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.decode(tokenizer("Hello RWKV").input_ids) == "Hello RWKV"
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 0 and not generation.get("do_sample", False)

    card = ModelCard.load(tmp_path / "out" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["tags"] == ["rwkv", "rwkv-v7", "rwkv_hf"] and "license" not in data  # unknown: not guessed
    # Hub validation (ModelCard.validate) needs the network; the metadata round-trips through
    # huggingface_hub's own ModelCardData and the body states the model's numbers.
    assert ModelCardData(**data).to_dict() == data
    params = sum(p.numel() for p in model.parameters())
    for text in ("| layers | 2 |", "| width (hidden size) | 32 |", "| heads x head size | 2 x 16 |",
                 f"{params:,}", "BlinkDL .pth (RWKV-7)", "| tokenizer | included |"):
        assert text in card.text, text


# ----------------------------------------------------------------- bounded memory (streaming I/O)


def test_streaming_safetensors_writer_is_byte_for_byte_save_file(tmp_path):
    from safetensors.torch import load_file

    from rwkv_hf.conversion.safetensors_io import load_mapped, save_streaming

    gen = torch.Generator().manual_seed(0)
    tensors = {"b.w": torch.randn(3, 5, generator=gen), "a.half": torch.randn(4, generator=gen).half(),
               "bf": torch.randn(2, 3, generator=gen).bfloat16(), "ids": torch.arange(6).reshape(2, 3),
               "i32": torch.arange(3, dtype=torch.int32), "flag": torch.tensor([True, False]),
               "u8": torch.arange(5, dtype=torch.uint8), "f64": torch.randn(2, generator=gen).double(),
               "t": torch.randn(4, 6, generator=gen).t(), "strided": torch.randn(10, generator=gen)[::2],
               "empty": torch.zeros(0, 3)}
    for metadata in (None, {"format": "pt"}):
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "ref.safetensors", metadata=metadata)
        save_streaming(tensors, tmp_path / "ours.safetensors", metadata=metadata)
        assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    mapped, loaded = load_mapped(tmp_path / "ref.safetensors"), load_file(tmp_path / "ref.safetensors")
    assert list(mapped) == list(loaded) or set(mapped) == set(loaded)
    for k, v in loaded.items():
        assert mapped[k].dtype == v.dtype and torch.equal(mapped[k], v), k
        # one storage per tensor, holding just its bytes (torch.save writes whole storages)
        assert mapped[k].untyped_storage().nbytes() == v.numel() * v.element_size(), k
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "ref.safetensors").read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated"):
        load_mapped(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("version", (4, 5, 6, 7))
def test_streamed_folder_is_what_save_pretrained_writes(version, tmp_path):
    """model.safetensors is written tensor by tensor from the memory-mapped source, not by
    save_pretrained: it must hold exactly the bytes save_pretrained writes for the same model."""
    sd = {k: v.to(torch.bfloat16) for k, v in to_blinkdl(tiny_model(version, seed=3, **SHAPE)).items()}
    torch.save(sd, tmp_path / "src.pth")
    convert(tmp_path / "src.pth", tmp_path / "hf", verbose=False)
    # the reference: the converter's model as it used to be saved (save_pretrained of the
    # source's tensors placed into a meta-device model)
    from rwkv_hf.conversion.blinkdl import from_blinkdl
    from rwkv_hf.lm import RWKV_LM_CLASSES

    config, ours_sd, _ = from_blinkdl(torch.load(tmp_path / "src.pth", weights_only=True))
    with torch.device("meta"):
        model = RWKV_LM_CLASSES[version][2](config)
    model.load_state_dict({k: v.contiguous() for k, v in ours_sd.items()}, strict=True, assign=True)
    model.save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == \
        (tmp_path / "resaved" / "model.safetensors").read_bytes()
    ours = json.loads((tmp_path / "hf" / "config.json").read_text())
    theirs = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert ours == theirs
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "README.md"} <= names


def test_pth_from_a_mapped_folder_holds_each_tensor_once(tmp_path):
    """The folder is read memory-mapped and the .pth saved from views (no clones): every tensor
    of the .pth must still be its own storage of exactly its bytes, and the file no bigger."""
    sd = {k: v.to(torch.bfloat16) for k, v in to_blinkdl(tiny_model(7, seed=5, **SHAPE)).items()}
    torch.save(sd, tmp_path / "src.pth")
    convert(tmp_path / "src.pth", tmp_path / "hf", verbose=False)
    convert(tmp_path / "hf", tmp_path / "back.pth", verbose=False)
    back = torch.load(tmp_path / "back.pth", weights_only=True, mmap=True)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
        assert back[k].untyped_storage().nbytes() == v.numel() * v.element_size(), k
    payload = sum(v.numel() * v.element_size() for v in sd.values())
    assert os.path.getsize(tmp_path / "back.pth") < payload + 64 * 1024 + 2048 * len(sd)


def test_a_file_that_is_not_a_pickle_is_called_unreadable_not_unsafe(tmp_path, capsys):
    from rwkv_hf.cli import main

    bad = tmp_path / "notes.pth"
    bad.write_text("these are my notes, not a checkpoint\n")
    assert main(["convert", str(bad), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "not a readable PyTorch checkpoint" in err and "notes.pth" in err
    assert "--trust-pickle" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
