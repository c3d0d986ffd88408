"""Random inputs in the value ranges real RWKV models produce, for tests and benchmarks.

``make_inputs(op, ...)`` returns the keyword arguments of ``rwkv_hf.ops.<op>``
(including ``state`` when asked). Decays follow each model family's
parameterisation so that long sequences behave as they do in trained models.
"""
import torch
import torch.nn.functional as F

OPS = ("wkv4", "bi_wkv4", "wkv5", "wkv6", "bi_wkv6", "wkv7", "point_wkv")


def make_inputs(op, B=1, T=64, H=2, N=16, *, dtype=torch.float32, device="cpu", state=False,
                seed=0, strong_decay=False):
    """Random inputs for ``op``. Per-channel ops use C = H * N.

    ``strong_decay`` mixes in decays far stronger than trained models use
    (factors down to about exp(-150) per step) to probe numerical stability.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift

    C = H * N
    if op in ("wkv4", "bi_wkv4"):
        k, v = rand(B, T, C, scale=2.0), rand(B, T, C)
        if op == "wkv4":  # time_decay of trained RWKV-4 spans roughly [-5, 5]
            w = -torch.exp(rand(C, scale=1.5 if not strong_decay else 2.5))
            u = rand(C, scale=0.5)
        else:  # Vision-RWKV: w = -spatial_decay / T, u = spatial_first / T
            w = -(torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) * (1 if not strong_decay else 30) / T
            u = rand(C, scale=0.5, shift=-1.2) / T
        out = dict(k=k, v=v, w=w, u=u)
        if state:
            den = torch.rand(B, C, generator=g, dtype=torch.float64) + 0.1
            num = rand(B, C) * den
            logscale = rand(B, C)
            one = torch.stack([num, den, logscale], 1)
            out["state"] = one if op == "wkv4" else torch.stack([one, torch.roll(one, 1, -1)], 1)
    else:
        r, k, v = rand(B, T, H, N, scale=0.5), rand(B, T, H, N, scale=0.5), rand(B, T, H, N)
        if op == "wkv5":
            w = -torch.exp(rand(H, N, shift=-1.0))
        elif op in ("wkv6", "bi_wkv6"):
            w = -torch.exp(rand(B, T, H, N, scale=0.7, shift=-1.5))
        elif op == "point_wkv":  # PointRWKV: w = -exp(lambda + tanh(.) B), lambda and B near 0 at init
            w = -torch.exp(rand(B, T, H, N, scale=0.7, shift=-0.5))
        else:
            w = -0.6065306597126334 * torch.sigmoid(rand(B, T, H, N, scale=2.0))
        if strong_decay:
            w = torch.where(torch.rand(w.shape, generator=g, dtype=torch.float64) < 0.2,
                            -torch.exp(rand(*w.shape, scale=1.0, shift=3.0)), w)
        out = dict(r=r, k=k, v=v, w=w)
        if op == "wkv7":
            kk = F.normalize(rand(B, T, H, N), dim=-1)
            out["a"] = -kk
            out["b"] = kk * torch.sigmoid(rand(B, T, H, N))
        else:
            out["u"] = rand(H, N, scale=0.5)
        if state:
            shape = (B, 2, H, N, N) if op in ("bi_wkv6", "point_wkv") else (B, H, N, N)
            out["state"] = rand(*shape, scale=0.5)
    # States are kept in float32 (float64 for float64 runs), as models hold them.
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return {name: x.to(device=device, dtype=state_dtype if name == "state" else dtype)
            for name, x in out.items()}


def make_clouds(B, N, seed, dtype=torch.float32):
    """Random point clouds [B, N, 3] for ``rwkv_hf.ops.farthest_point_sample``: Gaussian, each cloud
    stretched per axis by a random factor up to 5."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, 3, generator=g, dtype=torch.float64)
            * torch.rand(B, 1, 3, generator=g, dtype=torch.float64) * 5).to(dtype)


def rounding_ties(count=64, seed=0):
    """float32 clouds [count, 3, 3] that tell a farthest point sampling computed with the torch
    form's roundings from one with fused multiply-adds: each is the origin, then two points whose
    squared distances to it, (x*x + y*y) + z*z with every operation rounded, are equal, though
    the second's exact distance is larger. Sampling 2 points picks point 1 (the first of the
    tie); with the distance contracted into fused multiply-adds (closer to exact) often point 2."""
    g = torch.Generator().manual_seed(seed)
    # 2^17 candidates with 14-bit coordinates: each square needs rounding, and equal rounded sums
    # are common (some 2^25 float32 values in their range).
    c = ((torch.rand(1 << 17, 3, generator=g, dtype=torch.float64) + 0.5) * 2 ** 14).round() / 2 ** 14
    x = c.float()
    rounded = (x[:, 0] * x[:, 0] + x[:, 1] * x[:, 1]) + x[:, 2] * x[:, 2]
    exact = c.pow(2).sum(1)  # exact in float64 (28-bit squares)
    order = torch.argsort(exact)  # then stably by the rounded sum: equal ones adjacent, exact ascending
    order = order[torch.sort(rounded[order], stable=True).indices]
    r, e = rounded[order], exact[order]
    pairs = torch.nonzero((r[1:] == r[:-1]) & (e[1:] > e[:-1])).flatten()
    pairs = pairs[torch.randperm(len(pairs), generator=g)[:count]]
    if len(pairs) < count:
        raise ValueError(f"rounding_ties: found {len(pairs)} pairs, asked for {count}")
    a, b = x[order[pairs]], x[order[pairs + 1]]
    return torch.stack([torch.zeros_like(a), a, b], 1)
