"""RWKV-CLIP: parity with a float64 re-implementation of the official model
(``rwkv_clip_official``), the text tower's padding semantics, the processor against open_clip's
tokenizer and evaluation transform, conversion of official checkpoints, Auto classes, the
zero-shot pipeline and saving / loading."""
import hashlib
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import rwkv_clip_official as official  # noqa: E402

import rwkv_hf  # noqa: E402,F401
from rwkv_hf.clip import RwkvClipConfig, RwkvClipModel, RwkvClipTextConfig, RwkvClipTextModel  # noqa: E402
from rwkv_hf.clip import processing_rwkv_clip as processing  # noqa: E402

CTX = 77
SIZES = dict(C=64, depth=2, img_size=64, patch=16, heads=2, hidden_rate=5,
             vocab_size=120, n_embd=64, n_layer=3, dim_ffn=224, head_size=32)


def _config(s=SIZES, **text):
    return RwkvClipConfig(
        vision_config=dict(image_size=s["img_size"], patch_size=s["patch"], hidden_size=s["C"],
                           num_hidden_layers=s["depth"], intermediate_size=s["hidden_rate"] * s["C"],
                           head_size=s["C"] // s["heads"]),
        text_config=dict(vocab_size=s["vocab_size"], hidden_size=s["n_embd"], num_hidden_layers=s["n_layer"],
                         intermediate_size=s["dim_ffn"], head_size=s["head_size"], **text))


def _official(seed=0, s=SIZES):
    return official.randomize(official.OfficialRwkvClip(**s), seed).double().eval()


def _ours(off, s=SIZES, dtype=torch.float64):
    model = RwkvClipModel(_config(s)).to(dtype).eval()
    model.load_state_dict({k: v.to(dtype) for k, v in off.state_dict().items()}, strict=True)
    return model


def _texts(n, vocab, seed=1, lengths=(20, 5, 1, 40)):
    """Official-style token rows: sot, ids, eot, zero padding to 77."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, CTX, dtype=torch.long)
    for i in range(n):
        length = lengths[i % len(lengths)]
        ids[i, 0] = vocab - 2
        ids[i, 1:1 + length] = torch.randint(1, vocab - 2, (length,), generator=g)
        ids[i, 1 + length] = vocab - 1
    return ids


def _pixels(n, size, seed=2, dtype=torch.float64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("image_size", [64, 80])  # 80: the position embeddings are resized
def test_matches_the_official_model_in_float64(image_size):
    off = _official()
    ours = _ours(off)
    ids, px = _texts(3, SIZES["vocab_size"]), _pixels(3, image_size)
    img, txt, scale = off(px, ids)
    out = ours(input_ids=ids, pixel_values=px, return_loss=True)
    torch.testing.assert_close(ours.get_image_features(px).pooler_output, img, rtol=0, atol=1e-11)
    torch.testing.assert_close(ours.get_text_features(ids).pooler_output, txt, rtol=0, atol=1e-11)
    expect = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    torch.testing.assert_close(out.logits_per_image, expect, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.logits_per_text, expect.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.loss, off.clip_loss(px, ids), rtol=0, atol=1e-12)


def test_every_gradient_matches_the_official_model():
    off = _official(seed=3)
    ours = _ours(off).train()
    ids, px = _texts(2, SIZES["vocab_size"], seed=4), _pixels(2, 64, seed=5)
    off.clip_loss(px, ids).backward()
    ours(input_ids=ids, pixel_values=px, return_loss=True).loss.backward()
    theirs = dict(off.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        scale = theirs[name].grad.abs().max().clamp_min(1e-6)
        assert (p.grad - theirs[name].grad).abs().max() / scale < 1e-9, name


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _ours(_official(seed=15)).train()
    ids, px = _texts(2, SIZES["vocab_size"], seed=16), _pixels(2, 64, seed=17)

    def grads():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, pixel_values=px, return_loss=True).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    want = grads()
    model.activation_checkpointing_enable()
    assert model.text_model.blocks[0].gradient_checkpointing and model.image_model.layers[0].gradient_checkpointing
    got = grads()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-12, msg=name)


def test_float32_is_close_to_the_float64_official_model():
    off = _official(seed=6)
    ours = _ours(off, dtype=torch.float32)
    ids, px = _texts(3, SIZES["vocab_size"], seed=7), _pixels(3, 64, seed=8)
    img, txt, _ = off(px, ids)
    got_img = ours.get_image_features(px.float()).pooler_output.double()
    got_txt = ours.get_text_features(ids).pooler_output.double()
    assert (got_img - img).abs().max() / img.abs().max() < 1e-4
    assert (got_txt - txt).abs().max() / txt.abs().max() < 1e-4


def test_fused_cpu_text_blocks_match_the_eager_form(monkeypatch):
    """Float32 CPU inference runs each text block as one C call (VRWKV6's block with a one-row
    grid); every block's output matches the eager form, padding masks included."""
    from rwkv_hf.vision import cpu_fused

    model = _ours(_official(seed=19), dtype=torch.float32)
    ids = _texts(3, SIZES["vocab_size"], seed=20)
    calls = []
    run = cpu_fused.run_text_block
    monkeypatch.setattr(cpu_fused, "run_text_block", lambda *a: calls.append(1) or run(*a))
    with torch.no_grad():
        fused = model.text_model(ids[:, :30], attention_mask=(ids[:, :30] != 0).long(), output_hidden_states=True)
        assert len(calls) == SIZES["n_layer"] and fused.last_hidden_state.shape[1] == CTX
        monkeypatch.setenv("RWKV_HF_VISION_FUSED", "0")
        eager = model.text_model(ids[:, :30], attention_mask=(ids[:, :30] != 0).long(), output_hidden_states=True)
    for got, want in zip(fused.hidden_states + (fused.last_hidden_state,),
                         eager.hidden_states + (eager.last_hidden_state,)):
        assert (got - want).abs().max() / want.abs().max() < 1e-5
    x = torch.randn(2, 9, SIZES["n_embd"])
    monkeypatch.delenv("RWKV_HF_VISION_FUSED")
    with torch.no_grad():
        assert run(model.text_model.blocks[1], x) is not None
        model.train()  # training mode (or gradients) takes the eager path
        assert run(model.text_model.blocks[1], x) is None


def test_text_tower_pads_as_the_official_tokenizer():
    """Any padding (longest with any pad id and the mask, or none) gives the embeddings of the
    official 77-token zero-padded rows; bad inputs are refused clearly."""
    off = _official(seed=9)
    text = _ours(off).text_model
    ids = _texts(3, SIZES["vocab_size"], seed=10, lengths=(6, 2, 9))
    want = text(ids).pooler_output
    torch.testing.assert_close(want, off.encode_text(ids), rtol=0, atol=1e-11)
    short = ids[:, :12].clone()  # the longest row: 1 + 9 + 1 tokens
    mask = (short != 0).long()
    mask[:, 0] = 1
    assert torch.equal(text(short).pooler_output, want)  # zero-padded, no mask
    junk = short.masked_fill(mask == 0, SIZES["vocab_size"] - 1)  # padded with eot, as CLIPTokenizer
    assert torch.equal(text(junk, attention_mask=mask).pooler_output, want)
    assert not torch.allclose(text(junk).pooler_output, want)  # the mask is what makes it right
    assert text(ids).last_hidden_state.shape == (3, CTX, SIZES["n_embd"])
    with pytest.raises(ValueError, match="at most context_length=77"):
        text(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        text(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        text(short, attention_mask=mask[:, :5])


def test_configs_refuse_bad_sizes():
    with pytest.raises(ValueError, match="equally wide"):
        RwkvClipConfig(vision_config=dict(hidden_size=64, head_size=32),
                       text_config=dict(hidden_size=96, head_size=32))
    with pytest.raises(ValueError, match="head_size must be even"):
        RwkvClipTextConfig(hidden_size=64, head_size=24)
    with pytest.raises(ValueError, match="pad_token_id"):
        RwkvClipTextConfig(vocab_size=10, pad_token_id=10)
    with pytest.raises(ValueError, match="pairs image i with text i"):
        model = RwkvClipModel(_config()).eval()
        model(input_ids=torch.ones(3, 5, dtype=torch.long), pixel_values=torch.randn(2, 3, 64, 64), return_loss=True)


# --------------------------------------------------------------------------- processor


def test_vocabulary_file_is_open_clips_and_builds_its_vocabulary():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert digest(processing._VOCAB_FILE) == digest(default_bpe())
    vocab, _ = processing.clip_vocab()
    theirs = dict(SimpleTokenizer().encoder)
    theirs["<|startoftext|>"] = theirs.pop("<start_of_text>")
    theirs["<|endoftext|>"] = theirs.pop("<end_of_text>")
    assert vocab == theirs and len(vocab) == processing.VOCAB_SIZE == 49408
    assert open_clip is not None


CAPTIONS = ["a photo of a cat.", "A Photo of TWO dogs, playing fetch!", "the number 1234 on a door",
            "don't stop: it's 3.14 o'clock...", "   spaces\tand\nnewlines  ", "",
            "über café in São Paulo", "word " * 120]


def test_tokenizer_matches_open_clip_on_plain_text():
    """Lower-casing, punctuation, digits one by one, whitespace, accents, truncation to 77 with
    eot last: the same ids as open_clip's tokenize once padded as the text tower pads."""
    open_clip = pytest.importorskip("open_clip")
    theirs = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS)
    tok = processing.rwkv_clip_tokenizer()
    enc = tok(CAPTIONS, padding=True, truncation=True, return_tensors="pt")
    text = RwkvClipTextModel(RwkvClipTextConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                                                head_size=16))
    assert torch.equal(text.full_context(enc.input_ids, enc.attention_mask), theirs)
    assert tok.model_max_length == CTX


def test_image_processor_matches_the_open_clip_eval_transform():
    open_clip = pytest.importorskip("open_clip")
    from sklearn.datasets import load_sample_image
    from PIL import Image

    image = Image.fromarray(load_sample_image("flower.jpg"))
    theirs = open_clip.image_transform(224, is_train=False)(image)
    ours = processing.default_image_processor()(image, return_tensors="pt").pixel_values[0]
    assert ours.shape == theirs.shape == (3, 224, 224)
    # 640x427 -> 335x224 both ways; the crops start at column 55 (transformers: floor of 111/2)
    # and 56 (torchvision: round half to even): one column apart, otherwise the same pixels
    assert (ours[:, :, 1:] - theirs[:, :, :-1]).abs().mean() < 1e-3
    assert (ours - theirs).abs().mean() > 0.05  # (the shift is real: unaligned they differ)


# --------------------------------------------------------------------------- loading, conversion


def test_save_load_auto_classes_and_the_zero_shot_pipeline(tmp_path):
    from PIL import Image
    from transformers import (AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor,
                              pipeline)

    s = dict(SIZES, vocab_size=49408)
    model = RwkvClipModel(_config(s)).eval()
    model.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).__class__ is RwkvClipModel
    loaded = AutoModelForZeroShotImageClassification.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    processor = AutoProcessor.from_pretrained(tmp_path)
    image = Image.new("RGB", (90, 70), (200, 30, 60))
    labels = ["a red square", "a photo of a dog", "text"]
    inputs = processor(text=labels, images=image, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = loaded(**inputs).logits_per_image.softmax(-1)[0]
    got = pipeline("zero-shot-image-classification", model=str(tmp_path))(image, candidate_labels=labels,
                                                                          hypothesis_template="{}")
    for row in got:
        assert abs(row["score"] - float(want[labels.index(row["label"])])) < 1e-5
    card = (tmp_path / "README.md").read_text()
    assert "zero-shot-image-classification" in card and "RWKV-CLIP" in card


def test_text_tower_loads_from_a_whole_rwkv_clip_folder(tmp_path):
    model = RwkvClipModel(_config()).eval()
    model.save_pretrained(tmp_path)
    text = RwkvClipTextModel.from_pretrained(tmp_path).eval()
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "head_size", "group_norm_eps")
    assert all(getattr(text.config, k) == getattr(model.config.text_config, k) for k in sizes)
    ids = _texts(2, SIZES["vocab_size"], seed=18)
    assert torch.equal(text(ids).pooler_output, model.text_model(ids).pooler_output)


def test_text_tower_saves_with_its_tokenizer(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    text = RwkvClipTextModel(RwkvClipTextConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                                                head_size=16)).eval()
    text.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is RwkvClipTextModel
    enc = AutoTokenizer.from_pretrained(tmp_path)(["a cat"], return_tensors="pt")
    torch.testing.assert_close(loaded(**enc).pooler_output, text(**enc).pooler_output, rtol=0, atol=0)
    card = (tmp_path / "README.md").read_text()
    assert "pipeline_tag: feature-extraction" in card and "The text tower of an RWKV-CLIP model" in card


def test_convert_official_checkpoint(tmp_path):
    """A DDP state dict as the released model_31.pt (``module.`` prefixes, bf16 text decays)
    converts to a folder whose model matches the official model."""
    from rwkv_hf.conversion.convert import convert

    s = dict(SIZES, head_size=16)  # text heads of 16, image heads of 32: both read from the shapes
    off = official.randomize(official.OfficialRwkvClip(**s), 11).float().eval()
    sd = {}
    for k, v in off.state_dict().items():
        if k.startswith("text_model.") and k.endswith(("att.time_decay", "att.time_faaaa")):
            v = v.bfloat16()
        sd["module." + k] = v
    torch.save(sd, tmp_path / "model_31.pt")
    report = convert(str(tmp_path / "model_31.pt"), str(tmp_path / "out"), verbose=False)
    assert report["family"] == "clip" and report["layout_name"] == "official RWKV-CLIP (state dict)"
    assert any("widened to float32" in n for n in report["notes"])
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    cfg = model.config
    assert (cfg.vision_config.head_size, cfg.text_config.head_size, cfg.vision_config.image_size) == (32, 16, 64)
    assert cfg.vision_config.intermediate_size == 320 and cfg.text_config.intermediate_size == 224
    ref = official.OfficialRwkvClip(**s).double().eval()
    ref.load_state_dict({k[len("module."):]: v.double() for k, v in sd.items()})
    ids, px = _texts(2, s["vocab_size"], seed=12), _pixels(2, 64, seed=13)
    img, txt, _ = ref(px, ids)
    with torch.no_grad():
        got_img = model.get_image_features(px.float()).pooler_output.double()
        got_txt = model.get_text_features(ids).pooler_output.double()
    assert (got_img - img).abs().max() / img.abs().max() < 1e-4
    assert (got_txt - txt).abs().max() / txt.abs().max() < 1e-4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # re-saving an rwkv_hf folder keeps its config
    again = convert(str(tmp_path / "out"), str(tmp_path / "again"), verbose=False)
    assert again["layout_name"].startswith("rwkv_hf")
    without_path = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert without_path(AutoModel.from_pretrained(tmp_path / "again").config) == without_path(cfg)
    # and back to the official state dict: the same keys and values (the bf16 decays now float32)
    back = convert(str(tmp_path / "out"), str(tmp_path / "back.pth"), verbose=False)
    assert back["direction"] == "to the official RWKV-CLIP .pth"
    official_sd = torch.load(tmp_path / "back.pth", weights_only=True)
    assert official_sd.keys() == {k[len("module."):] for k in sd}
    for key, value in sd.items():
        assert torch.equal(official_sd[key[len("module."):]], value.float()), key
    ref.load_state_dict(official_sd)  # loads into the official model as it is


def test_convert_refuses_unknown_and_missing_tensors(tmp_path):
    from rwkv_hf.conversion.convert import convert
    from rwkv_hf.conversion.loading import ConversionError

    sd = _official(seed=14).float().state_dict()
    torch.save(dict(sd, **{"text_model.blocks.0.pos_emb_x": torch.zeros(1, 4, 64)}), tmp_path / "extra.pt")
    with pytest.raises(ConversionError, match="pos_emb_x"):
        convert(str(tmp_path / "extra.pt"), str(tmp_path / "a"), verbose=False)
    torch.save({k: v for k, v in sd.items() if k != "logit_scale"}, tmp_path / "missing.pt")
    with pytest.raises(ConversionError, match="logit_scale"):
        convert(str(tmp_path / "missing.pt"), str(tmp_path / "b"), verbose=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
