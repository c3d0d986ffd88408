"""Train the shipped tiny PointRWKVs on the CPU: ``rwkv_hf/pretrained/tiny-pointrwkv-shapes`` (a
classifier) and ``tiny-pointrwkv-parts`` (a part segmentation model).

Data: :mod:`rwkv_hf.pretrained.shapes`, synthetic clouds of 128 points on eight kinds of simple
objects (can, cone, box, bowl, table, mushroom, ring, snowman) with 17 named parts, random
proportions, upright with a random turn, per-axis scale and jitter: 150 objects of each kind
for training (seed 0), 20 of each held out (seed 1). The models are PointRWKVs of width 32 (2
heads of 16) with two scales (32 and 16 centres, patches of 8 points, 8 graph neighbours, one
block each, one graph round). Training: AdamW, one-cycle schedule, a random turn about the
vertical axis and a random scale of each cloud per step.

Metrics on the held-out objects: the classifier's accuracy; the segmentation model's point
accuracy and instance mIoU (ShapeNetPart's: each object's IoU averaged over its category's
parts, a part absent from both prediction and truth counting 1, the prediction taken among the
category's parts; then averaged over the objects). Each folder gets ``eval.json`` and
``heldout.safetensors`` (the held-out clouds, categories and part labels), from which
``rwkv-hf demo`` and the tests measure again.

    python examples/train_tiny_pointrwkv.py [--task classify|segment|both]
"""
import argparse
import json
import math
import os
import time

import torch
from safetensors.torch import save_file

import rwkv_hf  # noqa: F401
from rwkv_hf.point import PointRwkvConfig, PointRwkvForPointCloudClassification, PointRwkvForPointCloudSegmentation
from rwkv_hf.pretrained import TINY_POINT_NAMES, tiny_point_model_path
from rwkv_hf.pretrained.shapes import CATEGORIES, PART_NAMES, make_shapes, part_scores

TINY = dict(hidden_size=32, depths=[1, 1], num_heads=2, num_groups=[32, 16], group_sizes=[8, 8],
            k_neighbors=[8, 8], graph_iterations=1, drop_path_rate=0.0, classifier_dropout=0.2)


def augment(points):
    """A random turn about the vertical axis and a random scale per axis (0.9 to 1.1), per cloud."""
    B = points.shape[0]
    turn = 2 * math.pi * torch.rand(B)
    c, s, z, o = turn.cos(), turn.sin(), torch.zeros(B), torch.ones(B)
    rot = torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1), torch.stack([z, z, o], 1)], 1)
    return points @ rot.transpose(1, 2) * (0.9 + 0.2 * torch.rand(B, 1, 3))


def evaluate(task, model, points, categories, parts, batch=80):
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(points), batch):
            kw = {"categories": categories[i:i + batch]} if task == "segment" else {}
            outs.append(model(points[i:i + batch], **kw).logits)
    logits = torch.cat(outs)
    if task == "classify":
        return {"heldout_accuracy": (logits.argmax(-1) == categories).float().mean().item()}
    return part_scores(logits, categories, parts)


def train(task, args, data):
    (train_pts, train_cat, train_parts), (test_pts, test_cat, test_parts) = data
    torch.manual_seed(args.seed)
    if task == "classify":
        config = PointRwkvConfig(**TINY, num_labels=len(CATEGORIES), id2label=dict(enumerate(CATEGORIES)),
                                 label2id={c: i for i, c in enumerate(CATEGORIES)})
        model = PointRwkvForPointCloudClassification(config)
    else:
        config = PointRwkvConfig(**TINY, num_labels=len(PART_NAMES), num_shape_classes=len(CATEGORIES),
                                 id2label=dict(enumerate(PART_NAMES)), label2id={p: i for i, p in enumerate(PART_NAMES)})
        model = PointRwkvForPointCloudSegmentation(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{type(model).__name__}: {n_params:,} parameters; {len(train_pts)} training / {len(test_pts)} held-out clouds")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(train_pts) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_pts))
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            if task == "classify":
                loss = model(augment(train_pts[idx]), labels=train_cat[idx]).loss
            else:
                loss = model(augment(train_pts[idx]), categories=train_cat[idx], labels=train_parts[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            scores = evaluate(task, model, test_pts, test_cat, test_parts)
            print(f"epoch {epoch + 1:3d}  train loss {total / len(order):.4f}  "
                  + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f"  ({time.time() - t0:.0f}s)")
    scores = evaluate(task, model, test_pts, test_cat, test_parts)
    out = args.out or tiny_point_model_path(task)
    os.makedirs(out, exist_ok=True)
    # shipped inside rwkv_hf, loaded with it: no remote code, no auto_map
    model.save_pretrained(out, remote_code=False)
    save_file({"points": test_pts, "categories": test_cat, "parts": test_parts},
              os.path.join(out, "heldout.safetensors"))
    result = {**scores, "heldout_clouds": len(test_pts), "train_clouds": len(train_pts), "points": test_pts.shape[1],
              "parameters": n_params, "epochs": args.epochs, "seed": args.seed,
              "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__,
              "data": "rwkv_hf.pretrained.shapes.make_shapes: 150 per category (seed 0) for training, "
                      "20 per category (seed 1) held out, 128 points"}
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("classify", "segment", "both"), default="both")
    ap.add_argument("--out", default=None, help="default: the shipped folder (with --task classify or segment)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.out and args.task == "both":
        ap.error("--out needs --task classify or segment")
    torch.set_num_threads(args.threads)
    data = make_shapes(150, 128, seed=0), make_shapes(20, 128, seed=1)
    for task in TINY_POINT_NAMES if args.task == "both" else (args.task,):
        train(task, args, data)


if __name__ == "__main__":
    main()
