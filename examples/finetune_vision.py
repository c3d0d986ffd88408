"""LoRA (or full) fine-tuning of a Vision-RWKV image classifier with the HF ``Trainer``, on CPU.

Default task (offline, nothing to download): adapt the shipped tiny VRWKV digit classifier
(``rwkv_hf/pretrained/tiny-vrwkv-digits``) to *inverted* digits (black on white) using its
shipped held-out images: the first 250 train, the other 109 evaluate. Out of the box the
model reads inverted digits poorly; a few dozen LoRA steps fix that.

Your own data: ``--data-dir DIR`` with ``DIR/train/<class>/*.png|jpg`` and
``DIR/val/<class>/*.png|jpg`` (class names = folder names); with ``--new-head`` the
classification head is replaced for those classes and trained with the adapter
(``LoraConfig(modules_to_save=["head"])``).

    python examples/finetune_vision.py --out runs/vision-lora --max-steps 30
    python examples/finetune_vision.py --model path/to/vrwkv --data-dir my_images --new-head --out runs/x

Writes the adapter (or with ``--full`` the whole model), the image processor and
``metrics.json`` (eval loss and accuracy before and after) to ``--out``.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import Dataset
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments, set_seed

import rwkv_hf  # noqa: F401  (registers Vision-RWKV and the PEFT LoRA defaults)
from rwkv_hf.pretrained import tiny_vision_model_path


class ImageDataset(Dataset):
    """Preprocessed images and their labels."""

    def __init__(self, images, labels, processor):
        self.pixels = processor(images, return_tensors="pt").pixel_values
        self.labels = torch.as_tensor(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def inverted_digits():
    """(train images, train labels, val images, val labels, class names) of the default task."""
    data = load_file(os.path.join(tiny_vision_model_path(), "heldout.safetensors"))
    images = [Image.fromarray(255 - im.numpy()).convert("RGB") for im in data["images"]]
    labels = data["labels"].tolist()
    return images[:250], labels[:250], images[250:], labels[250:], [str(i) for i in range(10)]


def image_folder(root):
    """The ``train/`` and ``val/`` splits of a class-per-folder image directory."""
    classes = sorted(d for d in os.listdir(os.path.join(root, "train")) if os.path.isdir(os.path.join(root, "train", d)))
    if not classes:
        raise SystemExit(f"{root}/train has no class folders")
    splits = []
    for split in ("train", "val"):
        images, labels = [], []
        for c, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".webp")):
                    images.append(Image.open(os.path.join(folder, f)).convert("RGB"))
                    labels.append(c)
        if not images:
            raise SystemExit(f"{root}/{split}: no images found")
        splits += [images, labels]
    return (*splits, classes)


def accuracy(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=tiny_vision_model_path(), help="model folder (default: the shipped tiny VRWKV)")
    p.add_argument("--data-dir", default=None, help="DIR/train/<class>/*, DIR/val/<class>/* (default: inverted digits)")
    p.add_argument("--new-head", action="store_true", help="a fresh head for the data's classes, trained and saved")
    p.add_argument("--out", required=True, help="output folder (adapter or full model, metrics.json)")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--full", action="store_true", help="train all weights (no LoRA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    train_x, train_y, val_x, val_y, classes = image_folder(args.data_dir) if args.data_dir else inverted_digits()
    processor = AutoImageProcessor.from_pretrained(args.model)
    extra = {}
    if args.new_head:
        extra = dict(num_labels=len(classes), id2label=dict(enumerate(classes)),
                     label2id={c: i for i, c in enumerate(classes)}, ignore_mismatched_sizes=True)
    model = AutoModelForImageClassification.from_pretrained(args.model, **extra)
    if model.config.num_labels != len(classes):
        raise SystemExit(f"the model has {model.config.num_labels} classes, the data {len(classes)}: pass --new-head")
    if not args.full:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                                 modules_to_save=["head"] if args.new_head else None))
    train_ds, eval_ds = ImageDataset(train_x, train_y, processor), ImageDataset(val_x, val_y, processor)
    targs = TrainingArguments(
        output_dir=args.out, use_cpu=True, report_to=[], seed=args.seed, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, learning_rate=args.lr,
        lr_scheduler_type="linear", weight_decay=0.0, eval_strategy="no", save_strategy="no", logging_steps=5,
        dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_ds,
                      compute_metrics=accuracy)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{args.model}: {type(model).__name__}, {n_trainable:,} trainable parameters; train {len(train_ds)} "
          f"images, eval {len(eval_ds)}", flush=True)
    before = trainer.evaluate()
    t0 = time.time()
    trainer.train()
    after = trainer.evaluate()
    metrics = {"eval_loss_before": before["eval_loss"], "eval_accuracy_before": before["eval_accuracy"],
               "eval_loss_after": after["eval_loss"], "eval_accuracy_after": after["eval_accuracy"],
               "train_seconds": round(time.time() - t0, 1), "trainable_parameters": n_trainable}
    trainer.save_model(args.out)  # LoRA: the adapter only; --full: the whole model
    processor.save_pretrained(args.out)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print("RESULT " + json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
