"""PointRWKV on the CPU against the official code (hithqd/PointRWKV, the implementation users
would otherwise run): its WKV alone, and the whole classifier.

* **WKV** (``ops.point_wkv``): the official ``WKVAttention._wkv_forward`` (a token loop in
  PyTorch, run on the sequence and on its reverse and averaged, as its ``forward`` does) against
  rwkv_hf's ``torch`` (chunked) and ``cpu`` (compiled) backends on the same inputs, forward and
  forward+backward, at the released head layout (8 heads of 48) and the first scale's length
  (2048 tokens, batch 1) and a training-like batch (8 x 512). The outputs are checked to agree.
* **Farthest point sampling** (``ops.farthest_point_sample``): the official ``utils.misc.fps``
  (a torch loop from a random start point) against rwkv_hf's torch form (the same loop from
  point 0) and the compiled ``cpu`` kernel, on PointRWKV's first-scale sampling (2048 of 8192
  points) and a batch of 1024-point clouds (512 each).
* **Classifier**: the official ``PointRWKVCls`` (its ModelNet40 config) against
  ``PointRwkvForPointCloudClassification`` (the same released configuration), inference on one
  cloud of 8192 points, random weights (speed does not depend on them); **part segmentation**:
  the official ``PointRWKVPartSeg`` (its ShapeNetPart config) against
  ``PointRwkvForPointCloudSegmentation``, one cloud of 2048 points (ShapeNetPart's size).

Method: ``torch.set_num_threads(2)``, float32, one warm-up per implementation, then the
implementations alternated (A B A B) for ``--repeats`` runs; the median. Writes the ``point``
block of benchmarks/RESULTS.md.

The official code is imported from a checkout given with ``--official`` (it needs its own
requirements: ``pip install einops easydict``); nothing of it is copied here::

    git clone https://github.com/hithqd/PointRWKV && python benchmarks/bench_point.py --official PointRWKV
"""
import argparse
import datetime
import os
import sys

from bench_common import cpu_name, median_alternating, write_results


def wkv_rows(official_module, repeats):
    import torch

    from rwkv_hf import ops

    H, D = 8, 48
    rows = []
    for B, T in ((1, 2048), (8, 512)):
        g = torch.Generator().manual_seed(T)
        r, k, v = (torch.randn(B, T, H, D, generator=g) for _ in range(3))
        log_w = -torch.exp(torch.randn(B, T, H, D, generator=g) * 0.5 - 1)
        wkv = official_module.WKVAttention(H * D, num_heads=H)
        with torch.no_grad():
            wkv.u.copy_(torch.randn(H, D, generator=g) * 0.5)
        u = wkv.u.detach().clone()

        def official(r, k, v, log_w, u):  # its bonus is its own parameter (equal to u)
            hf = [x.transpose(1, 2) for x in (r, k, v, log_w.exp())]  # its [B, H, T, D] layout
            fwd = wkv._wkv_forward(*hf)
            bwd = wkv._wkv_forward(*(x.flip(2) for x in hf)).flip(2)
            return ((fwd + bwd) / 2).transpose(1, 2)

        def ours(backend):
            # The release averages two one-way scans that each count the token: r / 2 and 2 u.
            return lambda r, k, v, log_w, u: ops.point_wkv(torch.sigmoid(r) / 2, k, v, log_w, 2 * u,
                                                           backend=backend)[0]

        impls = {"official (token loop)": official, "rwkv_hf torch": ours("torch"), "rwkv_hf cpu": ours("cpu")}
        with torch.no_grad():
            want = official(r, k, v, log_w, u).double()
            err = max(((impl(r, k, v, log_w, u).double() - want).abs().max() / want.abs().max()).item()
                      for impl in impls.values())
        inputs = (r, k, v, log_w, u)

        def forward(impl):
            def run():
                with torch.no_grad():
                    impl(*inputs)
            return run

        def backward(impl):
            def run():
                leaves = [x.detach().requires_grad_() for x in inputs]
                impl(*leaves).sum().backward()
            return run

        fwd = median_alternating({n: forward(f) for n, f in impls.items()}, repeats)
        both = median_alternating({n: backward(f) for n, f in impls.items()}, repeats)
        base = "official (token loop)"
        for name in impls:
            rows.append(f"| {B} x {T} | {name} | {fwd[name] * 1e3:.1f} | {both[name] * 1e3:.1f} | "
                        f"{fwd[base] / fwd[name]:.1f}x | {both[base] / both[name]:.1f}x |")
        rows.append(f"| {B} x {T} | max relative difference of the outputs | {err:.1e} | | | |")
    return rows


def fps_rows(repeats):
    import torch
    from utils.misc import fps as official_fps

    from rwkv_hf import ops

    rows = []
    for B, N, n in ((1, 8192, 2048), (8, 1024, 512)):
        points = torch.rand(B, N, 3, generator=torch.Generator().manual_seed(N)) * 2 - 1
        impls = {"official fps (torch loop)": lambda: official_fps(points, n),
                 "rwkv_hf torch": lambda: ops.farthest_point_sample(points, n, backend="torch"),
                 "rwkv_hf cpu": lambda: ops.farthest_point_sample(points, n, backend="cpu")}
        with torch.inference_mode():
            t = median_alternating(impls, repeats)
        base = "official fps (torch loop)"
        rows += [f"| {B} x {N} -> {n} | {name} | {t[name] * 1e3:.1f} | {t[base] / t[name]:.1f}x |" for name in t]
    return rows


def model_rows(repo, repeats):
    import torch

    import torch.nn.functional as F
    from models.point_rwkv_cls import PointRWKVCls
    from models.point_rwkv_seg import PointRWKVPartSeg
    from utils.config import cfg_from_yaml_file

    from rwkv_hf.point import PointRwkvConfig, PointRwkvForPointCloudClassification, PointRwkvForPointCloudSegmentation

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = lambda name: cfg_from_yaml_file(os.path.join(repo, "cfgs", name))  # noqa: E731
    category = torch.tensor([3])
    cases = [("classifier, one cloud of 8192 points", "PointRWKVCls",
              PointRWKVCls(cfg("cls_modelnet40.yaml")).eval(),
              PointRwkvForPointCloudClassification(PointRwkvConfig(num_labels=40)).eval(),
              torch.rand(1, 8192, 3, generator=g) * 2 - 1, {}),
             ("part segmentation, one cloud of 2048 points", "PointRWKVPartSeg",
              PointRWKVPartSeg(cfg("seg_shapenetpart.yaml")).eval(),
              PointRwkvForPointCloudSegmentation(PointRwkvConfig(num_labels=50)).eval(),
              torch.rand(1, 2048, 3, generator=g) * 2 - 1, {"categories": category})]
    rows = []
    for what, name, theirs, ours, points, kw in cases:
        official = f"official {name}"
        args = (points, F.one_hot(category, 16)) if kw else (points,)
        with torch.inference_mode():
            t = median_alternating({official: lambda: theirs(*args), "rwkv_hf": lambda: ours(points=points, **kw)},
                                   repeats)
        n = {official: sum(p.numel() for p in theirs.parameters()), "rwkv_hf": sum(p.numel() for p in ours.parameters())}
        rows += [f"| {what} | {m} | {n[m] / 1e6:.1f} M | {t[m]:.2f} | {t[official] / t[m]:.1f}x |" for m in t]
    return rows


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="a checkout of https://github.com/hithqd/PointRWKV")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-model", action="store_true", help="the WKV rows only (the classifier takes minutes)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    repo = os.path.abspath(args.official)
    sys.path.insert(0, repo)  # the checkout's own imports are package-absolute (models.*, utils.*)
    try:
        from models import point_rwkv as official_module
    except ImportError as e:
        raise SystemExit(f"cannot import the official code from {repo} ({e}); it needs "
                         "`pip install einops easydict`")
    torch.set_num_threads(2)
    wkv = wkv_rows(official_module, args.repeats)
    fps = fps_rows(args.repeats)
    model = [] if args.no_model else model_rows(repo, args.repeats)
    cpu = cpu_name()
    lines = [
        f"`python benchmarks/bench_point.py --official PointRWKV`, {datetime.date.today()}, {cpu}, 2 threads, "
        f"torch {torch.__version__}. Float32, median of {args.repeats} alternated runs after a warm-up.",
        "",
        "WKV only (8 heads of 48; the speed-ups are over the official token loop):",
        "",
        "| B x T | implementation | forward ms | forward+backward ms | forward speed-up | fwd+bwd speed-up |",
        "|---|---|---|---|---|---|",
        *wkv,
        "",
        "Farthest point sampling (the speed-ups are over the official loop):",
        "",
        "| B x N -> n | implementation | ms | speed-up |",
        "|---|---|---|---|",
        *fps]
    if model:
        lines += ["", "Whole models, inference (the released ModelNet40 and ShapeNetPart configurations):", "",
                  "| task | model | parameters | seconds | speed-up |", "|---|---|---|---|---|", *model]
    block = "\n".join(lines)
    print(block)
    if args.no_write:
        return
    write_results(block, "point", heading="## PointRWKV vs the official code (CPU)")


if __name__ == "__main__":
    main()
