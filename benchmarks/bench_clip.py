"""RWKV-CLIP-B/32 against open_clip's ViT-B-32 CLIP (the model users would otherwise pick, the
same 224 px / patch-32 image input and 77-token text input) on the CPU, inference in float32:
image embeddings per second (batch 1 and batch 8) and text embeddings per second (batch 10,
the texts of a zero-shot prompt set).

Method: ``torch.set_num_threads(2)``; both models built in one process with random weights
(speed does not depend on them), one warm-up per model and input, then the two models
alternated (A B A B) for ``--repeats`` runs; the median. Writes the ``clip`` block of
benchmarks/RESULTS.md.

    pip install open_clip_torch && python benchmarks/bench_clip.py
"""
import argparse
import datetime
import statistics
import time

from bench_common import cpu_name, write_results


def build():
    import open_clip
    import torch

    import rwkv_hf  # noqa: F401
    from rwkv_hf.clip import RWKV_CLIP_SIZES, RwkvClipConfig, RwkvClipModel

    torch.manual_seed(0)
    ours = RwkvClipModel(RwkvClipConfig(**RWKV_CLIP_SIZES["B/32"])).eval()
    theirs = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    return {"RWKV-CLIP-B/32 (rwkv_hf)": (lambda px: ours.get_image_features(px).pooler_output,
                                         lambda ids: ours.get_text_features(ids).pooler_output, ours),
            "ViT-B-32 CLIP (open_clip)": (theirs.encode_image, theirs.encode_text, theirs)}


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    torch.set_num_threads(2)
    models = build()
    g = torch.Generator().manual_seed(0)
    inputs = {"image, batch 1": ("image", torch.randn(1, 3, 224, 224, generator=g)),
              "image, batch 8": ("image", torch.randn(8, 3, 224, 224, generator=g)),
              "text, batch 10": ("text", torch.randint(1, 49406, (10, 77), generator=g))}
    times = {(m, k): [] for m in models for k in inputs}
    with torch.inference_mode():
        for name, (kind, x) in inputs.items():
            for m, (image, text, _) in models.items():
                (image if kind == "image" else text)(x)  # warm-up
            for _ in range(args.repeats):
                for m, (image, text, _) in models.items():
                    t0 = time.perf_counter()
                    (image if kind == "image" else text)(x)
                    times[(m, name)].append(time.perf_counter() - t0)
    names = list(models)
    params = {m: sum(p.numel() for p in models[m][2].parameters()) for m in names}
    rows = []
    for name, (kind, x) in inputs.items():
        rate = {m: len(x) / statistics.median(times[(m, name)]) for m in names}
        rows.append(f"| {name} | {rate[names[0]]:.2f} | {rate[names[1]]:.2f} | {rate[names[0]] / rate[names[1]]:.2f}x |")
    cpu = cpu_name()
    import open_clip

    block = "\n".join([
        f"`python benchmarks/bench_clip.py`, {datetime.date.today()}, {cpu}, 2 threads, torch {torch.__version__}, "
        f"open_clip {open_clip.__version__}. Float32 inference, random weights, median of {args.repeats} "
        "alternated runs; per second (embeddings).",
        "",
        f"| input | {names[0]} /s | {names[1]} /s | RWKV-CLIP / ViT speed |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Parameters: {names[0]} {params[names[0]] / 1e6:.1f} M, {names[1]} {params[names[1]] / 1e6:.1f} M."])
    print(block)
    if args.no_write:
        return
    write_results(block, "clip", heading="## RWKV-CLIP-B/32 vs open_clip ViT-B-32 (CPU inference)")


if __name__ == "__main__":
    main()
