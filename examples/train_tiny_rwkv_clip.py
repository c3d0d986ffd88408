"""Train the shipped tiny RWKV-CLIP (``rwkv_hf/pretrained/tiny-rwkv-clip-digits``) on the CPU.

Data: scikit-learn's ``load_digits`` (1,797 8x8 grey images of handwritten digits, CC BY 4.0),
the per-class 80/20 split of ``train_tiny_vrwkv.py``. Each training image is paired with a
caption naming its digit in one of ``TRAIN_TEMPLATES`` ("a photo of the number seven.",
"the digit 7", ...), drawn at random each time. Images go through the saved processor (the
RWKV-CLIP ``CLIPImageProcessor`` at 32 px: bicubic resize, OpenAI normalisation) and captions
through its CLIP BPE tokenizer, as at inference.

The model is an RWKV-CLIP with the towers of the published ones, shrunk: the image tower a
VRWKV6 with 4x4 patches (an 8x8 grid), 4 blocks of width 32 (2 heads of 16); the text tower 2
bidirectional RWKV-6 blocks of width 32 over the full 49,408-token CLIP vocabulary and 77
positions. Training: the model's own contrastive loss (``return_loss=True``) on batches of one
image per digit (ten distinct captions), AdamW, cosine schedule, random shifts of up to one
source pixel, ``logit_scale`` clamped to [0, ln 100] as the official training.

Evaluation: zero-shot classification of the held-out images: each image against the ten
captions of a template, the most similar caption wins. Reported for a training template
("a photo of the number {}.") and for one never seen in training ("{} is written here").
The embedding rows of tokens that never occur in a training caption (nor as the padding token 0,
which fills every padding position) are set to zero before saving: they were never trained
(only their initial noise), and zeros keep the package small once compressed.

Writes the model folder (config, weights, processor) with ``eval.json`` and
``heldout.safetensors`` (the held-out images and labels, so ``rwkv-hf demo`` re-measures the
accuracy without scikit-learn).

    pip install scikit-learn && python examples/train_tiny_rwkv_clip.py
"""
import argparse
import json
import math
import os
import sys
import time

import torch
from safetensors.torch import save_file

import rwkv_hf  # noqa: F401
from rwkv_hf.clip import RwkvClipConfig, RwkvClipModel
from rwkv_hf.clip.processing_rwkv_clip import default_processor
from rwkv_hf.pretrained import DIGIT_WORDS, tiny_clip_model_path, zero_shot_accuracy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_tiny_vrwkv import digits_split, shift, to_pil  # noqa: E402  (the same split and augmentation)

TRAIN_TEMPLATES = ["a photo of the number {w}.", "a handwritten {w}", "the digit {d}", "an image of a {w}",
                   "{w}", "a {d}", "the number {d}.", "{d}"]
EVAL_TEMPLATES = {"seen": "a photo of the number {}.", "unseen": "{} is written here"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="default: the shipped folder")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x_train, y_train, x_test, y_test, test_idx = digits_split(args.seed)
    config = RwkvClipConfig(
        vision_config=dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=4, intermediate_size=128,
                           head_size=16),
        text_config=dict(hidden_size=32, num_hidden_layers=2, intermediate_size=96, head_size=16))
    model = RwkvClipModel(config)
    processor = default_processor(config.vision_config)
    prep = lambda images: processor.image_processor([to_pil(im) for im in images],  # noqa: E731
                                                    return_tensors="pt").pixel_values
    train_px, test_px = prep(x_train), prep(x_test)
    train_y = torch.as_tensor(y_train)
    by_class = [torch.nonzero(train_y == c).flatten() for c in range(10)]
    # every caption of every digit, tokenized once: [digit][template] -> (ids, mask)
    captions = [[t.format(w=DIGIT_WORDS[d], d=d) for t in TRAIN_TEMPLATES] for d in range(10)]
    flat = processor.tokenizer(sum(captions, []), padding="max_length", return_tensors="pt")
    ids = flat.input_ids.view(10, len(TRAIN_TEMPLATES), -1)
    mask = flat.attention_mask.view(10, len(TRAIN_TEMPLATES), -1)

    args.out = args.out or tiny_clip_model_path()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"RWKV-CLIP tiny: {n_params:,} parameters; {len(train_px)} training / {len(test_px)} held-out images")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    digits = torch.arange(10)
    t0, total = time.time(), 0.0
    for step in range(1, args.steps + 1):
        model.train()
        pick = torch.stack([by_class[c][torch.randint(len(by_class[c]), ())] for c in range(10)])
        template = torch.randint(len(TRAIN_TEMPLATES), (10,))
        loss = model(input_ids=ids[digits, template], attention_mask=mask[digits, template],
                     pixel_values=shift(train_px[pick], 4), return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        total += loss.item()
        if step % 250 == 0 or step == args.steps:
            accs = {k: zero_shot_accuracy(model, processor, test_px, y_test, t) for k, t in EVAL_TEMPLATES.items()}
            print(f"step {step:5d}  train loss {total / 250:.4f}  held-out zero-shot accuracy "
                  f"{accs['seen']:.4f} (unseen template {accs['unseen']:.4f})  ({time.time() - t0:.0f}s)")
            total = 0.0
    train_seconds = round(time.time() - t0, 1)
    model.eval()
    # rows of tokens no training caption contains never left their initial noise
    used = torch.zeros(config.text_config.vocab_size, dtype=torch.bool)
    used[ids[mask.bool()]] = True
    used[config.text_config.pad_token_id] = True  # every padding position reads it
    with torch.no_grad():
        model.text_model.emb.weight[~used] = 0
    accs = {k: zero_shot_accuracy(model, processor, test_px, y_test, t) for k, t in EVAL_TEMPLATES.items()}
    os.makedirs(args.out, exist_ok=True)
    # shipped inside rwkv_hf, loaded with it: no remote code, no auto_map, a hand-written card
    model.save_pretrained(args.out, remote_code=False)
    processor.save_pretrained(args.out)
    save_file({"images": torch.as_tensor(x_test), "labels": torch.as_tensor(y_test),
               "indices": torch.as_tensor(test_idx)}, os.path.join(args.out, "heldout.safetensors"))
    result = {"zero_shot_accuracy": accs["seen"], "zero_shot_accuracy_unseen_template": accs["unseen"],
              "templates": EVAL_TEMPLATES, "train_templates": TRAIN_TEMPLATES,
              "heldout_images": len(test_px), "train_images": len(train_px), "parameters": n_params,
              "trained_token_rows": int(used.sum()), "steps": args.steps, "lr": args.lr, "seed": args.seed,
              "train_seconds": train_seconds, "torch": torch.__version__,
              "data": "sklearn.datasets.load_digits, per-class 80/20 split (seed 0)"}
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
