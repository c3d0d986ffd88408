"""Reference backend: plain token loops, the oracle for every other backend.

Written for readability, not speed. Every loop runs in the dtype it is given
(float32 or float64); the dispatcher in ``rwkv_hf.ops`` validates inputs,
upcasts and always passes an initial state. Gradients come from autograd.
(Tokens are taken with ``unbind`` rather than ``x[:, t]``: the backward of T
slices would write T full-size gradients, quadratic in T.)

The math of each op is documented in ``rwkv_hf.ops``; this file is that
documentation in code.
"""
import torch


def _v4_step(aa, bb, pp, kt, vt, w):
    """Add token (kt, vt) to a log-scaled accumulator decayed by e^w per step."""
    ww = w + pp
    p = torch.maximum(ww, kt)
    e1 = torch.exp(ww - p)
    e2 = torch.exp(kt - p)
    return e1 * aa + e2 * vt, e1 * bb + e2, p


def _v4_scan(k, v, w, state):
    """Causal v4 accumulators seen by each token (before it is added), and the final one.

    Returns (aa, bb, pp) each [B, T, C] and the final state [B, 3, C].
    """
    aa, bb, pp = state.unbind(1)
    seen = []
    for kt, vt in zip(k.unbind(1), v.unbind(1)):
        seen.append((aa, bb, pp))
        aa, bb, pp = _v4_step(aa, bb, pp, kt, vt, w)
    aas, bbs, pps = (torch.stack(x, 1) for x in zip(*seen))
    return aas, bbs, pps, torch.stack([aa, bb, pp], 1)


def wkv4(k, v, w, u, state):
    aa, bb, pp, final = _v4_scan(k, v, w, state)
    ww = u + k
    p = torch.maximum(pp, ww)
    e1 = torch.exp(pp - p)
    e2 = torch.exp(ww - p)
    y = (e1 * aa + e2 * v) / (e1 * bb + e2)
    return y, final


def bi_wkv4(k, v, w, u, state):
    # Past: the causal accumulator. Future: the same scan over the flipped sequence.
    pa, pb, pp, left_to_right = _v4_scan(k, v, w, state[:, 0])
    fa, fb, fp, right_to_left = _v4_scan(k.flip(1), v.flip(1), w, state[:, 1])
    fa, fb, fp = fa.flip(1), fb.flip(1), fp.flip(1)
    cur = u + k
    m = torch.maximum(torch.maximum(pp, fp), cur)
    ep, ef, ec = torch.exp(pp - m), torch.exp(fp - m), torch.exp(cur - m)
    y = (ep * pa + ef * fa + ec * v) / (ep * pb + ef * fb + ec)
    return y, torch.stack([left_to_right, right_to_left], 1)


def wkv6(r, k, v, w, u, state):
    S = state
    ys = []
    for rt, kt, vt, wt in zip(r.unbind(1), k.unbind(1), v.unbind(1), w.unbind(1)):
        kv = kt[..., :, None] * vt[..., None, :]  # [B, H, K, V]
        ys.append((rt.unsqueeze(-2) @ (S + u[None, :, :, None] * kv)).squeeze(-2))  # r^T (S + diag(u) k v^T)
        S = torch.exp(wt)[..., None] * S + kv
    return torch.stack(ys, 1), S


def wkv7(r, k, v, w, a, b, state):
    S = state
    ys = []
    for rt, kt, vt, wt, at, bt in zip(*(x.unbind(1) for x in (r, k, v, w, a, b))):
        sa = at.unsqueeze(-2) @ S  # a^T S, read from the old state: [B, H, 1, V]
        S = torch.exp(wt)[..., None] * S + bt[..., :, None] @ sa + kt[..., :, None] * vt[..., None, :]
        ys.append((rt.unsqueeze(-2) @ S).squeeze(-2))  # output reads the new state
    return torch.stack(ys, 1), S


def point_wkv(r, k, v, w, u, state):
    def scan(ks, vs, ws, S):  # A_t = S_{t-1} k_t: the state read before the token, over its value index
        out = []
        for kt, vt, wt in zip(ks, vs, ws):
            out.append((S @ kt[..., None]).squeeze(-1))
            S = torch.exp(wt)[..., None] * S + kt[..., :, None] * vt[..., None, :]
        return out, S

    ks, vs, ws = k.unbind(1), v.unbind(1), w.unbind(1)
    fwd, s_fwd = scan(ks, vs, ws, state[:, 0])
    bwd, s_bwd = scan(ks[::-1], vs[::-1], ws[::-1], state[:, 1])
    bonus = u * k * v.sum(-1, keepdim=True)  # diag(u) k_t (1^T v_t)
    return r * (torch.stack(fwd, 1) + torch.stack(bwd[::-1], 1) + bonus), torch.stack([s_fwd, s_bwd], 1)


def farthest_point_sample(points, n):
    """Point 0, then n - 1 times the point farthest from those taken (the first on ties). Also
    the torch backend's form: its n - 1 steps are small tensor ops on any device."""
    B, N, _ = points.shape
    idx = points.new_zeros(B, n, dtype=torch.long)
    nearest = points.new_full((B, N), float("inf"))  # squared distance to the nearest taken point
    last = points[:, 0]
    rows = torch.arange(B, device=points.device)
    for i in range(1, n):
        nearest = torch.minimum(nearest, (points - last[:, None]).pow(2).sum(-1))
        idx[:, i] = nearest.argmax(-1)
        last = points[rows, idx[:, i]]
    return idx
