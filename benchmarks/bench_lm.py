"""Time the RWKV language models at a 169M-class size (C=768, L=12) on CPU, side by side
with BlinkDL's ``rwkv`` package (strategy 'cpu fp32', RWKV_JIT_ON=1) and transformers'
``RwkvForCausalLM`` (v4), on the same weights.

    python benchmarks/bench_lm.py                 # v4, v5, v6, v7 (about 15 minutes on 2 cores)
    python benchmarks/bench_lm.py --versions 7 --quick

Method (DESIGN.md): torch.set_num_threads(2), fp32, one warm-up, the median of 3 timed
runs, the sides alternated (A B A B) in one process per version (the ``rwkv`` package
needs its own process for v7). The same work on every side:
* prefill: T tokens in, last-token logits out (``logits_to_keep=1``; the package's
  ``forward(tokens, None)``);
* decode: a 16-token prompt plus 32 greedy tokens end to end (ours through
  ``generate``; the package's forward on the prompt then 32 one-token forwards with its
  state; transformers' ``generate``);
* training: forward + backward of one 1x512 sequence with labels.
The machine's matmul rate, measured in the same process, gives the compute floor:
2 x non-embedding parameters FLOPs per token.

Writes the ``lm`` block of benchmarks/RESULTS.md.
"""
import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # bench_common, also when this file is imported from elsewhere
from bench_common import median_alternating  # noqa: E402
C, L = 768, 12
VOCAB = {4: 50277, 5: 65536, 6: 65536, 7: 65536}
PROMPT, NEW = 16, 32


def _matmul_gflops(torch):
    """The machine's fp32 matmul rate at the model's shapes: the best of 7 runs (a floor is a
    best case; a median would move with machine noise)."""
    a, b = torch.randn(512, C), torch.randn(C, 4 * C)
    a @ b
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(20):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return 20 * 2 * 512 * C * 4 * C / best / 1e9


def worker(version, quick, out_path):
    os.environ["RWKV_JIT_ON"] = "1"
    os.environ["RWKV_CUDA_ON"] = "0"
    if version == 7:
        os.environ["RWKV_V7_ON"] = "1"
    import torch

    torch.set_num_threads(2)
    from rwkv.model import RWKV

    import rwkv_hf  # noqa: F401
    from rwkv_hf.conversion.blinkdl import to_blinkdl
    from rwkv_hf.conversion.layouts import blinkdl_name_of_hf_key
    from rwkv_hf.lm import RWKV_LM_CLASSES

    config_cls, _, causal_cls, _ = RWKV_LM_CLASSES[version]
    torch.manual_seed(0)
    ours = causal_cls(config_cls(vocab_size=VOCAB[version], hidden_size=C, num_hidden_layers=L)).eval()
    with torch.no_grad():  # the init zeroes some projections; give every weight a value
        for p in ours.parameters():
            if p.dim() == 2 and not p.any():
                p.normal_(0, 0.02)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "model.pth")
    torch.save(to_blinkdl(ours), path)
    pkg = RWKV(model=path[:-4] if version == 7 else path, strategy="cpu fp32")
    os.remove(path)

    hf = None
    if version == 4:
        from transformers import RwkvConfig, RwkvForCausalLM

        hf = RwkvForCausalLM(RwkvConfig(vocab_size=VOCAB[4], hidden_size=C, num_hidden_layers=L,
                                        intermediate_size=ours.config.intermediate_size)).eval()
        # The converter owns the transformers names: each of their keys -> BlinkDL's -> our tensor.
        blinkdl = to_blinkdl(ours, copy=False)
        sd = {key: blinkdl[blinkdl_name_of_hf_key(key)].reshape(t.shape) for key, t in hf.state_dict().items()}
        hf.load_state_dict(sd)

    non_embedding = sum(p.numel() for n, p in ours.named_parameters()
                        if not n.startswith(("model.embeddings", "head")))
    gflops = _matmul_gflops(torch)
    floor = gflops * 1e9 / (2 * non_embedding)
    runs = 1 if quick else 3
    gen = torch.Generator().manual_seed(1)
    result = {"version": version, "non_embedding_params": non_embedding, "matmul_gflops": gflops,
              "floor_tok_s": floor, "prefill": {}, "torch": torch.__version__}

    for T in ((128,) if quick else (512, 2048)):
        ids = torch.randint(1, VOCAB[version], (1, T), generator=gen)
        tokens = ids[0].tolist()
        fns = {"rwkv_hf": lambda: ours(ids, logits_to_keep=1, use_cache=False),
               "rwkv pkg": lambda: pkg.forward(tokens, None)}
        if hf is not None:
            fns["transformers"] = lambda: hf(ids, use_cache=False)
        with torch.no_grad():
            t = median_alternating(fns, runs)
        result["prefill"][T] = {name: T / s for name, s in t.items()}

    prompt = torch.randint(1, VOCAB[version], (1, PROMPT), generator=gen)
    ours.generation_config.eos_token_id = None

    def pkg_decode():
        logits, state = pkg.forward(prompt[0].tolist(), None)
        for _ in range(NEW):
            logits, state = pkg.forward([int(logits.argmax())], state)

    fns = {"rwkv_hf": lambda: ours.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                            pad_token_id=0),
           "rwkv pkg": pkg_decode}
    if hf is not None:
        hf.generation_config.eos_token_id = None
        fns["transformers"] = lambda: hf.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW,
                                                  do_sample=False, pad_token_id=0)
    with torch.no_grad():
        t = median_alternating(fns, runs)
    result["decode"] = {name: NEW / s for name, s in t.items()}  # new tokens per second, prompt included

    T = 128 if quick else 512
    ids = torch.randint(1, VOCAB[version], (1, T), generator=gen)
    ours.train()

    def train(model):
        def step():
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids, use_cache=False).loss.backward()
        return step

    fns = {"rwkv_hf": train(ours)}
    if hf is not None:
        hf.train()
        fns["transformers"] = train(hf)
    t = median_alternating(fns, runs)
    result["train"] = {name: T / s for name, s in t.items()}
    with open(out_path, "w") as f:
        json.dump(result, f)


def report(results, quick):
    lines = [f"## Language models on CPU (C={C}, L={L}, fp32, 2 threads)", "",
             f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
             f"torch {results[0]['torch']}; random weights in the real layouts; tokens/s (higher is better); "
             "`python benchmarks/bench_lm.py`" + (" --quick" if quick else "") + ".", "",
             "| version | work | rwkv_hf | rwkv pkg (cpu fp32) | transformers v4 | vs pkg | vs transformers "
             "| % of compute floor |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows = [(f"prefill {T}", v) for T, v in r["prefill"].items()] + [("decode 16+32", r["decode"]),
                                                                         ("train fwd+bwd 1x512", r["train"])]
        for work, v in rows:
            ours, pkg, hf = v.get("rwkv_hf"), v.get("rwkv pkg"), v.get("transformers")
            floor = f"{100 * ours / r['floor_tok_s']:.0f}%" if work.startswith("prefill") else ""
            lines.append(f"| v{r['version']} | {work} | {ours:.1f} | {'' if pkg is None else f'{pkg:.1f}'} | "
                         f"{'' if hf is None else f'{hf:.1f}'} | {'' if pkg is None else f'{ours / pkg:.2f}x'} | "
                         f"{'' if hf is None else f'{ours / hf:.2f}x'} | {floor} |")
    lines += ["", "Compute floor: " + "; ".join(
        f"v{r['version']} {r['floor_tok_s']:.0f} tok/s ({r['non_embedding_params'] / 1e6:.1f}M non-embedding "
        f"params, matmul {r['matmul_gflops']:.0f} GFLOP/s)" for r in results) + "."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", default="4,5,6,7")
    parser.add_argument("--quick", action="store_true", help="short smoke run; prints only")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.quick, args.out)
    results = []
    for version in (int(v) for v in args.versions.split(",")):
        out = tempfile.mktemp(suffix=".json")
        cmd = [sys.executable, __file__, "--worker", str(version), "--out", out] + (["--quick"] if args.quick else [])
        print(f"v{version} ...", flush=True)
        subprocess.run(cmd, check=True)
        with open(out) as f:
            results.append(json.load(f))
    text = report(results, args.quick)
    print(text)
    if not args.quick:
        from bench_common import write_results

        write_results(text, block="lm")


if __name__ == "__main__":
    main()
