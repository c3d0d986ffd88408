"""LoRA (or full) fine-tuning of an RWKV causal LM with the HF ``Trainer``, on CPU.

Data: the pydoc corpus split shipped with ``rwkv_hf`` (:mod:`rwkv_hf.pretrained.corpus`,
CPython reference documentation, PSF licence). Each split is tokenized with the model's
tokenizer into one id stream (documents separated by end-of-text) and cut into fixed
``--seq-len`` blocks: deterministic, no padding, so every sequence has the same number of
predicted tokens and the loss mean over a global batch does not depend on how the batch is
split across processes.

Single process::

    python examples/finetune_lm.py --out runs/lora --max-steps 20

Two processes (DDP over gloo), the same script unchanged; the global batch is
``num_processes * per_device_batch_size * grad_accum``::

    accelerate launch --num_processes 2 --cpu examples/finetune_lm.py --out runs/lora-ddp --max-steps 20

``--sequential`` turns off shuffling (``train_sampling_strategy="sequential"``); then step
``k`` sees the blocks ``k*G ... k*G+G-1`` (G the global batch) whatever the number of
processes, which is what ``tests/test_finetune_ddp.py`` uses to check that 2 processes with
batch b end where 1 process with batch 2b does. ``--dump-params DIR`` writes the trainable
parameters of every rank to ``DIR/rank{N}.pt``.
"""
import argparse
import json
import math
import os
import time

import torch
from torch.utils.data import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

import rwkv_hf  # noqa: F401  (registers the RWKV models and the PEFT LoRA defaults)
from rwkv_hf.pretrained import corpus, tiny_model_path


class BlockDataset(Dataset):
    """Fixed-length blocks of a token stream; ``labels`` = ``input_ids`` (the model shifts)."""

    def __init__(self, ids, seq_len, max_blocks=None):
        n = ids.numel() // seq_len
        if max_blocks is not None:
            n = min(n, max_blocks)
        if n == 0:
            raise ValueError(f"text too short for one block of {seq_len} tokens")
        self.blocks = ids[:n * seq_len].view(n, seq_len).clone()

    def __len__(self):
        return self.blocks.shape[0]

    def __getitem__(self, i):
        x = self.blocks[i]
        return {"input_ids": x, "labels": x.clone()}


def build_datasets(tokenizer, seq_len, max_train_blocks=None, max_eval_blocks=None):
    eot = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    train = corpus.token_stream(tokenizer, corpus.documents("train"), eot)
    val = corpus.token_stream(tokenizer, corpus.documents("val"), eot)
    return (BlockDataset(train, seq_len, max_train_blocks), BlockDataset(val, seq_len, max_eval_blocks))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=tiny_model_path(), help="model folder or Hub id (default: the shipped tiny RWKV-7)")
    p.add_argument("--out", required=True, help="output folder (adapter or full model, metrics.json)")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--per-device-batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=None, help="default: 2 * r")
    p.add_argument("--full", action="store_true", help="train all weights (no LoRA)")
    p.add_argument("--optim", default="adamw_torch", help="a TrainingArguments optim name (adamw_torch, sgd, ...)")
    p.add_argument("--max-train-blocks", type=int, default=None, help="use only the first N training blocks")
    p.add_argument("--max-eval-blocks", type=int, default=None, help="evaluate on the first N validation blocks")
    p.add_argument("--sequential", action="store_true", help="no shuffling: blocks in order")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluations")
    p.add_argument("--use-gpu", action="store_true", help="let the Trainer use an accelerator (default: CPU only)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads per process")
    p.add_argument("--dump-params", default=None, help="write trainable params of each rank to DIR/rank{N}.pt")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)  # the same LoRA init on every rank (DDP also broadcasts rank 0's weights)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if not args.full:
        from peft import LoraConfig, get_peft_model

        alpha = args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=args.lora_r, lora_alpha=alpha,
                                                 lora_dropout=0.0))
    train_ds, eval_ds = build_datasets(tokenizer, args.seq_len, args.max_train_blocks, args.max_eval_blocks)

    targs = TrainingArguments(
        output_dir=args.out,
        use_cpu=not args.use_gpu,
        report_to=[],
        seed=args.seed,
        data_seed=args.seed,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_batch_size,
        per_device_eval_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        optim=args.optim,
        train_sampling_strategy="sequential" if args.sequential else "random",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        disable_tqdm=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.use_gpu else None,
        ddp_find_unused_parameters=False,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_ds)
    main_proc = trainer.is_world_process_zero()
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if main_proc:
        print(f"model {args.model}: {type(model).__name__}, {n_trainable} trainable parameters; "
              f"train {len(train_ds)} blocks x {args.seq_len}, eval {len(eval_ds)} blocks; "
              f"{targs.world_size} process(es), global batch "
              f"{targs.world_size * args.per_device_batch_size * args.grad_accum}", flush=True)

    metrics = {"world_size": targs.world_size, "distributed_type": str(trainer.accelerator.distributed_type)}
    if not args.no_eval:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    t0 = time.time()
    out = trainer.train()
    metrics["train_seconds"] = time.time() - t0
    metrics["train_loss"] = out.training_loss
    metrics["wrapped_as"] = type(trainer.model_wrapped).__name__
    if not args.no_eval:
        metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]

    if args.dump_params:
        os.makedirs(args.dump_params, exist_ok=True)
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        params = {n: p.detach().cpu().clone() for n, p in unwrapped.named_parameters() if p.requires_grad}
        torch.save(params, os.path.join(args.dump_params, f"rank{targs.process_index}.pt"))

    trainer.save_model(args.out)  # LoRA: adapter only; --full: the whole model (main process writes)
    if main_proc:
        tokenizer.save_pretrained(args.out)
        if not args.no_eval:
            metrics["eval_perplexity_after"] = math.exp(metrics["eval_loss_after"])
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        print("RESULT " + json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
