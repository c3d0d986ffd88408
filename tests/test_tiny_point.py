"""The shipped tiny PointRWKVs (a classifier and a part segmentation model trained by
examples/train_tiny_pointrwkv.py on rwkv_hf.pretrained.shapes) reproduce their recorded
held-out scores, well above chance; the synthetic objects and the part metrics."""
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import rwkv_hf  # noqa: F401
from rwkv_hf.point import PointRwkvForPointCloudClassification, PointRwkvForPointCloudSegmentation, PointRwkvModel
from rwkv_hf.pretrained import tiny_point_model_path
from rwkv_hf.pretrained.shapes import CATEGORIES, PART_NAMES, PART_OFFSET, PARTS, make_shapes, part_scores

MIN_ACCURACY = 0.95  # the shipped classifier's floor (chance: 1/8)
MIN_MIOU = 0.85  # the shipped segmenter's instance mIoU floor


def _shipped(task):
    path = tiny_point_model_path(task)
    with open(os.path.join(path, "eval.json")) as f:
        recorded = json.load(f)
    return path, recorded, load_file(os.path.join(path, "heldout.safetensors"))


def test_heldout_objects_are_the_seeded_synthetic_ones():
    """Both folders carry the held-out split, make_shapes(20, 128, seed=1); training used seed 0."""
    points, categories, parts = make_shapes(20, 128, seed=1)
    for task in ("classify", "segment"):
        data = _shipped(task)[2]
        assert torch.equal(data["points"], points) and torch.equal(data["categories"], categories)
        assert torch.equal(data["parts"], parts)
    train = make_shapes(150, 128, seed=0)[0]
    assert not any(torch.equal(train[i], points[j]) for i in range(0, len(train), 37) for j in range(len(points)))


def test_tiny_classifier_reproduces_its_recorded_accuracy():
    path, recorded, data = _shipped("classify")
    model = PointRwkvForPointCloudClassification.from_pretrained(path).eval()
    with torch.no_grad():
        pred = model(data["points"]).logits.argmax(-1)
    acc = (pred == data["categories"]).float().mean().item()
    assert acc == recorded["heldout_accuracy"] and acc >= MIN_ACCURACY, acc
    assert model.config.id2label[6] == "ring"
    backbone = AutoModel.from_pretrained(path)  # the Auto class gives the backbone of the folder
    assert type(backbone) is PointRwkvModel


def test_tiny_segmenter_reproduces_its_recorded_scores():
    path, recorded, data = _shipped("segment")
    model = PointRwkvForPointCloudSegmentation.from_pretrained(path).eval()
    with torch.no_grad():
        logits = model(data["points"], categories=data["categories"]).logits
    scores = part_scores(logits, data["categories"], data["parts"])
    for key in ("heldout_point_accuracy", "heldout_instance_miou"):
        assert abs(scores[key] - recorded[key]) < 1e-9, (key, scores[key], recorded[key])
    assert scores["heldout_instance_miou"] >= MIN_MIOU, scores
    assert model.config.id2label[PART_OFFSET["table"] + 1] == "table/legs"


def test_synthetic_objects():
    points, categories, parts = make_shapes(3, 256, seed=5)
    assert points.shape == (24, 256, 3) and points.dtype == torch.float32
    assert categories.tolist() == list(range(8)) * 3
    assert torch.allclose(points.mean(1), torch.zeros(24, 3), atol=1e-6)
    assert torch.allclose(points.norm(dim=-1).amax(1), torch.ones(24))
    for b in range(24):  # every part of the category present, nothing else
        c = CATEGORIES[int(categories[b])]
        want = set(range(PART_OFFSET[c], PART_OFFSET[c] + len(PARTS[c])))
        assert set(parts[b].tolist()) == want
    assert len(PART_NAMES) == 17 and PART_NAMES[PART_OFFSET["cone"]] == "cone/base"
    again = make_shapes(3, 256, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(again, (points, categories, parts)))
    # points spread by area: a can's side holds 2 pi r h of its 2 pi r h + 2 pi r^2
    big = make_shapes(200, 256, seed=6)
    can = big[2][big[1] == 0]
    side = (can == PART_OFFSET["can"] + 2).float().mean().item()
    # E[h / (h + r)] over the radius and height ranges, about 0.74
    rs, hs = torch.linspace(0.3, 0.6, 301), torch.linspace(0.8, 1.6, 301)
    expected = (hs[None, :] / (hs[None, :] + rs[:, None])).mean().item()
    assert abs(side - expected) < 0.02, (side, expected)
    assert math.isclose(expected, 0.74, abs_tol=0.02)


def test_part_scores_by_hand():
    cat = torch.tensor([CATEGORIES.index("cone"), CATEGORIES.index("ring")])
    base, side, ring = PART_OFFSET["cone"], PART_OFFSET["cone"] + 1, PART_OFFSET["ring"]
    truth = torch.tensor([[base, base, side, side], [ring] * 4])
    logits = torch.zeros(2, 4, len(PART_NAMES))
    logits[0, torch.arange(4), torch.tensor([base, side, side, side])] = 1.0  # one base point called side
    logits[1, :, 0] = 5.0  # the can's top scores highest, but is not a ring part: the ring is taken
    scores = part_scores(logits, cat, truth)
    # cone: IoU(base) = 1/2, IoU(side) = 2/3; ring 1 -> mean of 7/12 and 1
    assert scores["heldout_instance_miou"] == pytest.approx((7 / 12 + 1) / 2)
    assert scores["heldout_point_accuracy"] == pytest.approx(7 / 8)
