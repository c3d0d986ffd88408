"""examples/finetune_lm.py (HF Trainer + LoRA on the shipped tiny RWKV-7 and pydoc corpus):
one process runs, evaluates and saves a loadable adapter; two processes (DDP over gloo on
CPU, launched with ``accelerate launch --multi_gpu --num_processes 2``) with per-device
batch b end with identical LoRA weights on both ranks, equal (to float tolerance) to one
process with batch 2b over the same blocks. Data order: with ``--sequential`` (no shuffling)
step k of both runs sees blocks 2b*k ... 2b*k+2b-1 (accelerate shards the batches: rank r
gets batch 2k+r of size b); shuffled, accelerate's seeded sampler draws the same permutation
in both runs. Blocks have a fixed length, so the mean over the global batch is the same
however it is split."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("accelerate")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "finetune_lm.py")
B, STEPS, SEQ = 2, 4, 64  # per-device batch of the 2-process run; the 1-process run uses 2 * B
COMMON = ["--max-steps", str(STEPS), "--seq-len", str(SEQ), "--seed", "0", "--lora-r", "4", "--max-train-blocks", "64"]
# The equality check trains with plain SGD, where the parameters are a linear function of the
# gradients: 1 process vs 2 processes differ by ~5e-8 (summation order; lora_B moves to
# ~3e-2). With AdamW (the script's default) the difference is ~1e-5: Adam's first steps are
# ~lr * sign(grad), so gradient entries near zero amplify rounding noise; that is not a
# DDP error, so AdamW is only used for the single-process run. The ranks agree exactly.
ATOL = 1e-6


def _env(threads):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _run(cmd, threads, timeout=240):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(threads), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _accelerate():
    exe = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    return [exe] if exe else [sys.executable, "-m", "accelerate.commands.launch"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, SCRIPT, "--out", str(out), "--per-device-batch-size", str(2 * B),
          "--max-eval-blocks", "8", "--threads", "2", "--dump-params", str(out / "dump"), "--lr", "1e-3",
          "--sequential", *COMMON], threads=2)
    return out


def test_single_process_trains_evaluates_and_saves_adapter(single_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import rwkv_hf  # noqa: F401
    from rwkv_hf.pretrained import tiny_model_path

    metrics = json.load(open(single_run / "metrics.json"))
    assert metrics["world_size"] == 1
    for key in ("train_loss", "eval_loss_before", "eval_loss_after"):
        assert 0 < metrics[key] < 10, metrics
    # the eval loss moves (the adapter does something) but stays near the base model's
    assert metrics["eval_loss_after"] != metrics["eval_loss_before"]
    assert abs(metrics["eval_loss_after"] - metrics["eval_loss_before"]) < 0.5
    assert (single_run / "adapter_model.safetensors").is_file()
    assert (single_run / "adapter_config.json").is_file()
    assert not (single_run / "model.safetensors").exists()  # adapter only

    # the saved adapter reloads onto the base model with the trained weights
    dumped = torch.load(single_run / "dump" / "rank0.pt")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path()), str(single_run))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(dumped) == len(loaded) > 0
    for name, value in dumped.items():
        assert name in loaded, name
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    assert any(v.abs().max() > 0 for n, v in dumped.items() if "lora_B" in n)  # B moved off zero


@pytest.mark.parametrize("order,per_device,accum", [("sequential", B, 1), ("shuffled", B, 1), ("sequential", B // 2, 2)])
def test_ddp_two_processes_match_one_process_with_double_batch(order, per_device, accum, tmp_path):
    """2 processes x per-device batch x accumulation steps = 2 * B blocks a step, as 1 x 2B."""
    # shuffled: the Trainer's RandomSampler, which accelerate replaces by a seeded sampler
    # giving every process (and the single process) the same permutation
    sgd = ["--optim", "sgd", "--lr", "0.5", "--no-eval", *COMMON] + (["--sequential"] if order == "sequential" else [])
    single_run = tmp_path / "single"
    _run([sys.executable, SCRIPT, "--out", str(single_run), "--per-device-batch-size", str(2 * B), "--threads", "2",
          "--dump-params", str(single_run / "dump"), *sgd], threads=2)
    out = tmp_path / "ddp"
    proc = _run([*_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no",
                 SCRIPT, "--out", str(out), "--per-device-batch-size", str(per_device), "--grad-accum", str(accum), "--threads", "1",
                 "--dump-params", str(out / "dump"), *sgd], threads=1)
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["world_size"] == 2, proc.stdout[-2000:]
    assert metrics["distributed_type"] == "DistributedType.MULTI_CPU"
    assert metrics["wrapped_as"] == "DistributedDataParallel"
    assert (out / "adapter_model.safetensors").is_file()

    rank0 = torch.load(out / "dump" / "rank0.pt")
    rank1 = torch.load(out / "dump" / "rank1.pt")
    single = torch.load(single_run / "dump" / "rank0.pt")
    assert rank0.keys() == rank1.keys() == single.keys() and len(single) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ on {name}"
    diff = max((rank0[n] - single[n]).abs().max().item() for n in single)
    print(f"max |param diff| 2 x {per_device} x accum {accum} ({order}) vs 1 x {2 * B}: {diff:.3g}")
    moved = max((single[n]).abs().max().item() for n in single if "lora_B" in n)
    assert moved > 1e-2  # training did something to compare
    assert diff <= ATOL, f"2 processes x batch {per_device} x accum {accum} vs 1 process x batch {2 * B}: max |diff| {diff:.3g}"
    single_metrics = json.load(open(single_run / "metrics.json"))
    assert metrics["train_loss"] == pytest.approx(single_metrics["train_loss"], rel=1e-6)
