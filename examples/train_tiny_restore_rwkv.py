"""Train the shipped tiny Restore-RWKV (``rwkv_hf/pretrained/tiny-restore-rwkv-denoise``) on
the CPU: a grey-level Gaussian denoiser (noise sigma 25 on a 0..255 scale).

Data: the two photographs that ship with scikit-learn (``load_sample_images``: ``china.jpg``
by danielbuechele and ``flower.jpg`` by vultilion on Flickr, CC BY 2.0; 427x640), in grey
levels (ITU-R BT.601 luma, then 0..1, then 8-bit levels for the held-out crop). Training: random 48x48 crops of ``china.jpg`` with random flips and quarter turns, a
fresh noise draw every step. Held out: the centre 192x192 crop of ``flower.jpg`` with one fixed
noise draw (seed 0), which ships with the model (``heldout.safetensors``) so that
``rwkv-hf demo`` re-measures it without scikit-learn. The model is a Restore-RWKV of width 16,
one block per level, one refinement block; the official L1 loss, AdamW, cosine schedule.

Writes the model folder (config, weights, card) with ``eval.json``: the held-out PSNR of the
noisy input, of the best Gaussian blur (the sigma chosen on the held-out image itself: a
generous baseline) and of the model.

    pip install scikit-learn && python examples/train_tiny_restore_rwkv.py
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
from safetensors.torch import save_file

import rwkv_hf  # noqa: F401
from rwkv_hf.pretrained import TINY_RESTORE_NAME, tiny_restore_model_path
from rwkv_hf.pretrained.denoise import denoise_baselines, psnr
from rwkv_hf.restore import RestoreRwkvConfig, RestoreRwkvForImageRestoration

NOISE_SIGMA = 25 / 255
HELD_OUT_CROP = 192


def grey(image):
    """uint8 [H, W, 3] -> float32 [H, W] in 0..1 (BT.601 luma)."""
    return torch.from_numpy(image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255)


def sample_images():
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    names = [os.path.basename(f) for f in data.filenames]
    return {n: grey(im) for n, im in zip(names, data.images)}


def held_out(flower, seed=0):
    """(clean [1, 1, S, S] in 0..1, noisy): the centre crop of flower.jpg and one noise draw."""
    h, w = flower.shape
    top, left = (h - HELD_OUT_CROP) // 2, (w - HELD_OUT_CROP) // 2
    clean = flower[top:top + HELD_OUT_CROP, left:left + HELD_OUT_CROP][None, None]
    clean = (clean * 255).round() / 255  # 8-bit levels: what heldout.safetensors stores
    g = torch.Generator().manual_seed(seed)
    return clean, clean + NOISE_SIGMA * torch.randn(clean.shape, generator=g)


def random_crops(image, n, size):
    """``n`` random ``size`` x ``size`` crops with random flips and quarter turns: [n, 1, size, size]."""
    h, w = image.shape
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        top, left = np.random.randint(0, h - size + 1), np.random.randint(0, w - size + 1)
        crop = image[top:top + size, left:left + size]
        if np.random.rand() < 0.5:
            crop = crop.flip(1)
        out[i, 0] = torch.rot90(crop, int(np.random.randint(4)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="default: the shipped folder")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--crop", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    images = sample_images()
    clean, noisy = held_out(images["flower.jpg"])
    config = RestoreRwkvConfig(hidden_size=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    model = RestoreRwkvForImageRestoration(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Restore-RWKV width {config.hidden_size}, blocks {config.num_blocks} + {config.num_refinement_blocks}: "
          f"{n_params:,} parameters; {args.steps} steps of {args.batch_size} {args.crop}x{args.crop} crops")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    t0, total = time.time(), 0.0
    for step in range(1, args.steps + 1):
        model.train()
        target = random_crops(images["china.jpg"], args.batch_size, args.crop)
        loss = model(target + NOISE_SIGMA * torch.randn_like(target), labels=target).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        total += loss.item()
        if step % 50 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                score = psnr(model(noisy).reconstruction, clean)
            print(f"step {step:4d}  train L1 {total / 50:.4f}  held-out PSNR {score:.2f} dB  ({time.time() - t0:.0f}s)",
                  flush=True)
            total = 0.0
    model.eval()
    with torch.no_grad():
        score = psnr(model(noisy).reconstruction, clean)
    args.out = args.out or tiny_restore_model_path()
    os.makedirs(args.out, exist_ok=True)
    # shipped inside rwkv_hf, loaded with it: no remote code, no auto_map, a hand-written card
    model.save_pretrained(args.out, remote_code=False)
    save_file({"clean": (clean * 255).round().to(torch.uint8), "noisy": noisy},
              os.path.join(args.out, "heldout.safetensors"))
    result = {"heldout_psnr_db": round(score, 3), **{k: round(v, 3) for k, v in denoise_baselines(noisy, clean).items()},
              "noise_sigma": "25/255", "heldout": f"flower.jpg, centre {HELD_OUT_CROP}x{HELD_OUT_CROP}, grey, noise seed 0",
              "train": f"china.jpg, {args.steps} steps x {args.batch_size} random {args.crop}x{args.crop} crops",
              "parameters": n_params, "seed": args.seed, "train_seconds": round(time.time() - t0, 1),
              "torch": torch.__version__, "name": TINY_RESTORE_NAME,
              "data": "sklearn.datasets.load_sample_images (china.jpg, flower.jpg)"}
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
