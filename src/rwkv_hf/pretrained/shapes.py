"""Synthetic point clouds of simple objects with named parts, for the tiny PointRWKV models
(``examples/train_tiny_pointrwkv.py``): a small stand-in for ModelNet (classification) and
ShapeNetPart (part segmentation) that needs no download.

Eight object categories made of primitive surfaces, each surface a part (17 parts in all,
numbered across the categories as ShapeNetPart numbers its 50), points spread uniformly by
area::

    can        top, bottom, side              (a cylinder)
    cone       base, side
    box        top, bottom, side
    bowl       dome, rim disk                 (a hemisphere on its flat face)
    table      top, legs                      (a thin box on four thin cylinders)
    mushroom   cap, stem                      (a hemisphere on a cylinder)
    ring       ring                           (a torus)
    snowman    head, body                     (a small sphere on a large one)

Every object gets random proportions, a random turn about the vertical axis (objects stay
upright, as ShapeNetPart's are aligned), a random scale per axis (0.85 to 1.15), Gaussian
jitter (0.01), and is centred on its centroid and scaled into the unit ball. Deterministic for
a seed: :func:`make_shapes`.
"""
import math

import torch

CATEGORIES = ("can", "cone", "box", "bowl", "table", "mushroom", "ring", "snowman")
PARTS = {"can": ("top", "bottom", "side"), "cone": ("base", "side"), "box": ("top", "bottom", "side"),
         "bowl": ("dome", "rim"), "table": ("top", "legs"), "mushroom": ("cap", "stem"), "ring": ("ring",),
         "snowman": ("head", "body")}
# global part ids: the categories' parts in order
PART_NAMES = tuple(f"{c}/{p}" for c in CATEGORIES for p in PARTS[c])
PART_OFFSET = {c: PART_NAMES.index(f"{c}/{PARTS[c][0]}") for c in CATEGORIES}  # each category's first part


# ---------------------------------------------------------------------------- surfaces
# Each returns (points [n, 3], area) for n points drawn with generator g.

def _u(g, *shape):
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def _disk(g, n, r, z):
    rad, ang = r * _u(g, n).sqrt(), 2 * math.pi * _u(g, n)
    return torch.stack([rad * ang.cos(), rad * ang.sin(), torch.full((n,), z, dtype=torch.float64)], 1)


def _tube(g, n, r, z0, z1):
    ang = 2 * math.pi * _u(g, n)
    return torch.stack([r * ang.cos(), r * ang.sin(), z0 + (z1 - z0) * _u(g, n)], 1)


def _cone_side(g, n, r, z0, h):  # apex at z0 + h; radius grows linearly towards the base
    t, ang = _u(g, n).sqrt(), 2 * math.pi * _u(g, n)  # density ~ radius: uniform by area
    return torch.stack([r * t * ang.cos(), r * t * ang.sin(), z0 + h * (1 - t)], 1)


def _sphere(g, n, r, center=(0.0, 0.0, 0.0), upper_only=False):
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    if upper_only:
        v[:, 2] = v[:, 2].abs()
    return r * v + torch.tensor(center, dtype=torch.float64)


def _box_faces(g, n, a, b, c, z0, which):
    """Points on the faces of the box [-a, a] x [-b, b] x [z0, z0 + 2c]: which = "top",
    "bottom" or "side" (the four vertical faces, by area)."""
    if which in ("top", "bottom"):
        z = z0 + 2 * c if which == "top" else z0
        return torch.stack([(2 * _u(g, n) - 1) * a, (2 * _u(g, n) - 1) * b, torch.full((n,), z, dtype=torch.float64)], 1)
    face = (_u(g, n) * (2 * a + 2 * b)) < 2 * b  # x faces (area ~ b) against y faces (area ~ a)
    s, t, sign = 2 * _u(g, n) - 1, z0 + 2 * c * _u(g, n), torch.where(_u(g, n) < 0.5, -1.0, 1.0)
    x = torch.where(face, sign * a, s * a)
    y = torch.where(face, s * b, sign * b)
    return torch.stack([x, y, t], 1)


def _torus(g, n, R, r):
    out = torch.empty(0, 3, dtype=torch.float64)
    while len(out) < n:  # rejection: area density ~ R + r cos(v)
        u, v, keep = 2 * math.pi * _u(g, 2 * n), 2 * math.pi * _u(g, 2 * n), _u(g, 2 * n)
        ok = keep < (R + r * v.cos()) / (R + r)
        u, v = u[ok], v[ok]
        ring = R + r * v.cos()
        out = torch.cat([out, torch.stack([ring * u.cos(), ring * u.sin(), r * v.sin()], 1)])
    return out[:n]


def _object(g, category):
    """[(sampler(n) -> points, area)] of one object's parts, in PARTS order, random proportions."""
    r = lambda lo, hi: lo + (hi - lo) * float(_u(g, 1))  # noqa: E731
    if category == "can":
        rad, h = r(0.3, 0.6), r(0.8, 1.6)
        return [(lambda n: _disk(g, n, rad, h), math.pi * rad ** 2), (lambda n: _disk(g, n, rad, 0.0), math.pi * rad ** 2),
                (lambda n: _tube(g, n, rad, 0.0, h), 2 * math.pi * rad * h)]
    if category == "cone":
        rad, h = r(0.4, 0.8), r(0.8, 1.6)
        return [(lambda n: _disk(g, n, rad, 0.0), math.pi * rad ** 2),
                (lambda n: _cone_side(g, n, rad, 0.0, h), math.pi * rad * math.hypot(rad, h))]
    if category == "box":
        a, b, c = r(0.3, 0.8), r(0.3, 0.8), r(0.2, 0.6)
        return [(lambda n: _box_faces(g, n, a, b, c, 0.0, "top"), 4 * a * b),
                (lambda n: _box_faces(g, n, a, b, c, 0.0, "bottom"), 4 * a * b),
                (lambda n: _box_faces(g, n, a, b, c, 0.0, "side"), 8 * c * (a + b))]
    if category == "bowl":
        rad = r(0.6, 1.0)
        return [(lambda n: _sphere(g, n, rad, upper_only=True), 2 * math.pi * rad ** 2),
                (lambda n: _disk(g, n, rad, 0.0), math.pi * rad ** 2)]
    if category == "table":
        a, b, h, leg = r(0.6, 1.0), r(0.4, 0.8), r(0.6, 1.0), r(0.04, 0.08)
        top = (lambda n: torch.cat([_box_faces(g, n - n // 2, a, b, 0.03, h, "top"),
                                    _box_faces(g, n // 2, a, b, 0.03, h, "bottom")]), 8 * a * b)

        def legs(n):
            pts = _tube(g, n, leg, 0.0, h)
            corner = torch.randint(0, 4, (n,), generator=g)
            pts[:, 0] += torch.where(corner % 2 == 0, -1.0, 1.0) * (a - 2 * leg)
            pts[:, 1] += torch.where(corner < 2, -1.0, 1.0) * (b - 2 * leg)
            return pts
        return [top, (legs, 4 * 2 * math.pi * leg * h)]
    if category == "mushroom":
        cap, stem, h = r(0.5, 0.9), r(0.1, 0.2), r(0.5, 1.0)
        return [(lambda n: _sphere(g, n, cap, (0.0, 0.0, h), upper_only=True), 2 * math.pi * cap ** 2),
                (lambda n: _tube(g, n, stem, 0.0, h), 2 * math.pi * stem * h)]
    if category == "ring":
        R, rr = r(0.6, 0.9), r(0.1, 0.3)
        return [(lambda n: _torus(g, n, R, rr), 4 * math.pi ** 2 * R * rr)]
    if category == "snowman":
        body, head = r(0.5, 0.7), r(0.25, 0.4)
        return [(lambda n: _sphere(g, n, head, (0.0, 0.0, 2 * body + head * 0.9)), 4 * math.pi * head ** 2),
                (lambda n: _sphere(g, n, body, (0.0, 0.0, body)), 4 * math.pi * body ** 2)]
    raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


def make_shapes(per_category, num_points, seed):
    """(points [M, num_points, 3] float32, categories [M], part labels [M, num_points] (global part
    ids, :data:`PART_NAMES`)), M = 8 per_category, the categories in turn. Deterministic for a
    seed."""
    g = torch.Generator().manual_seed(seed)
    clouds, cats, parts = [], [], []
    for _ in range(per_category):
        for ci, category in enumerate(CATEGORIES):
            surfaces = _object(g, category)
            areas = torch.tensor([a for _, a in surfaces], dtype=torch.float64)
            # points per part by area (at least one each), summing to num_points
            counts = torch.multinomial(areas / areas.sum(), num_points - len(surfaces), replacement=True,
                                       generator=g).bincount(minlength=len(surfaces)) + 1
            pts = torch.cat([sample(int(c)) for (sample, _), c in zip(surfaces, counts)])
            labels = torch.cat([torch.full((int(c),), PART_OFFSET[category] + j) for j, c in enumerate(counts)])
            turn = 2 * math.pi * float(_u(g, 1))
            rot = torch.tensor([[math.cos(turn), -math.sin(turn), 0.0], [math.sin(turn), math.cos(turn), 0.0],
                                [0.0, 0.0, 1.0]], dtype=torch.float64)
            pts = pts @ rot.T * (0.85 + 0.3 * _u(g, 3)) + 0.01 * torch.randn(num_points, 3, generator=g,
                                                                                 dtype=torch.float64)
            pts = pts - pts.mean(0)
            pts = pts / pts.norm(dim=1).max()
            order = torch.randperm(num_points, generator=g)  # no part order in the point order
            clouds.append(pts[order].float())
            parts.append(labels[order])
            cats.append(ci)
    return torch.stack(clouds), torch.tensor(cats), torch.stack(parts)


def part_scores(logits, categories, parts):
    """ShapeNetPart's metrics of part logits [M, N, 17] for clouds of ``categories`` [M] with
    true ``parts`` [M, N]: each point's prediction taken among its category's parts; the point
    accuracy and the instance mIoU (each cloud's IoU averaged over its category's parts, a part
    absent from both prediction and truth counting 1, then averaged over the clouds; the ring's
    one part always scores 1)."""
    allowed = torch.full((len(CATEGORIES), len(PART_NAMES)), float("-inf"))
    for ci, c in enumerate(CATEGORIES):
        allowed[ci, PART_OFFSET[c]:PART_OFFSET[c] + len(PARTS[c])] = 0
    pred = (logits.float() + allowed[categories][:, None, :]).argmax(-1)
    ious = []
    for b in range(len(pred)):
        c = CATEGORIES[int(categories[b])]
        per_part = []
        for j in range(PART_OFFSET[c], PART_OFFSET[c] + len(PARTS[c])):
            p, t = pred[b] == j, parts[b] == j
            union = int((p | t).sum())
            per_part.append(1.0 if union == 0 else int((p & t).sum()) / union)
        ious.append(sum(per_part) / len(per_part))
    return {"heldout_point_accuracy": (pred == parts).float().mean().item(),
            "heldout_instance_miou": sum(ious) / len(ious)}
