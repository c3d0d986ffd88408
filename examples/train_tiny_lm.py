#!/usr/bin/env python
"""Train the tiny RWKV-7 shipped as ``rwkv_hf/pretrained/tiny-rwkv7-pydoc``.

Corpus: the CPython reference documentation in ``pydoc_data.topics`` (ships with
Python, PSF License 2.0), split by topic in ``rwkv_hf.pretrained.corpus``. The script

1. trains a byte-level BPE tokenizer (``tokenizers``) on the training topics only,
   with id 0 = ``<|endoftext|>`` (bos / eos / pad);
2. trains an RWKV-7 from BlinkDL-style init with AdamW (warm-up + cosine, weight decay
   on matrices only), fp32 on the CPU, on random windows of the training stream;
3. evaluates the validation split every ``--eval-every`` steps and keeps the best
   weights;
4. writes config.json, generation_config.json (greedy, eos 0), model.safetensors,
   the tokenizer files, eval.json and a README.md model card to ``--out``.

Default settings take 6-25 minutes on two CPU cores, depending on how busy they are::

    python examples/train_tiny_lm.py --out src/rwkv_hf/pretrained/tiny-rwkv7-pydoc
"""
import argparse
import json
import math
import os
import platform
import random
import sys
import time

import torch

import rwkv_hf
from rwkv_hf import RwkvV7Config, RwkvV7ForCausalLM
from rwkv_hf.pretrained import TINY_MODEL_NAME, corpus

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(rwkv_hf.__file__)), "pretrained", TINY_MODEL_NAME)
PROMPTS = ["The \"if\" statement", "A class definition", "Strings are"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (id 0 = <|endoftext|>)")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--head-size", type=int, default=32)
    p.add_argument("--ctx-len", type=int, default=128, help="training / evaluation window in tokens")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="final lr as a fraction of --lr")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="on 2-D weights except the embedding")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, default=0,
                   help="stop early after this much training time (0 = no limit); the run is then "
                        "no longer reproducible step for step")
    return p.parse_args(argv)


def train_tokenizer(vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[corpus.EOT], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus.documents("train"), trainer=trainer)
    assert tok.token_to_id(corpus.EOT) == 0
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=corpus.EOT, eos_token=corpus.EOT,
                                   pad_token=corpus.EOT, clean_up_tokenization_spaces=False)


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    floor = args.lr * args.min_lr_ratio
    return floor + (args.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model, args):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embeddings" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=args.lr, betas=(0.9, 0.99), eps=1e-8)


def generate_samples(model, tokenizer, max_new_tokens=60):
    out = []
    for prompt in PROMPTS:
        ids = torch.tensor([[0] + tokenizer.encode(prompt, add_special_tokens=False)])
        gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=0, pad_token_id=0)
        out.append(prompt + tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def model_card(args, config, n_params, file_bytes, result, baseline, train_seconds, samples, best_step):
    cmd = " ".join(["python examples/train_tiny_lm.py"] + [a for a in sys.argv[1:]])
    sample_text = "\n\n".join(samples)
    return f"""---
license: apache-2.0
library_name: transformers
tags: [rwkv, rwkv7, rwkv_hf, tiny]
---

# tiny-rwkv7-pydoc

A tiny RWKV-7 ("Goose") language model that `rwkv_hf` trains itself, on the CPU, as a
working end-to-end example: its own tokenizer, its own training run, loading through
`AutoModelForCausalLM` / `AutoTokenizer`, evaluation and generation. It writes
Python-documentation-flavoured text; it is a demonstration, not a useful model.

```python
import rwkv_hf  # registers model_type rwkv_hf_v7 with the Auto classes
from rwkv_hf.pretrained import tiny_model_path
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
ids = tokenizer("<|endoftext|>A class definition", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=60)[0], skip_special_tokens=True))
```

## Model

| | |
|---|---|
| architecture | RWKV-7 (`RwkvV7ForCausalLM`, model type `rwkv_hf_v7`) |
| layers / width / head size | {config.num_hidden_layers} / {config.hidden_size} / {config.head_size} ({config.num_heads} heads), FFN {config.intermediate_size} |
| parameters | {n_params:,} ({file_bytes / 1e6:.1f} MB fp32 safetensors) |
| vocabulary | {config.vocab_size} byte-level BPE tokens, id 0 = `<|endoftext|>` (bos / eos / pad) |
| training context | {args.ctx_len} tokens |

## Data and licence

Training data: the CPython reference documentation that ships with Python as
`pydoc_data.topics.topics` ({len(corpus.topics())} help topics, Python {platform.python_version()}),
Copyright Python Software Foundation, under the
[PSF License Agreement for Python 2.0](https://docs.python.org/3/license.html)
(which permits reproduction and derivative works provided the PSF copyright notice
is retained). The split is by topic: topics sorted by name, every
{corpus.VAL_EVERY}th from index {corpus.VAL_OFFSET} held out
(`rwkv_hf.pretrained.corpus.split_topics()`): {", ".join(result["val_topics"])}.
The tokenizer was trained on the training topics only.

The model weights and this card are Apache-2.0 like the rest of `rwkv_hf`.

## Training

```bash
{cmd}
```

{args.steps} AdamW steps (betas 0.9/0.99, weight decay {args.weight_decay} on matrices
only), batch {args.batch_size} x {args.ctx_len} tokens, peak lr {args.lr} with {args.warmup}
warm-up steps and a cosine decay to {args.lr * args.min_lr_ratio:g}, gradient clip {args.grad_clip},
fp32, {args.threads} CPU threads, seed {args.seed}; BlinkDL-style initialisation (zeroed
output projections). Validation every {args.eval_every} steps; the weights of the best
validation loss (step {best_step}) are kept. Wall time: {train_seconds / 60:.1f} minutes
of training on a shared 2-core machine.

## Validation (held-out topics)

Windows of {args.ctx_len} + 1 tokens overlapping by one token, so every token after the
first is predicted once, each window from a fresh state. Bits per byte count the UTF-8
bytes of the held-out text plus one per end-of-text separator.

| | |
|---|---|
| tokens / bytes | {result["tokens"]:,} / {result["bytes"]:,} |
| loss | {result["loss"]:.4f} nats/token |
| perplexity | **{result["perplexity"]:.2f}** per token |
| bits per byte | **{result["bits_per_byte"]:.3f}** |
| unigram baseline (train-fitted, add-one) | perplexity {baseline:.1f} |

`eval.json` has the numbers; `rwkv-hf demo` and `tests/test_tiny_model.py` recompute them.

## Samples (greedy, 60 new tokens)

```
{sample_text}
```
"""


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    t0 = time.perf_counter()
    tokenizer = train_tokenizer(args.vocab_size)
    train_ids = corpus.token_stream(tokenizer, corpus.documents("train"))
    val_topics = corpus.split_topics()[1]
    print(f"tokenizer: {len(tokenizer)} tokens in {time.perf_counter() - t0:.1f}s; train stream "
          f"{train_ids.numel():,} tokens ({sum(len(d.encode()) for d in corpus.documents('train')) / train_ids.numel():.2f} "
          f"bytes/token); held-out topics: {', '.join(val_topics)}", flush=True)

    config = RwkvV7Config(vocab_size=len(tokenizer), hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                          head_size=args.head_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(args.seed)
    model = RwkvV7ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: RWKV-7 L{args.layers} C{args.hidden_size} N{args.head_size}, {n_params:,} parameters", flush=True)

    opt = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)
    max_start = train_ids.numel() - args.ctx_len - 1
    best = (float("inf"), None, 0)
    history = []
    model.train()
    t_train = time.perf_counter()
    run_loss, run_n = 0.0, 0
    steps_done = 0
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        starts = torch.randint(0, max_start + 1, (args.batch_size,), generator=gen)
        batch = torch.stack([train_ids[s:s + args.ctx_len + 1] for s in starts.tolist()])
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        run_loss += loss.item()
        run_n += 1
        steps_done = step + 1
        elapsed = time.perf_counter() - t_train
        if steps_done % args.log_every == 0 or steps_done == args.steps:
            tok_s = steps_done * args.batch_size * args.ctx_len / elapsed
            eta = (args.steps - steps_done) * elapsed / steps_done
            print(f"step {steps_done:5d}/{args.steps}  loss {run_loss / run_n:.3f}  lr {lr_at(step, args):.2e}  "
                  f"{tok_s:,.0f} tok/s  {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min", flush=True)
            run_loss, run_n = 0.0, 0
        if steps_done % args.eval_every == 0 or steps_done == args.steps:
            r = corpus.evaluate(model, tokenizer, "val", ctx_len=args.ctx_len)
            history.append({"step": steps_done, "val_loss": r["loss"], "val_perplexity": r["perplexity"]})
            mark = ""
            if r["loss"] < best[0]:
                best = (r["loss"], {k: v.detach().clone() for k, v in model.state_dict().items()}, steps_done)
                mark = " (best)"
            print(f"  eval @ {steps_done}: val loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f}, "
                  f"{r['bits_per_byte']:.3f} bits/byte{mark}", flush=True)
        if args.max_minutes and elapsed > args.max_minutes * 60:
            print(f"stopping after {steps_done} steps: --max-minutes {args.max_minutes} reached", flush=True)
            break
    train_seconds = time.perf_counter() - t_train
    if best[1] is None or steps_done % args.eval_every:
        r = corpus.evaluate(model, tokenizer, "val", ctx_len=args.ctx_len)
        if r["loss"] < best[0]:
            best = (r["loss"], {k: v.detach().clone() for k, v in model.state_dict().items()}, steps_done)
    model.load_state_dict(best[1])
    model.eval()

    # save, then reload through the Auto classes and measure what ships
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model.generation_config = GenerationConfig(do_sample=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                               max_new_tokens=100)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    model = AutoModelForCausalLM.from_pretrained(args.out).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    result = corpus.evaluate(model, tokenizer, "val", ctx_len=args.ctx_len)
    train_result = corpus.evaluate(model, tokenizer, "train", ctx_len=args.ctx_len)
    baseline = corpus.unigram_baseline(tokenizer, config.vocab_size)
    result["val_topics"] = val_topics
    samples = generate_samples(model, tokenizer)
    file_bytes = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    eval_record = {
        "model": TINY_MODEL_NAME,
        "validation": {k: result[k] for k in ("tokens", "bytes", "loss", "perplexity", "bits_per_byte")},
        "train": {k: train_result[k] for k in ("tokens", "bytes", "loss", "perplexity", "bits_per_byte")},
        "unigram_baseline_perplexity": baseline,
        "eval_ctx_len": args.ctx_len,
        "val_topics": val_topics,
        "corpus": {"source": "pydoc_data.topics", "python": platform.python_version(),
                   "val_sha256": corpus.corpus_fingerprint("val"),
                   "train_sha256": corpus.corpus_fingerprint("train")},
        "training": {"steps": steps_done, "best_step": best[2], "seconds": round(train_seconds, 1),
                     "seed": args.seed, "batch_size": args.batch_size, "ctx_len": args.ctx_len, "lr": args.lr,
                     "torch": torch.__version__, "threads": args.threads, "history": history},
        "parameters": n_params,
        "model_file_bytes": file_bytes,
    }
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(eval_record, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(model_card(args, config, n_params, file_bytes, result, baseline, train_seconds, samples, best[2]))
    print(f"\nvalidation: perplexity {result['perplexity']:.2f} per token, {result['bits_per_byte']:.3f} bits/byte "
          f"(train {train_result['perplexity']:.2f}; unigram baseline {baseline:.1f})")
    print(f"training took {train_seconds / 60:.1f} min; wrote {args.out} ({file_bytes / 1e6:.1f} MB weights)\n")
    for s in samples:
        print(s, "\n---")
    return 0


if __name__ == "__main__":
    sys.exit(main())
