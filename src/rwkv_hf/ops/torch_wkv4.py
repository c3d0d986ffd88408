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
(float32 or float64); inputs may be non-contiguous.

Math
----
``wkv4``:    ``y_t = (N_t + e^{u+k_t} v_t) / (D_t + e^{u+k_t})``,
             ``N_t = sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{t w} A``  (``A`` = incoming num
             accumulator; ``D_t`` the same with ``v = 1``).
``bi_wkv4``: ``y_t = (sum_{i!=t} e^{(|t-i|-1) w + k_i} v_i + e^{u+k_t} v_t) / (same, v=1)``,
             plus ``e^{t w} A_left + e^{(T-1-t) w} A_right``  (no epsilon).
Final states: left-to-right ``e^{T w} A_left + sum_t e^{(T-1-t) w + k_t} v_t``; right-to-left
``e^{T w} A_right + sum_t e^{t w + k_t} v_t``. The returned logscale equals the token loop's
``pp``: the largest contributing exponent, ``max(T w + logscale_in, max_t (T-1-t) w + k_t)``
(``t w`` from the right), so the triple matches the loop's to rounding.

Algorithm
---------
Both ops are linear in ``x_t = (e^{k_t} v_t, e^{k_t})`` once every exponential is measured
from a reference ``ref >= k_t`` per (batch, channel) (at least an incoming state's magnitude):
inputs are then ``<= 1``, decay weights ``e^{d w} <= 1`` (w <= 0), and what underflows is
negligible as long as each denominator keeps a term not far below ``ref``. A range check
(``min_t (u + k_t) - ref`` and the growth ``e^{T max(w, 0)}`` must fit the dtype's budget,
see ``_Range``) guarantees that; float32 inputs that fail it are computed in float64, and
the (pathological) inputs that fail even there use a stable token loop. Incoming states
become "virtual tokens" just outside the sequence (a token at position -1 contributes
exactly ``e^{t w} A`` to position ``t``; one at ``T`` gives ``e^{(T-1-t) w} A``), and the
sequence is zero-padded in front to ``N`` chunks of ``L = CHUNK`` positions.

One sweep over blocks of ``BLOCK`` tokens (``_Sweep``), in the input layout (no transposes):
  * in-chunk exclusive sums by the recurrence ``S_j = e^w S_{j-1} + x_{j-1}`` run over the L
    positions of all chunks of the block at once (L small ops of [B, chunks, 2, C]), and the
    chunk summaries;
  * carries between chunks by the same recurrence one level up (decay ``e^{L w}``; a
    log-depth doubling scan over the block's chunks), carried on from block to block;
  * ``y = (S + e^{j w} carry + e^u x)_num / (...)_den``.
Sequences of at most ``SHORT`` tokens (e.g. generation steps) use the exact log-max token
loop instead, which has less overhead there.
The bidirectional op runs the in-chunk recurrence from both sides; the carries from the
right need the blocks to the right first, so a pass (``_RightSums``) computes each block's
right-to-left summary beforehand. Causal references grow block by block (running max,
the carry rescaled by ``e^{ref_old - ref_new} <= 1``). Intermediates are recomputed in the
backward passes (written by hand, block by block, the recurrences run backwards), so
nothing of size [B, T, C] is stored or allocated besides ``y`` and the gradients; the
references are constants (they cancel exactly) and carry no gradient.
"""
import math

import torch

# The exact token loop (used for short and out-of-range inputs) is the reference's.
# A flat relative import, so remote-code bundles can copy both files side by side.
from . import reference

# Chunk length: each block costs ~CHUNK small ops for the in-chunk recurrence (vectorised
# over the block's BLOCK / CHUNK chunks) plus a few for the chunk carries and the outputs.
CHUNK = 16
# Tokens per block: the block's working set (a few [BLOCK, 2, C] buffers) stays in cache,
# and blocks are big enough to amortise the per-op dispatch overhead.
BLOCK = 256
# Sequences this short run the (exact, log-max) token loop, which is faster there (fewer
# ops than one block of the sweep); e.g. token-by-token generation.
SHORT = 16


class _Range:
    """Exponent budget of one dtype (in e-folds), chosen so that no denormal is ever formed
    (denormal arithmetic is ~10x slower on x86) and every dropped term is negligible:

    * inputs are exp(k - ref) in [e^{-lo}, 1] (range check: ``lo``), then multiplied by
      e^{shift} (after the exp, so exactly);
    * decay factors below e^{-theta} are flushed to 0: a dropped term is < e^{lo - theta} of
      the denominator's own current term, i.e. < 1e-8 (float32) / 1e-19 (float64) relative;
    * every product (decay factor x partial sum >= input) then stays normal:
      shift - lo - theta > log(smallest normal);
    * sums stay finite: shift + hi + log(T) < log(largest finite) (``hi`` bounds the growth
      e^{u} and e^{T w} for w > 0).
    """

    def __init__(self, lo, hi, theta, shift):
        self.lo, self.hi, self.theta, self.shift = lo, hi, theta, shift


RANGES = {torch.float32: _Range(lo=45.0, hi=40.0, theta=73.0, shift=33.0),
          torch.float64: _Range(lo=500.0, hi=340.0, theta=545.0, shift=345.0)}


# ------------------------------------------------------------------------------- helpers

def _fexp(x, theta):
    """exp(x), flushed to exactly 0 below e^{-theta} (keeps denormals out of the products;
    the clamp keeps them out of exp itself, where they are slow too)."""
    return torch.where(x >= -theta, torch.exp(x.clamp_min(-theta)), torch.zeros((), dtype=x.dtype, device=x.device))


def _state_log(s):
    """log of a state's den accumulator (-inf when empty); no grad, used for references."""
    num, den, p = s.unbind(1)
    pos = den > 0
    return torch.where(pos, p + torch.log(torch.where(pos, den, torch.ones_like(den))),
                       torch.full_like(den, -math.inf))


def _virtual(s, ref):
    """A state as a token relative to ``ref``: [B, 2, C] = (num, den) * exp(logscale - ref).

    Computed as den_rel = exp(logscale + log(den) - ref) so nothing overflows even when
    logscale alone is far above ref; empty/zero states give exact zeros with finite grads.
    """
    num, den, p = s.unbind(1)
    pos = den > 0
    den_safe = torch.where(pos, den, torch.ones_like(den))
    lg = torch.where(pos, p + torch.log(den_safe) - ref, torch.full_like(den, -math.inf))
    den_rel = torch.exp(lg)
    return torch.stack([num / den_safe * den_rel, den_rel], 1)


def _finish_state(acc, ref, pp, shift):
    """acc: [B, 2, C] relative to ref + shift -> (num, den, logscale), the loop's logscale."""
    scale = torch.exp(ref - pp) * math.exp(-shift)
    return torch.stack([acc[:, 0] * scale, acc[:, 1] * scale, pp], 1)


def _blocks(N, L, P0, T):
    """Blocks of whole chunks: (n0, n1, t0, t1, pf, pb) = chunks n0..n1-1 holding tokens
    t0..t1-1 after pf and before pb padding rows (padding: front of chunk 0, and in the
    bidirectional op the right virtual token's slot at the very end)."""
    nbc = max(1, BLOCK // L)
    out = []
    for n0 in range(0, N, nbc):
        n1 = min(N, n0 + nbc)
        t0, t1 = max(0, n0 * L - P0), max(0, min(T, n1 * L - P0))
        pf = max(0, P0 - n0 * L)
        out.append((n0, n1, t0, t1, pf, (n1 - n0) * L - pf - (t1 - t0)))
    return out


def _block_bufs(k, C, n=2):
    B = k.shape[0]
    rows = max(1, BLOCK // CHUNK) * CHUNK + CHUNK  # covers any block
    return [k.new_empty(B, rows, C) for _ in range(n)]


def _rescale(r_old, r_new):
    """e^{r_old - r_new} for references r_old <= r_new (0 where r_old = -inf)."""
    return torch.where(r_old > -math.inf, torch.exp(r_old - r_new), torch.zeros_like(r_old))


def _steps(lo, hi, like):
    return torch.arange(lo, hi, device=like.device, dtype=like.dtype)


def _logscale_backward(k, w, spans, lms, offs, g, gk):
    """Gradient of m = max_b (max_{t in block b} (k_t + d_t w) + off_b w) (the loop's final
    logscale, computed block-locally in the forward): 1 for k at the (first) argmax, added
    into gk, and the total step d_t + off_b for w. The argmax is found again with the forward's
    exact arithmetic. spans: per block (t0, t1, d) with d the local steps."""
    B, T, C = k.shape
    offs_t = torch.tensor(offs, device=k.device, dtype=k.dtype)
    win = (lms + offs_t[:, None, None] * w).argmax(0)  # [B, C]
    gw = torch.zeros_like(w)
    for b, (t0, t1, d) in enumerate(spans):
        if t1 <= t0:
            continue
        sel = win == b
        if not bool(sel.any()):
            continue
        s = torch.addcmul(k[:, t0:t1], d[:, None], w)
        idx = (s == lms[b][:, None, :]).to(torch.uint8).argmax(1)  # [B, C]
        gs = torch.where(sel, g, torch.zeros((), dtype=g.dtype, device=g.device))
        gk.scatter_add_(1, (idx + t0)[:, None, :], gs[:, None, :])
        gw += (gs * (d[idx] + offs[b])).sum(0)
    return gw


def _logscale_forward(lms, offs, w):
    offs_t = torch.tensor(offs, device=w.device, dtype=w.dtype)
    return (lms + offs_t[:, None, None] * w).amax(0)


# ------------------------------------------------------------------------------- right pass

class _RightSums(torch.autograd.Function):
    """Bidirectional op, pass 1: per block the right-to-left summary of its real tokens,
    ZR [B, 2, nblk, C] = sum_t e^{(p_t - anchor_b) w + k_t - M_b} (v_t, 1) with p_t the padded
    position, anchor_b the block start (block 0: the first real token) and M_b the block's
    max of k; also M [nblk, B, C], mR = max_t k_t + t w (the loop's right-to-left final
    logscale) and min_t k_t (M and min: no grad)."""

    @staticmethod
    def forward(ctx, k, v, w, theta, P0, N, L):
        B, T, C = k.shape
        blocks = _blocks(N, L, P0, T)
        ZR = k.new_zeros(B, 2, len(blocks), C)
        lms, offs, spans, kmins = [], [], [], []
        M = k.new_full((len(blocks), B, C), -math.inf)
        (buf,) = _block_bufs(k, C, 1)
        for b, (n0, n1, t0, t1, pf, pb) in enumerate(blocks):
            anchor = P0 if b == 0 else n0 * L
            d = _steps(P0 + t0 - anchor, P0 + t1 - anchor, k)
            spans.append((t0, t1, d))
            offs.append(float(anchor - P0))
            if t1 <= t0:
                lms.append(torch.full((B, C), -math.inf, dtype=k.dtype, device=k.device))
                continue
            kb = k[:, t0:t1]
            torch.amax(kb, 1, out=M[b])
            s = torch.addcmul(kb, d[:, None], w)
            lms.append(s.amax(1))
            kmins.append(kb.amin(1))
            er = torch.sub(s, M[b, :, None, :], out=buf[:, :t1 - t0]).clamp_min_(-theta).exp_()
            torch.sum(er, 1, out=ZR[:, 1, b])
            torch.sum(er.mul_(v[:, t0:t1]), 1, out=ZR[:, 0, b])
        lms = torch.stack(lms)
        ctx.save_for_backward(k, v, w, M, lms)
        ctx.meta = (theta, offs, spans)
        kmin = torch.stack(kmins).amin(0)
        ctx.mark_non_differentiable(M, kmin)
        return ZR, M, _logscale_forward(lms, offs, w), kmin

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gZR, _gM, gm, _gkmin):
        k, v, w, M, lms = ctx.saved_tensors
        theta, offs, spans = ctx.meta
        B, T, C = k.shape
        gk, gv = k.new_zeros(B, T, C), v.new_zeros(B, T, C)
        gw = torch.zeros_like(w)
        (buf,) = _block_bufs(k, C, 1)
        for b, (t0, t1, d) in enumerate(spans):
            if t1 <= t0:
                continue
            s = torch.addcmul(k[:, t0:t1], d[:, None], w)
            er = torch.sub(s, M[b, :, None, :], out=buf[:, :t1 - t0]).clamp_min_(-theta).exp_()
            gn, gd = gZR[:, 0, b, None, :], gZR[:, 1, b, None, :]
            torch.mul(er, gn, out=gv[:, t0:t1])
            g = torch.addcmul(gd, gn, v[:, t0:t1]).mul_(er)  # d ZR / d k_t
            gk[:, t0:t1] = g
            gw += (g * d[:, None]).sum((0, 1))
        gw += _logscale_backward(k, w, spans, lms, offs, gm, gk)
        return gk, gv, gw, None, None, None, None


# ------------------------------------------------------------------------------- sweep

class _Sweep(torch.autograd.Function):
    """Left to right over blocks of chunks, in the input layout. Each block gets its
    reference ref_b = max(ref_{b-1}, max of its k) (ref_{-1} = ``ref``, so the reference only
    grows and the left carry is rescaled by e^{ref_{b-1} - ref_b} <= 1 between blocks). Per
    block, with X [B, rows, 2, C] = e^{shift} (e v, e) (e = e^{k - ref_b}; virtual state
    tokens in their slots, zeros in padding), viewed as chunks [B, nb, L, 2, C]:

    * in-chunk exclusive sums by a sequential recurrence over the L positions, vectorised
      over all chunks, channels and both rows: SL_j = a SL_{j-1} + X_{j-1}, SL_0 = 0
      (a = e^w), and the chunk summary zl = a SL_{L-1} + X_{L-1}; bidirectional also from the
      right: SR_j = a SR_{j+1} + X_{j+1}, SR_{L-1} = 0, zr = a SR_0 + X_0;
    * carries between chunks (A = e^{L w}), a doubling scan over the block's chunks:
      c_0 = CL_in, c_{i+1} = A c_i + zl_i (chunk i gets c_i, the next block c_nb);
      bidirectional r_{nb-1} = CR, r_i = A r_{i+1} + zr_{i+1}, CR the right-to-left
      accumulator entering the block from its right end (from _RightSums);
    * Q_j = SL_j + a^j c + e^u X_j (+ SR_j + a^{L-1-j} r), y = Q_num / Q_den.
    Returns y, the final left-to-right accumulator (after the last real token) and its
    reference, the loop's logscale term mL = max_t k_t + (T-1-t) w, and min_t (k_t - ref_b)
    (no grad, for the range check)."""

    @staticmethod
    def forward(ctx, k, v, w, ref, xl, xr, a, A, eu, pw, CR, P0, N, L, shift):
        B, T, C = k.shape
        right = xr is not None
        blocks = _blocks(N, L, P0, T)
        y = k.new_empty(B, T, C)
        bufs = _sweep_bufs(k, L, 2 + right)
        cache = {}
        pw5 = pw[None, None, :, None, :]
        es = math.exp(shift)
        CL = k.new_zeros(B, 2, C)
        CLs, refs, lms, offs, spans, kmins = [], [], [], [], [], []
        steps = {}
        acc = None
        rb = ref
        Apows = _apows(A, max(1, BLOCK // L) + 1)
        for b, blk in enumerate(blocks):
            n0, n1, t0, t1, pf, pb = blk
            nb, rows = n1 - n0, (n1 - n0) * L
            if t1 > t0:
                kb = k[:, t0:t1]
                if not right:  # (bidirectional: ref is already the global maximum)
                    r_new = torch.maximum(rb, kb.amax(1))
                    CL = CL * torch.exp(rb - r_new)[:, None]  # <= 1
                    rb = r_new
            CLs.append(CL)
            refs.append(rb)
            vw = _Views.get(cache, bufs, nb, L)
            X5, SL5, SR5, c, cr = _Sweep._block(
                k, v, rb[:, None, :], xl, xr, a, Apows, CL, CR[:, b] if right else None, P0, N, L, es,
                blk, vw, ref)
            cl, CL_next = c[:, :nb], c[:, nb].clone()
            if right and n1 == N:  # state after the last real token: position L-2 of the last chunk
                acc = SL5[:, -1, L - 1] + pw[L - 1] * cl[:, -1]
            _Sweep._q(SL5, X5, SR5, cl, cr, eu, pw5)
            Q = vw.flat[1][:, pf:rows - pb]
            torch.div(Q[:, :, 0], Q[:, :, 1], out=y[:, t0:t1])
            if t1 - t0 not in steps:
                steps[t1 - t0] = _steps(0, t1 - t0, k).flip(0)
            d = steps[t1 - t0]  # local steps; T-1-t = d + (T - t1)
            spans.append((t0, t1, d))
            offs.append(float(T - t1))
            if t1 > t0:
                lms.append(torch.addcmul(kb, d[:, None], w).amax(1))
                if not right:
                    kmins.append(kb.amin(1) - rb)
            else:
                lms.append(torch.full((B, C), -math.inf, dtype=k.dtype, device=k.device))
            CL = CL_next
        if not right:
            acc = CL
        lms = torch.stack(lms)
        kmin = torch.stack(kmins).amin(0) if kmins else torch.zeros_like(ref)
        ctx.save_for_backward(k, v, w, ref, xl, xr, a, A, eu, pw, CR, torch.stack(CLs), torch.stack(refs), lms)
        ctx.meta = (P0, N, L, shift, offs, spans)
        ctx.mark_non_differentiable(kmin, rb)
        return y, acc, rb, _logscale_forward(lms, offs, w), kmin

    @staticmethod
    def _block(k, v, refb, xl, xr, a, Apows, CL, CRb, P0, N, L, es, blk, vw, ref0):
        """Inputs, pure in-chunk scans, summaries and carries of one block (no Q yet).
        The virtual tokens xl, xr are relative to ``ref0`` (<= the block reference)."""
        n0, n1, t0, t1, pf, pb = blk
        nb, rows = n1 - n0, (n1 - n0) * L
        X, X5, xs = vw.flat[0], vw.c5[0], vw.pos[0]
        if pf:
            X[:, :pf].zero_()
        if pb:
            X[:, rows - pb:].zero_()
        if t1 > t0:
            Xd = torch.sub(k[:, t0:t1], refb, out=X[:, pf:rows - pb, 1]).exp_().mul_(es)
            torch.mul(Xd, v[:, t0:t1], out=X[:, pf:rows - pb, 0])
        if n0 == 0:
            torch.mul(xl, _rescale(ref0, refb[:, 0])[:, None] * es, out=X[:, P0 - 1])
        if xr is not None and n1 == N:
            torch.mul(xr, _rescale(ref0, refb[:, 0])[:, None] * es, out=X[:, rows - 1])
        SL5, sl = vw.c5[1], vw.pos[1]
        sl[0].zero_()
        for j in range(1, L):
            torch.addcmul(xs[j - 1], sl[j - 1], a, out=sl[j])
        # carries between chunks (decay A = e^{L w}): c_0 = CL_in, c_{i+1} = A c_i + zl_i, i.e.
        # the inclusive scan of [CL_in, zl_0, ..]; chunk i gets c_i, the next block c_nb
        sc = vw.scan[0]
        sc.buf[0][:, 0].copy_(CL)
        torch.addcmul(xs[L - 1], sl[L - 1], a, out=sc.buf[0][:, 1:])  # chunk summaries zl
        c = sc.run(Apows, reverse=False)
        SR5 = r = None
        if CRb is not None:
            SR5, sr = vw.c5[2], vw.pos[2]
            sr[L - 1].zero_()
            for j in range(L - 2, -1, -1):
                torch.addcmul(xs[j + 1], sr[j + 1], a, out=sr[j])
            # from the right: r_{nb-1} = CR, r_i = A r_{i+1} + zr_{i+1}: the reverse scan of
            # [zr_1 .., zr_{nb-1}, CR]; chunk i gets r_i
            sc = vw.scan[1]
            torch.addcmul(xs[0], sr[0], a, out=vw.zr)  # right summaries zr
            sc.buf[0][:, :nb - 1].copy_(vw.zr[:, 1:])
            sc.buf[0][:, nb - 1].copy_(CRb)
            r = sc.run(Apows, reverse=True)
        return X5, SL5, SR5, c, r

    @staticmethod
    def _q(SL5, X5, SR5, cl, cr, eu, pw5, out=None):
        """Q = SL + a^j cl + e^u X (+ SR + a^{L-1-j} cr); in place on SL unless ``out``."""
        Q5 = torch.addcmul(SL5, cl[:, :, None], pw5, out=out) if out is not None else SL5.addcmul_(cl[:, :, None], pw5)
        Q5.addcmul_(X5, eu)
        if SR5 is not None:
            Q5.add_(SR5).addcmul_(cr[:, :, None], pw5.flip(2))
        return Q5

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gacc, _gref, gm, _gkmin):
        k, v, w, ref, xl, xr, a, A, eu, pw, CR, CLs, refs, lms = ctx.saved_tensors
        P0, N, L, shift, offs, spans = ctx.meta
        B, T, C = k.shape
        right = xr is not None
        blocks = _blocks(N, L, P0, T)
        gk, gv = k.new_empty(B, T, C), v.new_empty(B, T, C)
        ga, gA, geu, gpw = (torch.zeros_like(x) for x in (a, A, eu, pw))
        gCR = torch.zeros_like(CR) if right else None
        gxl = gxr = None
        gCL = torch.zeros_like(gacc) if right else gacc  # gradient reaching the carry leaving a block
        bufs = _sweep_bufs(k, L, 3 + right)
        gbufs = _sweep_bufs(k, L, 3)
        cache, gcache = {}, {}
        pw5 = pw[None, None, :, None, :]
        es = math.exp(shift)
        Apows = _apows(A, max(1, BLOCK // L) + 1)
        for b in range(len(blocks) - 1, -1, -1):
            n0, n1, t0, t1, pf, pb = blk = blocks[b]
            nb, rows = n1 - n0, (n1 - n0) * L
            vw = _Views.get(cache, bufs, nb, L)
            gvw = _Views.get(gcache, gbufs, nb, L)
            X5, SL5, SR5, c, cr = _Sweep._block(
                k, v, refs[b][:, None, :], xl, xr, a, Apows, CLs[b], CR[:, b] if right else None, P0, N, L,
                es, blk, vw, ref)
            cl = c[:, :nb]
            Q5 = _Sweep._q(SL5, X5, SR5, cl, cr, eu, pw5, out=vw.c5[-1])
            # y = num / den: d/dnum = 1/den, d/dden = -y/den; padding rows get no gradient
            G = gvw.flat[0]
            if pf:
                G[:, :pf].zero_()
            if pb:
                G[:, rows - pb:].zero_()
            Q = Q5.view(B, rows, 2, C)[:, pf:rows - pb]
            gn = torch.div(gy[:, t0:t1], Q[:, :, 1], out=G[:, pf:rows - pb, 0])
            torch.mul(gn, Q[:, :, 0], out=G[:, pf:rows - pb, 1]).div_(Q[:, :, 1]).neg_()
            G5, gq = gvw.c5[0], gvw.pos[0]
            geu += (G5 * X5).sum((0, 1, 2, 3))
            gX5 = torch.mul(G5, eu, out=gvw.c5[1])
            gcl = (G5 * pw5).sum(2)  # [B, nb, 2, C]
            gpw += (G5 * cl[:, :, None]).sum((0, 1, 3))
            if right:
                gcr = (G5 * pw5.flip(2)).sum(2)
                gpw += (G5 * cr[:, :, None]).sum((0, 1, 3)).flip(0)
                # r = reverse scan of [zr_1 .., CR]: its adjoint rho = dL/dr (total) is the
                # forward scan of gcr, and dL/d[zr_1 .., CR] = rho
                sc = gvw.scan[1]
                sc.buf[0].copy_(gcr)
                rho = sc.run(Apows, reverse=False)
                gA += (rho[:, :nb - 1] * cr[:, 1:]).sum((0, 1, 2))  # r_i = A r_{i+1} + ..
                gCR[:, b] = rho[:, nb - 1]
                gzr = rho  # dL/dzr_i = rho_{i-1} for i >= 1 (zr_0 only feeds blocks to the left)
            last_acc = right and n1 == N
            if last_acc:  # acc = SL[last chunk, L-1] + a^{L-1} cl[last chunk]
                gcl[:, -1] += gacc * pw[L - 1]
                gpw[L - 1] += (gacc * cl[:, -1]).sum((0, 1))
            # c = forward scan of [CL_in, zl]: gamma = dL/dc (total) is the reverse scan of
            # [gcl, gCL_out], and dL/d[CL_in, zl] = gamma
            sc = gvw.scan[0]
            sc.buf[0][:, :nb].copy_(gcl)
            sc.buf[0][:, nb].copy_(gCL)
            gam = sc.run(Apows, reverse=True)
            gA += (gam[:, 1:] * c[:, :nb]).sum((0, 1, 2))  # c_{i+1} = A c_i + ..
            gCL_in = gam[:, 0].clone()
            gzl = gam[:, 1:]
            # left scan adjoint: lam_j = dL/dSL_j = G_j + a lam_{j+1}, lam_L = gzl;
            # Lam[:, :, j] holds lam_{j+1}, which is also dL/dX_j through the scan
            Lam, lam = gvw.c5[2], gvw.pos[2]
            lam[L - 1].copy_(gzl)
            for j in range(L - 1, 0, -1):
                torch.addcmul(gq[j], lam[j], a, out=lam[j - 1])
                if last_acc and j == L - 1:
                    lam[L - 2][:, -1] += gacc  # acc reads SL_{L-1} of the last chunk
            ga += (Lam * SL5).sum((0, 1, 2, 3))
            gX5.add_(Lam)
            if right:
                # right scan adjoint: mu_j = G_j + a mu_{j-1}, mu_{-1} = gzr; Mu[:, :, j] = mu_{j-1}
                Mu, mu = Lam, lam
                mu[0].zero_()
                mu[0][:, 1:] = gzr[:, :nb - 1]
                for j in range(0, L - 1):
                    torch.addcmul(gq[j], mu[j], a, out=mu[j + 1])
                ga += (Mu * SR5).sum((0, 1, 2, 3))
                gX5.add_(Mu)
            gX = gX5.view(B, rows, 2, C)
            if n0 == 0:
                gxl = gX[:, P0 - 1] * (_rescale(ref, refs[b])[:, None] * es)
            if right and n1 == N:
                gxr = gX[:, rows - 1] * (_rescale(ref, refs[b])[:, None] * es)
            if t1 > t0:  # X_den = e^{shift + k - ref}, X_num = X_den v
                Xr = X5.view(B, rows, 2, C)[:, pf:rows - pb]
                gr = gX[:, pf:rows - pb]
                torch.mul(gr[:, :, 0], Xr[:, :, 1], out=gv[:, t0:t1])
                torch.addcmul(gr[:, :, 0] * Xr[:, :, 0], gr[:, :, 1], Xr[:, :, 1], out=gk[:, t0:t1])
            # CL_in(b) = CL_out(b-1) e^{ref_{b-1} - ref_b}
            gCL = gCL_in * _rescale(refs[b - 1], refs[b])[:, None] if b > 0 else gCL_in
        gw = _logscale_backward(k, w, spans, lms, offs, gm, gk)
        return (gk, gv, gw, None, gxl, gxr, ga, gA, geu, gpw, gCR, None, None, None, None)


def _apows(A, n):
    """[A, A^2, A^4, ..] for the doubling levels of an n-long scan, flushed below e^{-theta}
    like every decay factor."""
    out, p, s = [], A, 1
    floor = math.exp(-RANGES[A.dtype].theta)
    while s < n:
        out.append(p)
        p = p * p
        p = torch.where(p >= floor, p, torch.zeros_like(p))
        s *= 2
    return out


def _sweep_bufs(k, L, n):
    """n reusable block buffers [B, rows, 2, C]."""
    B, T, C = k.shape
    rows = max(1, BLOCK // L) * L
    return [k.new_empty(B, rows, 2, C) for _ in range(n)]


class _DScan:
    """Inclusive decayed scan along dim 1 of a [B, n, 2, C] buffer by log-depth doubling:
    forward out_i = sum_{m<=i} A^{i-m} in_m, reverse out_i = sum_{m>=i} A^{m-i} in_m (the two
    are each other's adjoint). Buffers and slices are made once (views cost as much as the
    tiny ops that use them)."""

    def __init__(self, like, n):
        B, C = like.shape[0], like.shape[-1]
        self.n = n
        self.buf = [like.new_empty(B, n, 2, C) for _ in range(2)]
        self.levels = []
        s = 1
        while s < n:
            self.levels.append([(x[:, s:], x[:, :-s], x[:, :s], x[:, -s:]) for x in self.buf])
            s *= 2

    def run(self, Apows, reverse):
        """Scan self.buf[0] (the input); returns the buffer holding the result."""
        src = 0
        for lvl, Ap in zip(self.levels, Apows):
            (hi_s, lo_s, head_s, tail_s), (hi_d, lo_d, head_d, tail_d) = lvl[src], lvl[1 - src]
            if reverse:
                torch.addcmul(lo_s, hi_s, Ap, out=lo_d)
                tail_d.copy_(tail_s)
            else:
                torch.addcmul(hi_s, lo_s, Ap, out=hi_d)
                head_d.copy_(head_s)
            src = 1 - src
        return self.buf[src]


class _Views:
    """Chunked views of the block buffers and their per-position slices, made once per block
    size (creating views costs as much as the small ops that use them)."""

    def __init__(self, bufs, nb, L):
        B, _, _, C = bufs[0].shape
        rows = nb * L
        self.flat = [x[:, :rows] for x in bufs]
        self.c5 = [x.view(B, nb, L, 2, C) for x in self.flat]
        self.pos = [[x5[:, :, j] for j in range(L)] for x5 in self.c5]
        # chunk carries: left [CL_in, zl_0 ..] (nb + 1), right [zr_1 .., CR] (nb)
        self.scan = [_DScan(bufs[0], nb + 1), _DScan(bufs[0], nb)]
        self.zr = bufs[0].new_empty(B, nb, 2, C)

    @staticmethod
    def get(cache, bufs, nb, L):
        if nb not in cache:
            cache[nb] = _Views(bufs, nb, L)
        return cache[nb]


def _core(k, v, w, u, sl, sr, rg):
    """Chunked evaluation; returns (y, final_state) or None when the range check fails."""
    bidir = sr is not None
    B, T, C = k.shape
    dev, dt = k.device, k.dtype
    states = [sl, sr] if bidir else [sl]
    with torch.no_grad():
        slogs = [_state_log(s) for s in states]
        hi = u.clamp(min=0) + (T + 2 * CHUNK) * w.clamp(min=0)
        if bool(hi.max() > rg.hi):
            return None

    def range_ok(lo_tokens, ref):
        # Every denominator keeps its own current term e^{u + k_t - ref} (or, alternatively,
        # an incoming state that stays above it over the whole segment).
        with torch.no_grad():
            lo = lo_tokens + u.clamp(max=0)
            for sg in slogs:
                lo = torch.maximum(lo, sg - ref + (T + 1) * w.clamp(max=0))
            return not bool(lo.min() < -rg.lo)

    L = max(2, CHUNK)
    while L > 4 and L // 2 >= T + 1 + bidir:  # short sequences: smaller chunks
        L //= 2
    N = -(-(T + 1 + bidir) // L)
    P0 = N * L - T - bidir  # >= 1: the left virtual token sits at P0 - 1 (the right one at N*L - 1)
    th, S = rg.theta, math.exp(rg.shift)
    jf = torch.arange(L, device=dev, dtype=dt)
    a = _fexp(w, th)  # per-step decay factor
    pw = _fexp(w[None, :] * jf[:, None], th)  # [L, C]: e^{j w}
    A = _fexp(w * L, th)  # per-chunk decay factor
    eu = torch.exp(u)
    if not bidir:
        # the reference starts at the state's magnitude and grows block by block inside
        ref0 = slogs[0]
        xl = _virtual(sl, ref0)
        y, acc, ref, mL, lo_tok = _Sweep.apply(k, v, w, ref0, xl, None, a, A, eu, pw, None, P0, N, L, rg.shift)
        if not range_ok(lo_tok, ref):
            return None
        return y, _finish_state(acc, ref, torch.maximum(sl[:, 2] + T * w, mL), rg.shift)

    # ---- bidirectional: right-to-left summaries of the blocks, then the carries entering
    # each block from its right end (a short sequential recurrence over blocks)
    ZR, M, mR, kmin = _RightSums.apply(k, v, w, th, P0, N, L)
    with torch.no_grad():
        ref = torch.maximum(M.amax(0), torch.maximum(*slogs))
    if not range_ok(kmin - ref, ref):
        return None
    xl, xr = _virtual(sl, ref), _virtual(sr, ref)
    blocks = _blocks(N, L, P0, T)
    nblk = len(blocks)
    ZR = ZR * (torch.exp(M - ref).transpose(0, 1)[:, None] * S)  # block maxima -> ref
    anchors = [P0] + [blk[0] * L for blk in blocks[1:]]
    ends = [blk[1] * L for blk in blocks]
    last = ZR[:, :, -1] + xr * S * _fexp(w * (N * L - 1 - anchors[-1]), th)  # the right virtual token
    zr = [ZR[:, :, b] for b in range(nblk - 1)] + [last]
    CRs = [torch.zeros_like(last)]
    for b in range(nblk - 2, -1, -1):
        CRs.append(zr[b + 1] + _fexp(w * (ends[b + 1] - anchors[b + 1]), th) * CRs[-1])
    CRs = CRs[::-1]  # CRs[b]: right-to-left accumulator entering block b from its right end
    acc_r = zr[0] + _fexp(w * (ends[0] - P0), th) * CRs[0]  # before the first real token
    CR = torch.stack(CRs, 1)  # [B, nblk, 2, C]
    y, acc_l, _, mL, _ = _Sweep.apply(k, v, w, ref, xl, xr, a, A, eu, pw, CR, P0, N, L, rg.shift)
    fl = _finish_state(acc_l, ref, torch.maximum(sl[:, 2] + T * w, mL), rg.shift)
    fr = _finish_state(acc_r, ref, torch.maximum(sr[:, 2] + T * w, mR), rg.shift)
    return y, torch.stack([fl, fr], 1)


# ------------------------------------------------------------------------------- fallback

def _loop(k, v, w, u, sl, sr):
    """Stable but sequential (the reference token loop): for a few tokens, and for inputs whose
    exponents span more than float64 can hold."""
    if sr is None:
        return reference.wkv4(k, v, w, u, sl)
    return reference.bi_wkv4(k, v, w, u, torch.stack([sl, sr], 1))


# ------------------------------------------------------------------------------- public

# The precision is chosen from the values (the range check), which a traced graph cannot read:
# under torch.compile this runs eagerly between compiled graphs (one graph break per call).
@torch.compiler.disable
def _run(k, v, w, u, sl, sr):
    dt = k.dtype
    if k.shape[1] <= SHORT:  # a few tokens (e.g. generation steps): the loop has less overhead
        y, s = _loop(k, v, w, u, sl, sr)
        return y, s
    for cdt in ([dt] if dt == torch.float64 else [dt, torch.float64]):
        c = lambda x: None if x is None else x.to(cdt)  # noqa: E731
        out = _core(c(k), c(v), c(w), c(u), c(sl), c(sr), RANGES[cdt])
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
