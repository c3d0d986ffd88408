"""Train the shipped tiny Vision-RWKVs (``rwkv_hf/pretrained/tiny-vrwkv-digits``, and with
``--version 6`` ``tiny-vrwkv6-digits``) on the CPU.

Data: scikit-learn's ``load_digits`` (1,797 8x8 grey images of handwritten digits, from the
UCI "Optical Recognition of Handwritten Digits" set, CC BY 4.0), split 80/20 per class with
a fixed seed. Every image goes through the same path as at inference: a PIL RGB image,
then the saved ``VrwkvImageProcessor`` (bicubic resize to 32x32, ImageNet normalisation).
The model is a VRWKV (bidirectional RWKV-4 WKV; ``--version 6``: a VRWKV6, bidirectional
RWKV-6 WKV with 4 heads of 16) with 4x4 patches (an 8x8 grid), 4 blocks of width 64. Training: AdamW, cosine schedule, random shifts of up to one source pixel.

Writes the model folder (config, weights, image processor, card) with ``eval.json`` (held-out
accuracy) and ``heldout.safetensors`` (the held-out images and labels, so ``rwkv-hf demo``
re-measures the accuracy without scikit-learn).

    pip install scikit-learn && python examples/train_tiny_vrwkv.py [--version 6]
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import rwkv_hf  # noqa: F401
from rwkv_hf.pretrained import tiny_vision_model_path
from rwkv_hf.vision import VRWKV_CLASSES, VrwkvImageProcessor


def digits_split(seed=0, held_out=0.2):
    """(train images, train labels, test images, test labels, test indices): uint8 [N, 8, 8]
    images (0..255), a per-class split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    test = []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        test.extend(rng.choice(idx, size=round(len(idx) * held_out), replace=False).tolist())
    test = np.array(sorted(test))
    train = np.setdiff1d(np.arange(len(images)), test)
    return images[train], d.target[train], images[test], d.target[test], test


def to_pil(image):
    return Image.fromarray(image).convert("RGB")


def shift(batch, max_shift):
    """Random translations of up to ``max_shift`` pixels, zero padded (one per image)."""
    n, _, h, w = batch.shape
    padded = F.pad(batch, (max_shift,) * 4)
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2))
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def accuracy(model, pixels, labels, batch=256):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            correct += (model(pixels[i:i + batch]).logits.argmax(-1) == labels[i:i + batch]).sum().item()
    return correct / len(pixels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", type=int, choices=(4, 6), default=4, help="VRWKV (4) or VRWKV6 (6)")
    ap.add_argument("--out", default=None, help="default: the shipped folder of that version")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x_train, y_train, x_test, y_test, test_idx = digits_split(args.seed)
    processor = VrwkvImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    prep = lambda images: processor([to_pil(im) for im in images], return_tensors="pt").pixel_values  # noqa: E731
    train_px, test_px = prep(x_train), prep(x_test)
    train_y, test_y = torch.as_tensor(y_train), torch.as_tensor(y_test)

    config_cls, _, model_cls, _ = VRWKV_CLASSES[args.version]
    extra = dict(head_size=16) if args.version == 6 else {}
    config = config_cls(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4, num_labels=10,
                        id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)}, **extra)
    model = model_cls(config)
    args.out = args.out or tiny_vision_model_path(args.version)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{model_cls.__name__} {config.num_hidden_layers}x{config.hidden_size}, patch {config.patch_size}: "
          f"{n_params:,} parameters; "
          f"{len(train_px)} training / {len(test_px)} held-out images")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(train_px) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_px))
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            loss = model(shift(train_px[idx], 4), labels=train_y[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(order):.4f}  held-out accuracy "
                  f"{accuracy(model, test_px, test_y):.4f}  ({time.time() - t0:.0f}s)")
    acc = accuracy(model, test_px, test_y)
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    # shipped inside rwkv_hf, loaded with it: no remote code, no auto_map, a hand-written card
    model.save_pretrained(args.out, remote_code=False)
    processor._auto_class = None  # this instance only: no image_processing_vrwkv.py copy
    processor.save_pretrained(args.out)
    save_file({"images": torch.as_tensor(x_test), "labels": test_y, "indices": torch.as_tensor(test_idx)},
              os.path.join(args.out, "heldout.safetensors"))
    result = {"heldout_accuracy": acc, "heldout_images": len(test_px), "train_images": len(train_px),
              "parameters": n_params, "epochs": args.epochs, "seed": args.seed,
              "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__,
              "data": "sklearn.datasets.load_digits, per-class 80/20 split (seed 0)"}
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
