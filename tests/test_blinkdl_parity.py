"""Converted models against BlinkDL's own runtime (the ``rwkv`` pip package, strategy
'cpu fp32'), for random checkpoints in the official layout of every version, and the
BlinkDL layout round trip."""
import json
import os
import subprocess
import sys

import pytest
import torch

from transformers import AutoModelForCausalLM

from rwkv_hf.conversion.blinkdl import detect_version, from_blinkdl, to_blinkdl
from rwkv_hf.conversion.convert import convert
from lm_utils import rel_err, tiny_model

# Runs in its own process: the package reads RWKV_* variables at import, and RWKV_V7_ON
# swaps its model class for the whole process.
ORACLE = r'''
import copy, json, os, sys, torch
os.environ["RWKV_JIT_ON"] = "1"; os.environ["RWKV_CUDA_ON"] = "0"
if sys.argv[2] == "7":
    os.environ["RWKV_V7_ON"] = "1"
from rwkv.model import RWKV
path, ids = sys.argv[1], json.loads(sys.argv[3])
model = RWKV(model=path[:-4] if sys.argv[2] == "7" else path, strategy="cpu fp32")
full, _ = model.forward(ids, None, full_output=True)
state, steps = None, []
for t in ids:
    logits, state = model.forward([t], state)
    state = copy.deepcopy(state)  # the package updates its state in place
    steps.append(logits.float())
torch.save({"full": full.float(), "steps": torch.stack(steps)}, path + ".out")
'''

SHAPES = [dict(hidden_size=64, head_size=32, num_hidden_layers=3, intermediate_size=96),
          dict(hidden_size=96, head_size=16, num_hidden_layers=2, intermediate_size=160)]


@pytest.mark.parametrize("shape", range(len(SHAPES)))
@pytest.mark.parametrize("version", (4, 5, 6, 7))
def test_logits_match_blinkdl_runtime(version, shape, tmp_path):
    model = tiny_model(version, seed=shape, vocab_size=211, **SHAPES[shape])
    path = str(tmp_path / "rand.pth")
    torch.save(to_blinkdl(model), path)
    ids = torch.randint(0, 211, (17,), generator=torch.Generator().manual_seed(shape)).tolist()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", ORACLE, path, str(version), json.dumps(ids)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = torch.load(path + ".out")
    convert(path, str(tmp_path / "converted"))  # what `rwkv-hf convert rand.pth converted/` writes
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "converted").eval()
    with torch.no_grad():
        full = converted(torch.tensor([ids])).logits[0]
        last = converted(torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
        # token by token with the state, on this side too
        out, steps = None, []
        for t in ids:
            out = converted(torch.tensor([[t]]), cache=None if out is None else out.cache)
            steps.append(out.logits[0, -1])
    assert rel_err(torch.stack(steps), ref["steps"]) <= 1e-4
    assert rel_err(full, ref["full"]) <= 1e-4
    assert rel_err(full, ref["steps"]) <= 1e-4
    assert rel_err(last, ref["steps"][-1]) <= 1e-4


@pytest.mark.parametrize("version", (4, 5, 6, 7))
def test_blinkdl_layout_round_trip_is_lossless(version):
    model = tiny_model(version)
    sd = to_blinkdl(model)
    assert detect_version(sd) == version
    assert all(k.startswith(("emb.", "blocks.", "ln_out.", "head.")) for k in sd)
    config, ours, discarded = from_blinkdl(sd)
    unused = {"architectures", "head_size"} if version == 4 else {"architectures"}  # v4 has no heads
    mine, theirs = model.config.to_dict(), config.to_dict()
    assert {k: v for k, v in theirs.items() if k not in unused} == {k: v for k, v in mine.items() if k not in unused}
    assert discarded == (["blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"] if version == 7 else [])
    assert ours.keys() == model.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())


def test_unmappable_checkpoints_are_refused_by_name():
    sd = to_blinkdl(tiny_model(6))
    sd["blocks.0.att.mystery"] = torch.zeros(3)
    with pytest.raises(ValueError, match="blocks.0.att.mystery"):
        from_blinkdl(sd)
    with pytest.raises(ValueError, match="Not a BlinkDL"):
        detect_version({"foo.weight": torch.zeros(1)})
