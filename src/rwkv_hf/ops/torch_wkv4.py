"""Chunked-parallel pure-PyTorch RWKV-4 WKV (causal) and Bi-WKV (Vision-RWKV), per channel.

Self-contained (imports only torch) so it can be copied flat into Hub remote-code folders.

Layout
------
``k, v: [B, T, C]``; ``w, u: [C]``; ``w`` is the log of the per-step decay factor.
A state is ``(num, den, logscale)`` stacked on dim 1: the accumulators are
``num * exp(logscale)`` and ``den * exp(logscale)``; the empty state is ``(0, 0, -1e38)``.
``wkv4`` takes/returns ``[B, 3, C]``; ``bi_wkv4`` takes/returns ``[B, 2, 3, C]`` where
``[:, 0]`` enters from the left and leaves after the last token, ``[:, 1]`` enters from
the right and leaves before the first token. Inputs and outputs share one dtype
(float32 or float64).

Math
----
``wkv4``:    ``y_t = (N_t + e^{u+k_t} v_t) / (D_t + e^{u+k_t})``,
             ``N_t = sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{t w} A``  (``A`` = incoming num
             accumulator; ``D_t`` the same with ``v = 1``).
``bi_wkv4``: ``y_t = (sum_{i!=t} e^{(|t-i|-1) w + k_i} v_i + e^{u+k_t} v_t) / (same, v=1)``,
             plus ``e^{t w} A_left + e^{(T-1-t) w} A_right``.
The returned logscale equals the token loop's ``pp``, i.e. the largest exponent that
contributes to the accumulator (``max(T w + logscale_in, max_t (T-1-t) w + k_t)``; the
right-to-left one uses ``t w``), so the triple matches the loop's to rounding.

Algorithm
---------
Both ops are linear in ``(e^{k} v, e^{k})`` once every exponential is measured from one
reference ``ref = max_t k_t`` per (batch, channel) (raised to an incoming state's magnitude
if that is larger). With that reference every input is ``<= 1`` and every decay weight is
``<= 1`` (for ``w <= 0``), so nothing overflows; whatever underflows is negligible as long as
each denominator keeps a term not far below the reference. A cheap range check
(``min_t(u + k_t) - ref`` and the growth ``T * max(w, 0)``) guarantees that; inputs failing it
in float32 are recomputed in float64, and the (pathological) inputs that fail even there
use a stable token loop. Then, with time made the innermost axis ([B, C, 2, T']):

1. the incoming states become "virtual tokens" just outside the sequence (a token at
   position -1 contributes exactly ``e^{t w} A`` to position ``t``; one at ``T`` gives
   ``e^{(T-1-t) w} A`` in the bidirectional op), the sequence is zero-padded in front to
   ``N`` chunks of ``L``;
2. one batched matmul per channel with an ``[L, L + r]`` matrix of decay weights gives every
   in-chunk sum (diagonal ``e^u``) plus ``r`` chunk summaries (``sum_i e^{(L-1-i) w} x_i``,
   and ``sum_i e^{i w} x_i`` for the right-to-left direction);
3. the summaries are scanned across chunks (same scheme one level up, decay ``e^{L w}``)
   and the resulting carries are added as ``e^{j w} carry`` (``e^{(L-1-j) w}`` from the right);
4. ``y = num / den`` and the final accumulators are rescaled to the loop's logscale.
Everything is ordinary autograd (gradients reach k, v, w, u and the state); the
references are constants (they cancel exactly), so they are computed without grad.
"""
import math

import torch

# Token chunk length (a power of two; tests may lower it to exercise many chunks).
CHUNK = 32
# Chunk length of the chunk-level scan (applied recursively).
SCAN_CHUNK = 16
# Time block (in chunks) used when changing layout [B, T, C] <-> [B, C, T]: big enough to
# amortise Python overhead, small enough to stay in cache.
BLOCK_CHUNKS = 4
# Largest tolerated spread (in e-folds) of exponents around the reference: below it every
# dropped (underflowed) term is < 1e-7 (float32) / 1e-16 (float64) of the denominator.
RANGE = {torch.float32: 55.0, torch.float64: 600.0}

_EMPTY = -1e38


# ------------------------------------------------------------------------------- helpers

def _state_log(s):
    """log of a state's den accumulator (-inf when empty); no grad, used for references."""
    num, den, p = s.unbind(1)
    pos = den > 0
    return torch.where(pos, p + torch.log(torch.where(pos, den, torch.ones_like(den))),
                       torch.full_like(den, -math.inf))


def _virtual(s, ref):
    """A state as a token relative to ``ref``: [B, 2, C] = (num, den) * exp(logscale - ref).

    Computed as den_rel = exp(logscale + log(den) - ref) <= 1 so nothing overflows even when
    logscale alone is far above ref; empty/zero states give exact zeros with finite grads.
    """
    num, den, p = s.unbind(1)
    pos = den > 0
    den_safe = torch.where(pos, den, torch.ones_like(den))
    lg = torch.where(pos, p + torch.log(den_safe) - ref, torch.full_like(den, -math.inf))
    den_rel = torch.exp(lg)
    return torch.stack([num / den_safe * den_rel, den_rel], 1)


def _scan_weights(loga, n):
    """[C, n, n+1]: column j<n = e^{(j-1-i) loga} for i<j (exclusive causal sum), column n =
    e^{(n-1-i) loga} (the sum after the last element)."""
    i = torch.arange(n, device=loga.device)
    d = i[None, :] - i[:, None]
    main = torch.where(d > 0, torch.exp(loga[:, None, None] * (d - 1).clamp_min(0).to(loga.dtype)),
                       torch.zeros((), dtype=loga.dtype, device=loga.device))
    tail = torch.exp(loga[:, None] * (n - 1 - i).to(loga.dtype))
    return torch.cat([main, tail[..., None]], -1)


def _chunk_scan(Z, loga):
    """Exclusive decayed prefix sums along the last axis.

    Z: [B, C, S, N], loga: [C] (log decay per element). Returns (ex, total) with
    ex[..., n] = sum_{m<n} e^{(n-1-m) loga} Z[..., m] and total = sum_m e^{(N-1-m) loga} Z[..., m].
    Same chunked matmul scheme as the token level, recursively (log_{SCAN_CHUNK} N levels).
    """
    B, C, S, N = Z.shape
    L2 = max(2, SCAN_CHUNK)
    if N <= L2:
        out = Z @ _scan_weights(loga, N)
        return out[..., :N], out[..., N]
    n2 = -(-N // L2)
    pad = n2 * L2 - N
    if pad:  # leading zeros change no sum
        Z = torch.nn.functional.pad(Z, (pad, 0))
    out = Z.reshape(B, C, S * n2, L2) @ _scan_weights(loga, L2)  # [B, C, S*n2, L2+1]
    summ = out[..., L2].clone().view(B, C, S, n2)  # clone: `out` is updated in place below
    carry, total = _chunk_scan(summ, loga * L2)
    main = out[..., :L2]
    j = torch.arange(L2, device=Z.device, dtype=Z.dtype)
    main.addcmul_(carry.reshape(B, C, S * n2, 1), torch.exp(loga[:, None, None] * j))
    return main.reshape(B, C, S, n2 * L2)[..., pad:], total


def _token_weights(w, u, L, bidir):
    """[C, L, L + r]: entry [c, i, j] = weight of in-chunk input i in output j (diagonal e^u),
    then the chunk summaries e^{(L-1-i) w} (and e^{i w} when bidirectional)."""
    dt = w.dtype
    i = torch.arange(L, device=w.device)
    d = i[None, :] - i[:, None]  # j - i
    off = d != 0 if bidir else d > 0
    expo = (d.abs() - 1 if bidir else d - 1).clamp_min(0).to(dt)
    main = torch.where(off, torch.exp(w[:, None, None] * expo), torch.zeros((), dtype=dt, device=w.device))
    main = main + torch.diag_embed(torch.exp(u)[:, None].expand(-1, L))
    cols = [torch.exp(w[:, None] * (L - 1 - i).to(dt))]
    if bidir:
        cols.append(torch.exp(w[:, None] * i.to(dt)))
    return torch.cat([main] + [c[..., None] for c in cols], -1)


def _loop_logscale(k, w, p_in, reverse):
    """The token loop's final logscale: max(T w + p_in, max_t (T-1-t) w + k_t) (t w if reverse)."""
    T = k.shape[1]
    t = torch.arange(T, device=k.device, dtype=k.dtype)
    steps = t if reverse else (T - 1 - t)
    return torch.maximum(p_in + T * w, (k + steps[:, None] * w).amax(1))


def _finish_state(acc, ref, pp):
    """acc: [B, 2, C] relative to ref -> (num, den, logscale) with the loop's logscale."""
    scale = torch.exp(ref - pp)
    return torch.stack([acc[:, 0] * scale, acc[:, 1] * scale, pp], 1)


# ------------------------------------------------------------------------------- fast path

def _core(k, v, w, u, sl, sr, rng):
    """Chunked evaluation; returns (y, final_state) or None when the range check fails."""
    bidir = sr is not None
    B, T, C = k.shape
    dev, dt = k.device, k.dtype
    states = [sl, sr] if bidir else [sl]
    with torch.no_grad():
        ref = k.amax(1)
        slogs = [_state_log(s) for s in states]
        for sg in slogs:
            ref = torch.maximum(ref, sg)
        # Every denominator keeps its own current term e^{u + k_t - ref} (or, alternatively,
        # an incoming state that stays above it over the whole segment).
        lo = k.amin(1) - ref + u.clamp(max=0)
        for sg in slogs:
            lo = torch.maximum(lo, sg - ref + (T + 1) * w.clamp(max=0))
        hi = u.clamp(min=0) + (T + 2 * CHUNK) * w.clamp(min=0)
        if bool(lo.min() < -rng) or bool(hi.max() > rng):
            return None

    L = CHUNK
    while L > 4 and L // 2 >= T + 1 + bidir:  # short sequences: smaller chunks
        L //= 2
    N = -(-(T + 1 + bidir) // L)
    P0 = N * L - T - bidir  # >= 1: the left virtual token sits at P0 - 1

    # ---- inputs as [B, C, 2, N*L] (num row, den row), time innermost.
    refb = ref[:, None, :]
    e = torch.exp(k - refb)
    ev = e * v
    pieces = []
    if P0 > 1:
        pieces.append(torch.zeros(B, C, 2, P0 - 1, device=dev, dtype=dt))
    pieces.append(_virtual(sl, ref).transpose(1, 2)[..., None])
    bs = BLOCK_CHUNKS * L
    for eb, evb in zip(e.split(bs, 1), ev.split(bs, 1)):  # blocked transpose: cache friendly
        pieces.append(torch.stack([evb, eb], 2).permute(0, 3, 2, 1))
    if bidir:
        pieces.append(_virtual(sr, ref).transpose(1, 2)[..., None])
    X = torch.cat(pieces, -1)  # [B, C, 2, N*L]

    # ---- in-chunk sums and chunk summaries: one batched matmul per channel.
    Dt = _token_weights(w, u, L, bidir)
    Qf = X.view(B, C, 2 * N, L) @ Dt  # [B, C, 2N, L + r]
    j = torch.arange(L, device=dev, dtype=dt)
    loga = w * L
    if bidir:
        zl = Qf[..., L].clone().view(B, C, 2, N)
        zr = Qf[..., L + 1].clone().view(B, C, 2, N)
        ex, _ = _chunk_scan(torch.cat([zl, zr.flip(-1)], 2), loga)
        cl, cr = ex[:, :, :2], ex[:, :, 2:].flip(-1)
    else:
        zl = Qf[..., L].clone().view(B, C, 2, N)
        cl, acc_l = _chunk_scan(zl, loga)
    Qm = Qf[..., :L]  # in-place updates are safe: matmul saved its inputs, not its output
    Qm.addcmul_(cl.reshape(B, C, 2 * N, 1), torch.exp(w[:, None, None] * j))
    if bidir:
        Qm.addcmul_(cr.reshape(B, C, 2 * N, 1), torch.exp(w[:, None, None] * (L - 1 - j)))

    # ---- y = num / den, back to [B, T, C] block by block (only real positions are divided,
    # so padding never produces 0/0, not even in the backward pass).
    Q5 = Qm.view(B, C, 2, N, L)
    nb = BLOCK_CHUNKS
    ys = []
    first = Q5[:, :, :, 0, P0:min(L, P0 + T)]
    if first.shape[-1]:
        ys.append(first[:, :, 0] / first[:, :, 1])
    last = N - 1 if bidir else N
    for n0 in range(1, last, nb):
        n1 = min(last, n0 + nb)
        ys.append((Q5[:, :, 0, n0:n1] / Q5[:, :, 1, n0:n1]).reshape(B, C, (n1 - n0) * L))
    if bidir and N > 1:
        ys.append(Q5[:, :, 0, N - 1, :L - 1] / Q5[:, :, 1, N - 1, :L - 1])
    y = torch.cat([yb.transpose(1, 2) for yb in ys], 1)

    # ---- final states with the loop's logscale
    if bidir:
        X5 = X.view(B, C, 2, N, L)
        # left-to-right after the last real token (position L-2 of the last chunk)
        wl = torch.exp(w[:, None] * (L - 2 - j[:L - 1]))  # [C, L-1]
        acc_l = (X5[:, :, :, N - 1, :L - 1] * wl[:, None]).sum(-1) + cl[:, :, :, N - 1] * torch.exp(w * (L - 1))[:, None]
        # right-to-left before the first real token (position P0 of chunk 0)
        wr = torch.exp(w[:, None] * (j[P0:] - P0))  # [C, L-P0]
        acc_r = (X5[:, :, :, 0, P0:] * wr[:, None]).sum(-1) + cr[:, :, :, 0] * torch.exp(w * (L - P0))[:, None]
        fl = _finish_state(acc_l.transpose(1, 2), ref, _loop_logscale(k, w, sl[:, 2], False))
        fr = _finish_state(acc_r.transpose(1, 2), ref, _loop_logscale(k, w, sr[:, 2], True))
        return y, torch.stack([fl, fr], 1)
    return y, _finish_state(acc_l.transpose(1, 2), ref, _loop_logscale(k, w, sl[:, 2], False))


# ------------------------------------------------------------------------------- fallback

def _loop_scan(k, v, w, s):
    """Log-max token loop (the reference recurrence); returns per-token (aa, bb, pp) seen
    before each token, each [B, T, C], and the final state."""
    aa, bb, pp = s.unbind(1)
    seen = []
    for t in range(k.shape[1]):
        seen.append((aa, bb, pp))
        kt, vt = k[:, t], v[:, t]
        ww = w + pp
        p = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - p), torch.exp(kt - p)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, p
    return [torch.stack(x, 1) for x in zip(*seen)], torch.stack([aa, bb, pp], 1)


def _loop(k, v, w, u, sl, sr):
    """Stable but sequential: for inputs whose exponents span more than float64 can hold."""
    (pa, pb, pp), fl = _loop_scan(k, v, w, sl)
    cur = u + k
    if sr is None:
        m = torch.maximum(pp, cur)
        e1, e2 = torch.exp(pp - m), torch.exp(cur - m)
        return (e1 * pa + e2 * v) / (e1 * pb + e2), fl
    (fa, fb, fp), fr = _loop_scan(k.flip(1), v.flip(1), w, sr)
    fa, fb, fp = fa.flip(1), fb.flip(1), fp.flip(1)
    m = torch.maximum(torch.maximum(pp, fp), cur)
    ep, ef, ec = torch.exp(pp - m), torch.exp(fp - m), torch.exp(cur - m)
    return (ep * pa + ef * fa + ec * v) / (ep * pb + ef * fb + ec), torch.stack([fl, fr], 1)


# ------------------------------------------------------------------------------- public

def _run(k, v, w, u, sl, sr):
    dt = k.dtype
    for cdt in ([dt] if dt == torch.float64 else [dt, torch.float64]):
        c = lambda x: None if x is None else x.to(cdt)  # noqa: E731
        out = _core(c(k), c(v), c(w), c(u), c(sl), c(sr), RANGE[cdt])
        if out is not None:
            return out[0].to(dt), _cast_state(out[1], dt)
    c = lambda x: None if x is None else x.to(torch.float64)  # noqa: E731
    y, s = _loop(c(k), c(v), c(w), c(u), c(sl), c(sr))
    return y.to(dt), _cast_state(s, dt)


def _cast_state(s, dt):
    """Cast a float64 state to dt; num/den absorb the rounding of the logscale (a logscale
    of a few hundred loses ~1e-5 relative when rounded to float32)."""
    if s.dtype == dt:
        return s
    p = s.select(-2, 2)
    p_dt = p.to(dt)
    scale = torch.exp(p - p_dt.to(s.dtype))
    return torch.stack([s.select(-2, 0) * scale, s.select(-2, 1) * scale, p], -2).to(dt)


def wkv4(k, v, w, u, state):
    """RWKV-4 WKV. k, v: [B, T, C]; w (log-decay <= 0), u: [C]; state [B, 3, C].
    Returns (y [B, T, C], final state [B, 3, C])."""
    return _run(k, v, w, u, state, None)


def bi_wkv4(k, v, w, u, state):
    """Bidirectional WKV (Vision-RWKV). k, v: [B, T, C]; w (log-decay, any sign), u: [C];
    state [B, 2, 3, C] (left-in, right-in). Returns (y, final state [B, 2, 3, C])."""
    return _run(k, v, w, u, state[:, 0], state[:, 1])
