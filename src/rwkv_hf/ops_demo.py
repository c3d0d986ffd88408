"""``rwkv-hf demo --ops``: a short tour of the operator layer, each WKV recurrence on every CPU backend.

For every op, random inputs shaped like one layer of a small RWKV model run
through the ``reference`` token loop, the ``torch`` chunked backend and (where a C++
compiler is available) the compiled ``cpu`` kernels (an op without one would show "-"
there); the demo prints how closely they agree with the
reference and how fast each is.
"""
import time

import torch

from . import ops
from .ops import cpu_backend
from .ops.random_inputs import OPS, make_inputs


def _seconds(fn, repeats=3):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(seq_len=1024, heads=12, head_size=64):
    if seq_len < 1:
        raise SystemExit("--seq-len must be at least 1")
    fast = [b for b in ("torch", "cpu") if b in ops.available_backends()]
    print(f"rwkv_hf operator layer: B=1, T={seq_len}, H={heads}, N={head_size} "
          f"(C={heads * head_size}), float32, {torch.get_num_threads()} threads\n")
    print(f"{'op':<9} {'reference tok/s':>16}" + "".join(
        f" {b + ' tok/s':>12} {'speed-up':>9} {'max rel. diff':>14}" for b in fast))
    with torch.no_grad():
        for op in OPS:
            x = make_inputs(op, 1, seq_len, heads, head_size, state=True, seed=0)
            fn = getattr(ops, op)
            y_ref = fn(**x, backend="reference")[0]
            t_ref = _seconds(lambda: fn(**x, backend="reference"), repeats=1)
            line = f"{op:<9} {seq_len / t_ref:>16,.0f}"
            for b in fast:
                if b == "cpu" and op not in cpu_backend.OPS:
                    line += f" {'-':>12} {'-':>9} {'-':>14}"
                    continue
                y = fn(**x, backend=b)[0]
                diff = ((y - y_ref).abs().max() / y_ref.abs().max()).item()
                t = _seconds(lambda: fn(**x, backend=b))
                line += f" {seq_len / t:>12,.0f} {t_ref / t:>8.1f}x {diff:>14.2e}"
            print(line)
    return 0
