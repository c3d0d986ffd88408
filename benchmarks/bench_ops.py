"""Time every WKV op: rwkv_hf's backends side by side with the peers a user would pick.

    python benchmarks/bench_ops.py            # full run (about 10 minutes on 2 cores)
    python benchmarks/bench_ops.py --quick    # smoke run, short sequences, prints only
    python benchmarks/bench_ops.py --memory   # peak memory of forward+backward at T=16384

Method (DESIGN.md): torch.set_num_threads(2), one warm-up, the median of 3 timed runs,
implementations alternated (A B A B) so machine drift hits all of them; float32; the
same work on every side. Peers on CPU: transformers' ``rwkv_linear_attention_cpu``
(RWKV-4) and flash-linear-attention's pure-torch references (``naive_recurrent_rwkv6``,
``naive_chunk_rwkv6``, ``dplr_recurrence``, ``dplr_chunkwise``), fed pre-transposed
head-first tensors so layout changes are not timed. The machine's matmul rate from the
same run is reported as the compute floor.

Writes the ops section of benchmarks/RESULTS.md and benchmarks/ops_scaling.png.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

from bench_common import cpu_name, write_results
from rwkv_hf import ops
from rwkv_hf.ops.random_inputs import OPS, make_inputs
from rwkv_hf.ops import cpu_backend

HERE = os.path.dirname(os.path.abspath(__file__))
B, H, N = 1, 12, 64
T_MAIN = 4096
T_SCALING = (64, 256, 1024, 4096, 16384)
T_REF_MAX = 4096  # the token loops are O(T) per token: longer runs only cost minutes
FAST = ("rwkv_hf torch", "rwkv_hf cpu")  # timed at every length and with backward


# ---------------------------------------------------------------------------- peers

def _head_first(x):
    return x.transpose(1, 2).contiguous()


def _peers(op):
    """Peer implementations of ``op`` as (name, make(inputs) -> fn(inputs) -> output)."""
    peers = []
    if op == "wkv4":
        from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

        def hf_v4(x):
            td = torch.log(-x["w"]).detach()  # w = -exp(time_decay)
            return lambda: rwkv_linear_attention_cpu(td, x["u"], x["k"], x["v"])[0]
        peers.append(("transformers v4 (cpu loop)", hf_v4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from fla.ops.generalized_delta_rule.dplr.naive import dplr_chunkwise, dplr_recurrence
            from fla.ops.rwkv6.chunk_naive import naive_chunk_rwkv6
            from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6
        except ImportError:
            return peers
    if op in ("wkv5", "wkv6"):
        def fla6(chunked):
            def make(x):
                w = x["w"] if x["w"].dim() == 4 else x["w"].expand_as(x["r"])
                r, k, v, w = (_head_first(t) for t in (x["r"], x["k"], x["v"], w))
                if chunked:  # no scale argument (it does not scale q); T must be a multiple of 32
                    return lambda: naive_chunk_rwkv6(r, k, v, w, x["u"])
                return lambda: naive_recurrent_rwkv6(r, k, v, w, x["u"], scale=1.0)[0]
            return make
        peers += [("fla naive_recurrent_rwkv6", fla6(False)), ("fla naive_chunk_rwkv6", fla6(True))]
    if op == "wkv7":
        def fla7(fn):
            def make(x):
                r, k, v, a, b, w = (_head_first(x[n]) for n in ("r", "k", "v", "a", "b", "w"))
                r = r * N ** 0.5  # these references scale q by K**-0.5; RWKV does not
                return lambda: fn(r, k, v, a, b, w)[0]
            return make
        peers += [("fla dplr_recurrence", fla7(dplr_recurrence)), ("fla dplr_chunkwise", fla7(dplr_chunkwise))]
    return peers


def _impls(op, T):
    x = make_inputs(op, B, T, H, N, seed=0)
    impls = [(f"rwkv_hf {b}", (lambda b: lambda x: lambda: getattr(ops, op)(**x, backend=b)[0])(b))
             for b in ("reference", "torch") + (("cpu",) if op in cpu_backend.OPS else ())]
    return x, impls + _peers(op)


# ---------------------------------------------------------------------------- timing

def _run(make, x, backward):
    if not backward:
        with torch.no_grad():
            fn = make(x)
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in x.items()}
    fn = make(leaves)
    t0 = time.perf_counter()
    y = fn()
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t0


def time_alternating(impls, x, backward, repeats=3):
    """Median seconds per implementation, runs interleaved A B A B after one warm-up each.

    An implementation that fails its warm-up (e.g. a peer without a backward) is left out."""
    kept = []
    for name, make in impls:
        try:
            _run(make, x, backward)
            kept.append((name, make))
        except RuntimeError as e:
            print(f"  (left out {name}: {str(e).splitlines()[0][:100]})")
    impls = kept
    times = {name: [] for name, _ in impls}
    for _ in range(repeats):
        for name, make in impls:
            times[name].append(_run(make, x, backward))
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_gflops():
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * 2048 ** 3 / statistics.median(ts) / 1e9


def peak_memory_child(op, T):
    """Forward+backward of the default backend in a fresh process: (RSS before the op, peak RSS
    during it) in MiB. The peak is reset once the inputs exist (Linux: /proc/self/clear_refs)."""
    code = ("import re, torch; torch.set_num_threads(2);"
            "from rwkv_hf import ops; from rwkv_hf.ops.random_inputs import make_inputs;"
            "rss = lambda f: int(re.search(f + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1));"
            f"x = {{n: t.requires_grad_(True) for n, t in make_inputs({op!r}, {B}, {T}, {H}, {N}).items()}};"
            "open('/proc/self/clear_refs', 'w').write('5'); base = rss('VmRSS');"
            f"y = ops.{op}(**x)[0]; y.backward(torch.ones_like(y));"
            "print(base, rss('VmHWM'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    base, peak = (int(v) / 1024 for v in out[-2:])
    return base, peak


# ---------------------------------------------------------------------------- report

def plot(scaling, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = -(-len(OPS) // 2)
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 8.5), sharex=True)
    for ax in axes.flat[len(OPS):]:
        ax.set_visible(False)
    for ax, op in zip(axes.flat, OPS):
        for (name, backward), points in sorted(scaling[op].items()):
            ts = sorted(points)
            ax.plot(ts, [t / points[t] for t in ts], marker="o", linestyle="--" if backward else "-",
                    label=f"{name} {'fwd+bwd' if backward else 'fwd'}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{op} (B={B}, H={H}, N={N}, fp32)")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("tokens / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"rwkv_hf WKV ops on CPU ({torch.get_num_threads()} threads): tokens/s against T")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, no files written")
    parser.add_argument("--memory", action="store_true",
                        help="only measure forward+backward memory at T=16384 (its own RESULTS.md block)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.memory:
        lines = ["Forward+backward of the default CPU backend (cpu) at T=16384 (B=1, H=12, N=64, fp32; "
                 "fresh process per op, peak resident memory reset once the inputs exist):", "",
                 "| op | RSS before the op (MiB) | peak RSS during fwd+bwd (MiB) | growth (MiB) |",
                 "|---|---:|---:|---:|"]
        for op in OPS:
            base, peak = peak_memory_child(op, 16384)
            print(f"{op:8s} fwd+bwd T=16384: RSS {base:.0f} -> peak {peak:.0f} MiB")
            lines.append(f"| {op} | {base:,.0f} | {peak:,.0f} | {peak - base:,.0f} |")
        write_results("\n".join(lines), block="ops-memory")
        return
    t_main = 256 if args.quick else T_MAIN
    t_scaling = (64, 256) if args.quick else T_SCALING

    gflops = matmul_gflops()
    print(f"matmul rate: {gflops:.1f} GFLOP/s (fp32, 2048^2, {torch.get_num_threads()} threads)")
    main_rows, scaling = [], {}
    for op in OPS:
        x, impls = _impls(op, t_main)
        for backward in (False, True):
            res = time_alternating(impls, x, backward)
            ref = res["rwkv_hf reference"]
            for name, sec in res.items():
                main_rows.append((op, "fwd+bwd" if backward else "fwd", name, sec, ref / sec))
                print(f"{op:8s} {'fwd+bwd' if backward else 'fwd':8s} {name:30s} {sec * 1e3:10.1f} ms "
                      f"{t_main / sec:10.0f} tok/s  {ref / sec:6.1f}x vs reference", flush=True)
        scaling[op] = {}
        for T in t_scaling:
            x, impls = _impls(op, T)
            impls = [(n, m) for n, m in impls if T <= T_REF_MAX or n in FAST]
            for backward in (False, True):
                chosen = impls if not backward else [(n, m) for n, m in impls if n in FAST]
                for name, sec in time_alternating(chosen, x, backward, repeats=1 if T >= 4096 else 3).items():
                    scaling[op].setdefault((name, backward), {})[T] = sec
    if args.quick:
        return

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        "## WKV operator layer (CPU)",
        "",
        f"Measured {stamp} on {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float32, B={B}, T={t_main}, H={H}, N={N} (C={H * N}). "
        f"Matmul rate in the same run: **{gflops:.1f} GFLOP/s**. Median of 3 after a warm-up, "
        "implementations alternated. Produced by `python benchmarks/bench_ops.py`.",
        "",
        "| op | pass | implementation | ms | tokens/s | speed-up vs rwkv_hf reference |",
        "|---|---|---|---:|---:|---:|",
    ]
    for op, kind, name, sec, ratio in main_rows:
        lines.append(f"| {op} | {kind} | {name} | {sec * 1e3:.1f} | {t_main / sec:,.0f} | {ratio:.1f}x |")
    lines += ["", "Memory at T=16384: the memory block at the end of this file (`python benchmarks/bench_ops.py --memory`).", "", "Scaling with sequence length: ![tokens/s against T](ops_scaling.png)", "",
              "<details><summary>scaling data (seconds)</summary>", "", "```json",
              json.dumps({op: {f"{n} {'fwd+bwd' if b else 'fwd'}": pts for (n, b), pts in d.items()}
                          for op, d in scaling.items()}, indent=1), "```", "</details>"]
    write_results("\n".join(lines))
    plot(scaling, os.path.join(HERE, "ops_scaling.png"))
    print("wrote benchmarks/RESULTS.md and benchmarks/ops_scaling.png")


if __name__ == "__main__":
    main()
