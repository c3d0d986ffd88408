"""Tokenizers of the RWKV language models (rwkv_hf.tokenization_rwkv_world).

Reference: ``TRIE_TOKENIZER`` of BlinkDL's ``rwkv`` package, loaded from its file (the
package's ``rwkv.model`` is never imported). Runs offline."""
import hashlib
import importlib.util
import json
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, GPTNeoXTokenizer

from rwkv_hf import tokenization_rwkv_world as tw
from rwkv_hf.lm.configuration_rwkv_lm import RWKV_LM_CONFIGS, RwkvV4Config, RwkvV7Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RWKV_SPEC = importlib.util.find_spec("rwkv")
RWKV_DIR = RWKV_SPEC.submodule_search_locations[0] if RWKV_SPEC else None
needs_rwkv = pytest.mark.skipif(RWKV_DIR is None, reason="the reference `rwkv` package is not installed")
EOT = tw.END_OF_TEXT


@pytest.fixture(scope="module")
def ref():
    if RWKV_DIR is None:
        pytest.skip("the reference `rwkv` package is not installed")
    spec = importlib.util.spec_from_file_location("_rwkv_ref_tok", os.path.join(RWKV_DIR, "rwkv_tokenizer.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TRIE_TOKENIZER(os.path.join(RWKV_DIR, "rwkv_vocab_v20230424.txt"))


@pytest.fixture(scope="module")
def tok():
    return tw.RwkvWorldTokenizer()


def _corpus():
    rng = random.Random(1234)
    random_unicode = "".join(chr(c) for c in (rng.randint(0, 0x10FFFF) for _ in range(3000)) if not 0xD800 <= c < 0xE000)
    return [
        "",
        "a",
        "Hello world! The quick brown fox jumps over the lazy dog.",
        "Ünïcödé façade naïve résumé — «quotes» Straße Größe",
        "人工智能的发展非常迅速。中国的历史很悠久，今天天气很好！",
        "これは日本語のテストです。東京大学で研究しています。",
        "Это тест на русском языке. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया",
        "😀🎉👍🏽🇫🇷👨‍👩‍👧✨ emoji 🚀🤖",
        "def f(x):\n\treturn x ** 2  # comment\n\n\nclass A:\n    pass\n",
        " " * 300 + "\t" * 40 + "\n" * 50 + "\r\n" * 10,
        "\x00\x01\x02\x1b[0m\x7f\x08 control",
        "<|endoftext|> <s> </s> [CLS] <|rwkv_tokenizer_end_of_text|",
        "#" * 200 + "-" * 170 + "=" * 90,
        random_unicode,
        ("Mixed 混合 текст 😀 \t\n" * 40),
    ]


CORPUS = _corpus()


# --------------------------------------------------------------------- vocabulary files
@needs_rwkv
def test_vendored_world_vocab_is_the_rwkv_package_file():
    def digest(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    vendored = os.path.join(tw.tokenizer_files_dir(), tw.WORLD_VOCAB_FILE)
    assert digest(vendored) == digest(os.path.join(RWKV_DIR, "rwkv_vocab_v20230424.txt"))


def test_vocab_parse():
    vocab = tw.read_world_vocab(os.path.join(tw.tokenizer_files_dir(), tw.WORLD_VOCAB_FILE))
    assert len(vocab) == 65529 and min(vocab) == 1 and max(vocab) == 65529
    assert all(vocab[b + 1] == bytes([b]) for b in range(256))
    assert vocab[65529] == b" " * 128


def test_vocab_parse_rejects_bad_length(tmp_path):
    bad = tmp_path / "v.txt"
    bad.write_text("1 'ab' 3\n", encoding="utf-8")
    with pytest.raises(ValueError):
        tw.read_world_vocab(str(bad))


def test_neox_file_is_the_20b_tokenizer():
    path = os.path.join(tw.tokenizer_files_dir(), tw.NEOX_TOKENIZER_FILE)
    assert hashlib.md5(open(path, "rb").read()).hexdigest() == "55634e54c40440d3639fc80ef8e7bdd9"
    assert os.path.exists(os.path.join(tw.tokenizer_files_dir(), "NOTICE"))


# --------------------------------------------------------------------- World: encoding
@needs_rwkv
@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_encode_matches_reference(tok, ref, index):
    text = CORPUS[index]
    expected = ref.encode(text)
    assert tok.encode(text) == expected
    assert tok(text)["input_ids"] == expected
    assert tok.encode_ordinary(text) == expected
    assert tok.convert_tokens_to_ids(tok.tokenize(text)) == expected
    assert tok._engine.encode_greedy(text.encode("utf-8")) == expected


@needs_rwkv
def test_encode_long_mixed_text_matches_reference(tok, ref):
    text = "\n".join(CORPUS) * 6  # long enough for the piece splitter and its cache
    assert len(text.encode("utf-8")) > 50_000
    expected = ref.encode(text)
    tok._engine._cache.clear()
    assert tok.encode(text) == expected  # cold cache
    assert tok.encode(text) == expected  # warm cache


@needs_rwkv
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=0, max_size=400))
def test_encode_matches_reference_random_text(tok, ref, text):
    assert tok.encode(text, split_special_tokens=True) == ref.encode(text)


@needs_rwkv
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["the", " the", "  ", "\n", "\n\n", "\t", "中", "国", "人", "😀", "é", "ab", "x",
                                 "http://", "://", "...", "----", "\r\n", " 中国", "\x00"]), max_size=80),
       st.integers(0, 3))
def test_encode_matches_reference_token_soup(tok, ref, parts, repeat):
    # Concatenations of frequent fragments: many tokens could straddle the piece cuts.
    text = "".join(parts) * (repeat + 1) * 3  # longer than the plain-matcher threshold
    assert tok.encode(text, split_special_tokens=True) == ref.encode(text)



# --------------------------------------------------------------------- World: the numpy matcher
# `_VectorGreedy` (used from tw._FAST_MIN_BYTES bytes on) must equal the pure-Python greedy
# matcher (`encode_greedy`), the piece path (`encode_pieces`) and the reference, token for token.
needs_numpy = pytest.mark.skipif(tw.np is None, reason="numpy is not installed")


def _all_paths(tok, data):
    engine = tok._engine
    engine._cache.clear()
    return engine.vector.encode(data), engine.encode_greedy(data), engine.encode_pieces(data)


@needs_numpy
def test_fast_path_is_used_for_long_text(tok, monkeypatch):
    calls = []
    original = type(tok._engine.vector).encode
    monkeypatch.setattr(type(tok._engine.vector), "encode", lambda self, data: calls.append(len(data)) or original(self, data))
    tok.encode("x" * tw._FAST_MIN_BYTES)
    tok.encode("x" * (tw._FAST_MIN_BYTES - 1))
    assert calls == [tw._FAST_MIN_BYTES]


@needs_numpy
def test_fast_path_every_vocabulary_token(tok):
    engine = tok._engine
    vector = engine.vector
    for token, idx in engine.token_to_id.items():  # bytes API: invalid UTF-8 tokens included
        assert vector.encode(token) == [idx], token
    valid = [(token.decode("utf-8"), idx) for token, idx in engine.token_to_id.items() if _is_utf8(token)]
    assert len(valid) > 60000
    for text, idx in valid:
        if text != EOT:
            assert tok.encode(text, split_special_tokens=True) == [idx], text
    # All tokens back to back (ids order and a shuffled order): one long text
    soup = b"".join(engine.token_to_id)
    assert len(soup) > 2 * tw._FAST_MIN_BYTES
    fast, plain, pieces = _all_paths(tok, soup)
    assert fast == plain == pieces
    tokens = list(engine.token_to_id)
    random.Random(7).shuffle(tokens)
    soup = b"".join(tokens)
    fast, plain, pieces = _all_paths(tok, soup)
    assert fast == plain == pieces


def _is_utf8(data):
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@needs_numpy
@needs_rwkv
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=0, max_size=3000))
def test_fast_path_random_text(tok, ref, text):
    data = text.encode("utf-8")
    fast, plain, pieces = _all_paths(tok, data)
    assert fast == plain == pieces == ref.encode(text)


@needs_numpy
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([b"the", b" the", b"  ", b"\n", b"\n\n", b"\t", b"\xe4\xb8\xad", b"\xe4", b"\xb8",
                                 b"\xf0\x9f\x98\x80", b"\xc3\xa9", b"ab", b"x", b"http://", b"...", b"-" * 7,
                                 b"\r\n", b" " * 40, b"\x00", b"\xff", b"\x80"]), max_size=300))
def test_fast_path_byte_soup(tok, parts):
    # Arbitrary bytes (invalid UTF-8 too): only the bytes API of the matchers can take them.
    data = b"".join(parts)
    fast, plain, pieces = _all_paths(tok, data)
    assert fast == plain == pieces


@needs_numpy
@needs_rwkv
@pytest.mark.parametrize("text", [
    "a" * 20000,                      # one run with no cut: finished by the Python matcher
    " " * 5000 + "x" + " " * 4097,     # the longest token (128 spaces) many times
    "ab" * 9000 + " " + "中" * 3000,
    "😀" * 4000,
    ("aaaa" * 300 + " ") * 40,        # 40 long chains at once: more steps than _FAST_MAX_ROUNDS
    "=" * 130 + "-" * 129 + "#" * 128,
])
def test_fast_path_long_runs(tok, ref, text):
    data = text.encode("utf-8")
    fast, plain, pieces = _all_paths(tok, data)
    assert fast == plain == pieces == ref.encode(text)
    assert tok.encode(text, split_special_tokens=True) == fast


@needs_numpy
@needs_rwkv
def test_fast_path_chunks_and_thresholds(tok, ref, monkeypatch):
    # Tiny chunks, early hand-over to Python, few rounds: every branch of the numpy matcher.
    text = "\n".join(CORPUS) * 3 + "a" * 3000 + " " * 700
    data = text.encode("utf-8")
    expected = ref.encode(text)
    settings_list = [dict(_FAST_CHUNK=97), dict(_FAST_SEQUENTIAL_BELOW=10 ** 9), dict(_FAST_MAX_ROUNDS=1),
                     dict(_FAST_SEQUENTIAL_BELOW=1, _FAST_MAX_ROUNDS=10 ** 9), dict(_FAST_CHUNK=1)]
    for values in settings_list:
        with monkeypatch.context() as m:
            for name, value in values.items():
                m.setattr(tw, name, value)
            assert tok._engine.vector.encode(data) == expected, values
    assert tok._engine.vector.encode(b"") == []
    assert tok._engine.vector.encode(b"\xff") == [256]


@needs_numpy
@needs_rwkv
def test_fast_path_benchmark_corpus(tok, ref):
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    try:
        from bench_tokenizer import build_corpus
    finally:
        sys.path.pop(0)
    text = build_corpus(100, seed=3)
    data = text.encode("utf-8")
    fast, plain, pieces = _all_paths(tok, data)
    assert fast == plain == pieces == ref.encode(text)


def test_special_token_in_text(tok):
    ids = tok.encode("a" + EOT + "b")
    assert ids == [tok.encode("a")[0], 0, tok.encode("b")[0]]
    assert 0 not in tok.encode("a" + EOT + "b", split_special_tokens=True)


# --------------------------------------------------------------------- World: decoding
@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_decode_round_trip(tok, index):
    text = CORPUS[index]
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_decode_round_trip_random(tok, text):
    assert tok.decode(tok.encode(text, split_special_tokens=True)) == text


@needs_rwkv
def test_decode_invalid_utf8_replaces(tok, ref):
    emoji = ref.encode("😀")
    assert len(emoji) > 1  # the emoji is split into several byte tokens
    half = emoji[:-1]
    expected = ref.decodeBytes(half).decode("utf-8", errors="replace")
    assert tok.decode(half) == expected and "\ufffd" in expected
    lone = tok.convert_tokens_to_ids(tok.convert_ids_to_tokens([0x80 + 1]))  # byte 0x80: a lone continuation byte
    assert tok.decode(lone) == "\ufffd"
    assert tok.decode([0x80 + 1] + tok.encode("ok")) == "\ufffdok"
    # every single id decodes without raising
    for i in range(1, 65530, 97):
        assert isinstance(tok.decode([i]), str)


def test_decode_special_tokens(tok):
    ids = [0] + tok.encode("hi") + [0]
    assert tok.decode(ids) == EOT + "hi" + EOT
    assert tok.decode(ids, skip_special_tokens=True) == "hi"
    assert tok.decode(torch.tensor(ids), skip_special_tokens=True) == "hi"
    assert tok.batch_decode([ids, tok.encode("yo")], skip_special_tokens=True) == ["hi", "yo"]


def test_convert_ids_to_tokens(tok):
    ids = tok.encode("Hello world 你好")
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "Hello" and tokens[1] == "Ġworld"  # GPT-2 byte-level spelling
    assert tok.convert_tokens_to_ids(tokens) == ids
    assert tok.convert_tokens_to_string(tokens) == "Hello world 你好"
    assert tok.convert_ids_to_tokens(0) == EOT


# --------------------------------------------------------------------- World: HF behaviour
def test_special_ids_and_defaults(tok):
    assert tok.eos_token_id == 0 and tok.pad_token_id == 0 and tok.eos_token == EOT
    assert tok.vocab_size == 65536
    assert tok.padding_side == "left"
    assert tok("hello")["input_ids"] == tok.encode_ordinary("hello")  # no BOS/EOS added
    assert tok.get_vocab()[EOT] == 0


def test_batch_left_padding(tok):
    batch = tok(["hi", "hello there my friend", ""], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n = len(tok.encode("hello there my friend"))
    assert ids.shape == (3, n) and ids.dtype == torch.long
    short = tok.encode("hi")
    assert ids[0].tolist() == [0] * (n - len(short)) + short
    assert mask[0].tolist() == [0] * (n - len(short)) + [1] * len(short)
    assert mask[1].tolist() == [1] * n and mask[2].tolist() == [0] * n
    right = tok(["hi", "hello there my friend"], padding=True, padding_side="right")
    assert right["input_ids"][0][: len(short)] == short


def test_save_and_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / tw.WORLD_VOCAB_FILE).exists()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "RwkvWorldTokenizer"
    loaded = tw.RwkvWorldTokenizer.from_pretrained(tmp_path)
    for text in CORPUS:
        assert loaded.encode(text) == tok.encode(text)
    assert loaded.padding_side == "left" and loaded.eos_token_id == 0 and loaded.pad_token_id == 0


# --------------------------------------------------------------------- helper API
def test_tokenizer_for_vocab_size():
    world = tw.tokenizer_for_vocab_size(65536)
    assert isinstance(world, tw.RwkvWorldTokenizer)
    neox = tw.tokenizer_for_vocab_size(50277)
    assert isinstance(neox, GPTNeoXTokenizer) and len(neox) == 50277
    assert neox.encode("Hello world") == [12092, 1533]
    assert neox.eos_token_id == 0 and neox.padding_side == "left"
    for size in (50304, 50432, 65535, 65537, 0, 32000):
        assert tw.tokenizer_for_vocab_size(size) is None


def test_save_tokenizer_for_unknown_size(tmp_path):
    assert tw.save_tokenizer_for_vocab_size(50304, tmp_path / "x") is False
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("config_class, vocab_size, cls_name", [
    (RwkvV7Config, 65536, "RwkvWorldTokenizer"),
    (RwkvV4Config, 50277, "GPTNeoXTokenizer"),
    (RwkvV4Config, 65536, "RwkvWorldTokenizer"),  # RWKV-4 World models
    (RwkvV7Config, 50277, "GPTNeoXTokenizer"),
])
def test_autotokenizer_from_folder(tmp_path, config_class, vocab_size, cls_name):
    tw.register_tokenizers(RWKV_LM_CONFIGS)
    tw.register_tokenizers(RWKV_LM_CONFIGS)  # idempotent
    config_class(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=1, head_size=16).save_pretrained(tmp_path)
    assert tw.save_tokenizer_for_vocab_size(vocab_size, tmp_path) is True
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ == cls_name
    assert loaded.eos_token_id == 0 and loaded.padding_side == "left"
    direct = tw.tokenizer_for_vocab_size(vocab_size)
    for text in CORPUS[:9]:
        assert loaded.encode(text) == direct.encode(text)
        assert loaded.decode(loaded.encode(text)) == text or cls_name == "GPTNeoXTokenizer"


def test_register_resolves_by_name_not_by_config_class(tmp_path):
    """A folder names its tokenizer class; a model folder without tokenizer files gets no
    tokenizer (rather than the World vocabulary whatever the model's vocabulary)."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING, tokenizer_class_from_name

    tw.register_tokenizers(RWKV_LM_CONFIGS)
    assert tokenizer_class_from_name("RwkvWorldTokenizer") is tw.RwkvWorldTokenizer
    for config_class in RWKV_LM_CONFIGS.values():
        assert config_class not in TOKENIZER_MAPPING
    RwkvV7Config(vocab_size=1000, hidden_size=64, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises((ValueError, OSError)):
        AutoTokenizer.from_pretrained(tmp_path)
