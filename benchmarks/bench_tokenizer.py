"""Encoding speed of RwkvWorldTokenizer against the ``rwkv`` package's TRIE_TOKENIZER.

    python benchmarks/bench_tokenizer.py [--kb 300] [--runs 5] [--write]

The corpus (a few hundred KB, built offline and deterministically) mixes English prose and
code (Python standard-library sources), generated multilingual sentences (CJK, Japanese,
Cyrillic, Arabic, accented Latin, emoji, drawn with a Zipf-like word law so words repeat as
in real text), whitespace runs, tabs/newlines, control bytes and random code points. Both
tokenizers encode the same text; the outputs are checked to be equal. Runs alternate
reference / ours and the median of ``--runs`` is reported, for:

* ``encode()`` through the transformers API (``tokenizer.encode(text)``): texts from
  ``_FAST_MIN_BYTES`` bytes on go through the numpy matcher, which keeps no per-text state, so
  "warm" (the same text again) and "cold" (piece cache cleared before the run) only differ by
  noise; its tables are built once per tokenizer on first use (time reported separately);
* the pure-Python piece path (``engine.encode_pieces``, the fallback without numpy and for
  texts under ``_FAST_MIN_BYTES``), with the piece cache warm and cleared;
* the reference ``TRIE_TOKENIZER.encode``.

``--write`` puts the table into benchmarks/RESULTS.md between ``<!-- tokenizer:begin -->``
and ``<!-- tokenizer:end -->`` (appended at the end when the markers are absent).
"""
import argparse
import datetime
import importlib.util
import inspect
import os
import platform
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from rwkv_hf.tokenization_rwkv_world import RwkvWorldTokenizer  # noqa: E402

BEGIN, END = "<!-- tokenizer:begin -->", "<!-- tokenizer:end -->"

WORDS = {
    "zh": "的 是 在 我们 人工智能 模型 语言 数据 训练 时间 世界 中国 发展 技术 问题 可以 一个 这个 因为 所以 非常 研究 学习 "
          "计算机 网络 系统 方法 结果 进行 通过 已经 需要 没有 他们 自己 社会 经济 文化 历史 今天 明天".split(),
    "ja": "これは テスト です 日本語 の 文章 を 書きます 東京 大学 研究 言語 モデル ありがとう ございます 今日 は 天気 が いい".split(),
    "ru": "это тест русский язык модель данные время мир работа человек который можно очень после также".split(),
    "ar": "هذا اختبار اللغة العربية نموذج بيانات الوقت العالم عمل الإنسان".split(),
    "fr": "le la les des une est avec pour être déjà façade naïve résumé où très élève français".split(),
    "de": "der die das und ist nicht mit für Straße Größe über schön Mädchen Übung".split(),
    "emoji": "😀 🎉 👍 👍🏽 🇫🇷 ❤️ 🚀 🤖 👨‍👩‍👧 ✨".split(),
}
PUNCT = {"zh": "，。！？", "ja": "、。", "ru": ",.!?", "ar": "،.", "fr": ",.!?", "de": ",.!?", "emoji": " "}


def _zipf_choice(rng, words):
    # P(rank r) ~ 1/r
    weights = [1.0 / (r + 1) for r in range(len(words))]
    return rng.choices(words, weights)[0]


def build_corpus(kb, seed=0):
    rng = random.Random(seed)
    target = kb * 1000
    parts, size = [], 0
    import argparse as m1, collections as m2, difflib as m3, json.decoder as m4, textwrap as m5, typing as m6
    code = "\n".join(inspect.getsource(m) for m in (m1, m2, m3, m4, m5, m6))
    code_pos = 0
    while size < target:
        kind = rng.random()
        if kind < 0.45:  # code + English docstrings
            n = rng.randint(500, 3000)
            chunk = code[code_pos:code_pos + n]
            code_pos = (code_pos + n) % max(1, len(code) - 3000)
        elif kind < 0.85:  # multilingual sentences
            lang = rng.choice(list(WORDS))
            sep = "" if lang in ("zh", "ja") else " "
            sentences = []
            for _ in range(rng.randint(3, 12)):
                words = [_zipf_choice(rng, WORDS[lang]) for _ in range(rng.randint(4, 16))]
                sentences.append(sep.join(words) + rng.choice(PUNCT[lang]))
            chunk = " ".join(sentences) + "\n"
        elif kind < 0.93:  # whitespace, tabs, newlines, control bytes
            chunk = "".join(rng.choice([" ", "  ", "    ", "\t", "\n", "\r\n", "\n\n", "\x00", "\x07", "\x1b[0m", "x"])
                            for _ in range(rng.randint(20, 200)))
        else:  # random code points (no surrogates)
            chars = []
            for _ in range(rng.randint(20, 300)):
                cp = rng.randint(0, 0x2FFFF)
                chars.append(chr(cp) if not 0xD800 <= cp < 0xE000 else "?")
            chunk = "".join(chars)
        parts.append(chunk)
        size += len(chunk.encode("utf-8"))
    return "".join(parts)


def load_reference():
    spec = importlib.util.find_spec("rwkv")
    folder = spec.submodule_search_locations[0]
    mod_spec = importlib.util.spec_from_file_location("_rwkv_reference_tokenizer", os.path.join(folder, "rwkv_tokenizer.py"))
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.TRIE_TOKENIZER(os.path.join(folder, "rwkv_vocab_v20230424.txt"))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=int, default=300, help="corpus size in KB of UTF-8")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()

    text = build_corpus(args.kb)
    n_chars, n_bytes = len(text), len(text.encode("utf-8"))
    ref = load_reference()
    tok = RwkvWorldTokenizer()
    engine = tok._engine
    build_time, _ = timed(lambda: engine.vector)  # one-off, on first use

    expected = ref.encode(text)
    assert tok.encode(text) == expected, "RwkvWorldTokenizer differs from the reference"
    data = text.encode("utf-8")
    assert engine.encode_pieces(data) == expected
    times = {"ref": [], "warm": [], "cold": [], "py_warm": [], "py_cold": []}
    for _ in range(args.runs):  # A B C ... A B C ...
        dt, out = timed(lambda: ref.encode(text))
        times["ref"].append(dt)
        dt, got = timed(lambda: tok.encode(text))
        assert got == expected
        times["warm"].append(dt)
        engine._cache.clear()
        dt, got = timed(lambda: tok.encode(text))
        assert got == expected
        times["cold"].append(dt)
        engine._cache.clear()
        dt, got = timed(lambda: engine.encode_pieces(data))
        times["py_cold"].append(dt)
        dt, got = timed(lambda: engine.encode_pieces(data))
        assert got == expected
        times["py_warm"].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        ("rwkv 0.8.32 TRIE_TOKENIZER.encode (reference)", med["ref"], 1.0),
        ("RwkvWorldTokenizer.encode (numpy matcher), same text again", med["warm"], med["ref"] / med["warm"]),
        ("RwkvWorldTokenizer.encode (numpy matcher), piece cache cleared", med["cold"], med["ref"] / med["cold"]),
        ("pure-Python piece path, piece cache warm", med["py_warm"], med["ref"] / med["py_warm"]),
        ("pure-Python piece path, piece cache cleared", med["py_cold"], med["ref"] / med["py_cold"]),
    ]
    lines = [
        "## RWKV World tokenizer encoding (CPU)",
        "",
        f"Measured {datetime.date.today().isoformat()} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other work (numbers are noisy), Python {platform.python_version()}. "
        f"Corpus: {n_chars:,} characters / {n_bytes:,} UTF-8 bytes / {len(expected):,} tokens of mixed text "
        "(code + English, generated CJK/Japanese/Cyrillic/Arabic/Latin/emoji sentences, whitespace and control "
        "runs, random code points). Median of "
        f"{args.runs} runs, implementations alternated; outputs checked identical. "
        f"The numpy matcher's tables are built once per tokenizer on first use ({build_time * 1e3:.0f} ms here, "
        "not in the timings). "
        "Produced by `python benchmarks/bench_tokenizer.py --write`.",
        "",
        "| implementation | ms | chars/s | speed-up vs reference |",
        "|---|---:|---:|---:|",
    ]
    for name, dt, ratio in rows:
        lines.append(f"| {name} | {dt * 1e3:.1f} | {n_chars / dt:,.0f} | {ratio:.1f}x |")
    table = "\n".join(lines)
    print(table)

    if args.write:
        path = os.path.join(HERE, "RESULTS.md")
        block = f"{BEGIN}\n{table}\n{END}"
        content = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmark results\n"
        if BEGIN in content and END in content:
            head, rest = content.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            content = head + block + tail
        else:
            content = content.rstrip("\n") + "\n\n" + block + "\n"
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
