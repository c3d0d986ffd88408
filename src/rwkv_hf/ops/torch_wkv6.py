"""RWKV-6 (and RWKV-5) matrix-state WKV as a chunked-parallel pure-PyTorch op.

Layout: ``r, k, w`` are ``[B, T, H, K]``, ``v`` is ``[B, T, H, V]``, ``u`` is ``[H, K]``
and the state ``S`` is ``[B, H, K, V]``. ``w`` is the *log* decay (finite, ``<= 0``;
the per-step factor is ``exp(w)``). Per head, with ``S_0`` the given state::

    y_t     = r_t^T (S_t + diag(u) k_t v_t^T)
    S_{t+1} = diag(exp(w_t)) S_t + k_t v_t^T

``wkv6(r, k, v, w, u, state)`` returns ``(y [B, T, H, V], S_T [B, H, K, V])`` in the
input dtype (float32 or float64). RWKV-5 is the same op with ``w`` constant in time
(an expanded view is fine). Only ``torch`` is imported, so the file can be copied
flat into a Hub remote-code folder. Gradients reach every input (hand-written
backward on the fast path, autograd elsewhere).

Math. Cut T into chunks of C = 64 tokens. Inside a chunk let ``b_t = sum_{p<=t} w_p``
(inclusive, per channel), ``a_t = b_{t-1}`` (exclusive, ``a_0 = 0``), ``tot = b_{C-1}``::

    y_t    = (r_t e^{a_t}) S_c                                   (inter-chunk)
           + sum_{j<t} [sum_k r_tk k_jk e^{a_tk - b_jk}] v_j      (intra-chunk, matrix A)
           + (sum_k r_tk u_k k_tk) v_t                            (bonus = diagonal of A)
    S_c+1  = e^{tot} (S_c + sum_j (k_j e^{-b_j}) v_j^T)

so everything is batched matmuls except a sequential pass over chunk states.
Every true decay factor ``e^{a_t - b_j}`` (j < t) and ``e^{tot - b_j}`` is <= 1.

Stability. Factoring ``e^{a_t - b_j} = e^{a_t} e^{-b_j}`` (reference = chunk start)
is exact only while ``e^{-b_j}`` cannot overflow and ``e^{a_t}`` stays a normal
number, i.e. while the chunk's total log decay ``-tot <= L`` (60 in float32, 600 in
float64; realistic decays give about 15-40 per 64 tokens). The sequence is processed
in segments of chunks (small temporaries reused across segments); a segment whose
chunks are all in range takes that single-level path (hand-written backward that
recomputes each segment from the saved chunk-boundary states). Channels are
independent rows of the state and y sums over them, so channels that ever go out of
range (strong decays of trained models) are gathered and run separately
(``_split_channels``), leaving the rest on the fast path. Out-of-range segments take
``_general`` (plain autograd): its chunk-state factors use only exponents <= 0, and
the intra-chunk matrix is built by recursive halving (``_intra_levels``): a (block,
channel) whose log range over the positions that form pairs is <= L uses one
reference in the middle of its range (factors within ``e^{+-L/2}``); otherwise pairs
straddling the halves are factored through the boundary m, ``e^{a_t - a_m}
e^{a_m - b_j}`` (both factors <= 1, always exact), and each half is treated the same
way one level down (2-token blocks have an empty range, so this ends). Its log-space
sums are float64 so that a huge early decay cannot cost absolute precision on later
pairs. Nothing ever takes exp of a positive number that could overflow.
"""
import torch
import torch.nn.functional as F

from . import reference

__all__ = ["wkv6"]

CHUNK = 64  # tokens per chunk (power of two)
SEGMENT_ELEMS = 1 << 19  # about this many elements per chunk-layout temporary
_MAX_RANGE = {torch.float64: 600.0}  # max |log decay| per chunk on the fast path; else 60


# Up to this many tokens (generation steps) the token loop beats the chunked form's setup.
SHORT = 4


def _step(r, k, v, w, u, S):
    """One token (a generation step) with as few ops as possible: the reference loop's math."""
    r, k, v, w = (x.squeeze(1) for x in (r, k, v, w))  # [B, H, K]
    kv = k.unsqueeze(-1) * v.unsqueeze(-2)
    y = r.unsqueeze(-2) @ torch.addcmul(S, u.unsqueeze(-1), kv)  # r^T (S + diag(u) k v^T)
    return y.transpose(1, 2), torch.addcmul(kv, S, torch.exp(w).unsqueeze(-1))


def wkv6(r, k, v, w, u, state):
    """Chunked RWKV-6 WKV. See the module docstring for layout and semantics."""
    if r.shape[1] == 1:
        return _step(r, k, v, w, u, state)
    if r.shape[1] <= SHORT:
        return reference.wkv6(r, k, v, w, u, state)
    return _wkv6(r, k, v, w, u, state)


def _wkv6(r, k, v, w, u, state, chunk_size=CHUNK, max_range=None, seg_chunks=None, split=True):
    """wkv6 with knobs for tests: chunk_size (power of two), max_range (L), seg_chunks
    (chunks per segment), split (allow the per-channel split)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    L = float(max_range if max_range is not None else _MAX_RANGE.get(r.dtype, 60.0))
    C = min(chunk_size, 1 << max(T - 1, 0).bit_length())  # power of two, no bigger than needed
    n = -(-T // C)
    Tp = n * C
    if Tp != T:  # padding tokens (r = k = v = 0, w = 0) change neither y nor the state
        r, k, v, w = (F.pad(x, (0, 0, 0, 0, 0, Tp - T)) for x in (r, k, v, w))
    if split and n > 1:
        with torch.no_grad():  # channels whose chunk log-decay ever exceeds L (with a margin)
            bad = w.reshape(B, n, C, H, K).sum(2).amin((0, 1)) < -0.99 * L
        if bad.any() and not bad.all():
            opts = dict(chunk_size=C, max_range=L, seg_chunks=seg_chunks, split=False)
            y, s = _split_channels(r, k, v, w, u, state, bad, opts)
            return (y[:, :T].contiguous() if Tp != T else y), s
    if seg_chunks is None:
        seg_chunks = max(1, SEGMENT_ELEMS // (B * H * C * max(K, V, C)))
    geo = (B, n, C, H, K, V, seg_chunks)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (r, k, v, w, u, state)):
        y, s = _WKV6.apply(r, k, v, w, u, state, geo, L)
    else:
        y, S = _forward(r, k, v, w, u, state, geo, L, None)
        s = S[-1].view(B, H, K, V)
    if Tp != T:
        y = y[:, :T].contiguous()
    return y, s


def _split_channels(r, k, v, w, u, state, bad, opts):
    """Channels are independent rows of the state and y sums over them, so run the
    in-range channels (``bad`` ones zeroed: r = k = w = 0) on the fast path and only the
    ``bad`` ones, gathered per head and padded to the largest count, on the general path.
    bad: [H, K] bool (some chunk of that channel has log decay below -L)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    good = (~bad).to(r.dtype)
    y, s = _wkv6(r * good, k * good, v, w * good, u * good, state, **opts)
    Ku = int(bad.sum(1).amax())
    idx = torch.sort((~bad).to(torch.uint8), dim=1, stable=True).indices[:, :Ku]  # bad first
    keep = bad.gather(1, idx).to(r.dtype)  # [H, Ku]; 0 marks padding channels
    flat = (idx + K * torch.arange(H, device=idx.device)[:, None]).reshape(-1)

    def pick(x):  # [..., H, K] -> [..., H, Ku], padding channels zeroed
        lead = x.shape[:-2]
        return x.reshape(*lead, H * K).index_select(-1, flat).view(*lead, H, Ku) * keep

    sb = state.reshape(B, H * K, V).index_select(1, flat).view(B, H, Ku, V)
    yb, sb = _wkv6(pick(r), pick(k), v, pick(w), pick(u), sb, **opts)
    s = (s * good[..., None]).reshape(B, H * K, V)
    s = s.index_add(1, flat, (sb * keep[..., None]).reshape(B, H * Ku, V))
    return y + yb, s.view(B, H, K, V)


def _chunks(x, geo):
    """[B, t, H, D] -> [t/C, B, H, C, D] (a view when the layout allows)."""
    B, C, H = geo[0], geo[2], geo[3]
    return x.reshape(B, -1, C, H, x.shape[-1]).permute(1, 0, 3, 2, 4)


def _tokens(x, geo):
    """Inverse of _chunks as a view: [m*B*H, C, D] -> [B, m, C, H, D]."""
    B, C, H = geo[0], geo[2], geo[3]
    return x.view(-1, B, H, C, x.shape[-1]).permute(1, 0, 3, 2, 4)


def _segments(geo):
    n, sc = geo[1], geo[6]
    return [(c0, min(c0 + sc, n)) for c0 in range(0, n, sc)]


class _Workspace:
    """Named scratch buffers reused by every segment of one call (fresh memory is slow:
    page faults on each new large temporary can cost more than the arithmetic)."""

    def __init__(self, like):
        self.like, self.bufs = like, {}

    def __call__(self, name, *shape):
        numel = 1
        for x in shape:
            numel *= x
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < numel:
            buf = self.bufs[name] = self.like.new_empty(numel)
        return buf[:numel].view(shape)


def _log_decay(w, geo, ws):
    """b = cumsum(w) per chunk, chunk layout [m, C, K] (w: one segment, [B, t, H, K])."""
    C, K = geo[2], geo[4]
    c5 = _chunks(w, geo)
    b = ws("e", *c5.shape).copy_(c5).view(-1, C, K)
    return b.cumsum_(1)


def _seg_tensors(r, k, v, u, b, geo, ws):
    """One in-range segment's chunk tensors from b = cumsum(w) (consumed: becomes e^{b}).

    Chunk layout [m = chunks*B*H, C, K]; every factor is finite since -tot <= L:
      e = e^{b} (<= 1), eb = e^{-b} (<= e^L), q = r e^{a} with e^{a_t} = e_{t-1},
      kk = k eb, A = tril_{-1}(q kk^T) + diag(d) with d_t = sum_k r_t u_k k_t.
    """
    B, C, H, K = geo[0], geo[2], geo[3], geo[4]
    m = b.shape[0]
    sh = (m // (B * H), B, H, C, K)
    e = b.exp_()
    eb = torch.reciprocal(e, out=ws("eb", m, C, K))
    r5, e5 = _chunks(r, geo), e.view(sh)
    q = ws("q", *sh)
    torch.mul(e5[..., :-1, :], r5[..., 1:, :], out=q[..., 1:, :])
    q[..., 0, :] = r5[..., 0, :]
    q = q.view(m, C, K)
    kk = torch.mul(eb.view(sh), _chunks(k, geo), out=ws("kk", *sh)).view(m, C, K)
    vc = ws("vc", *sh[:4], v.shape[-1]).copy_(_chunks(v, geo)).view(m, C, -1)
    rk = torch.mul(r, k, out=ws("rk", *r.shape))
    d = torch.einsum("bthk,hk->bth", rk, u)
    A = torch.bmm(q, kk.transpose(1, 2), out=ws("A", m, C, C)).tril_(-1)
    A.diagonal(dim1=1, dim2=2).copy_(_chunks(d[..., None], geo).reshape(m, C))
    return e, eb, q, kk, vc, A, rk


def _forward(r, k, v, w, u, state, geo, L, keep):
    """Forward over segments. Returns y [B, Tp, H, V] and the chunk-boundary states
    S [n+1, B*H, K, V] (S[0] = state, S[n] = final; only boundaries of in-range
    segments are all filled). ``keep`` (a dict, or None) receives the autograd graphs
    of out-of-range segments for the backward."""
    B, n, C, H, K, V = geo[:6]
    BH = B * H
    y = v.new_empty(B, n * C, H, V)
    S = state.new_empty(n + 1, BH, K, V)
    S[0] = state.reshape(BH, K, V)
    ws = _Workspace(v)
    for c0, c1 in _segments(geo):
        sl, ns = slice(c0 * C, c1 * C), c1 - c0
        seg = [x[:, sl] for x in (r, k, v, w)]
        b = _log_decay(seg[3], geo, ws)
        if b[:, -1].amin() >= -L:
            e, eb, q, kk, vc, A, rk = _seg_tensors(*seg[:3], u, b, geo, ws)
            m = ns * BH
            yc = torch.bmm(A, vc, out=ws("y", m, C, V))
            # S_{i+1} = e^{tot_i} S_i + e^{tot_i} kk_i^T v_i  (e^{tot - b_j} = e^{tot} e^{-b_j})
            M = torch.bmm(kk.transpose(1, 2), vc, out=ws("M", m, K, V)).view(ns, BH, K, V)
            et = e.view(ns, BH, C, K)[:, :, -1, :, None]
            M.mul_(et)
            for i in range(ns):
                torch.addcmul(M[i], et[i], S[c0 + i], out=S[c0 + i + 1])
            yc.baddbmm_(q, S[c0:c1].view(m, K, V))
            y[:, sl].view(B, ns, C, H, V).copy_(_tokens(yc, geo))
        else:
            sgeo = (B, ns, C, H, K, V, ns)
            if keep is None:
                ys, s_out = _general(*seg, u, S[c0].view(B, H, K, V), sgeo, L)
                S[c1] = s_out.reshape(BH, K, V)
            else:  # record a small autograd graph for this segment only
                with torch.enable_grad():
                    xs = [x.detach().requires_grad_() for x in (*seg, u)]
                    xs.append(S[c0].detach().clone().view(B, H, K, V).requires_grad_())
                    ys, s_out = _general(*xs, sgeo, L)
                keep[c0] = (xs, ys, s_out)
                S[c1] = s_out.detach().view(BH, K, V)
            y[:, sl] = ys.detach()
    return y, S


class _WKV6(torch.autograd.Function):
    """Hand-written backward for in-range segments; autograd graphs for the others.

    Only the chunk-boundary states are saved; each segment's chunk tensors are
    recomputed in the backward (cheap elementwise work), keeping memory at O(T).
    """

    @staticmethod
    def forward(ctx, r, k, v, w, u, state, geo, L):
        keep = {}
        y, S = _forward(r, k, v, w, u, state, geo, L, keep)
        ctx.geo, ctx.keep = geo, keep
        ctx.save_for_backward(r, k, v, w, u, S)
        B, H, K, V = geo[0], geo[3], geo[4], geo[5]
        return y, S[-1].clone().view(B, H, K, V)

    @staticmethod
    def backward(ctx, gy, gs):
        geo, keep = ctx.geo, ctx.keep
        B, n, C, H, K, V = geo[:6]
        BH = B * H
        r, k, v, w, u, S = ctx.saved_tensors
        if gy is None:
            gy = v.new_zeros(B, n * C, H, V)
        gr, gk, gv, gw = (x.new_empty(x.shape) for x in (r, k, v, r))
        gu = torch.zeros_like(u)
        G = S.new_zeros(BH, K, V)  # dL/dS at the end of the current segment
        if gs is not None:
            G.copy_(gs.reshape(BH, K, V))
        ws = _Workspace(v)
        upper = torch.ones(C, C, dtype=v.dtype, device=v.device).triu_()  # reverse cumsum
        for c0, c1 in reversed(_segments(geo)):
            sl, ns = slice(c0 * C, c1 * C), c1 - c0
            if c0 in keep:
                xs, ys, s_out = keep[c0]  # retained: backward may run more than once
                grads = torch.autograd.grad((ys, s_out), xs, (gy[:, sl], G.view_as(s_out)),
                                            retain_graph=True, allow_unused=True)
                grads = [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]
                for out, g in zip((gr, gk, gv, gw), grads):
                    out[:, sl] = g
                gu += grads[4]
                G.copy_(grads[5].reshape(BH, K, V))
                continue
            m = ns * BH
            rs, ks = r[:, sl], k[:, sl]
            b = _log_decay(w[:, sl], geo, ws)
            e, eb, q, kk, vc, A, rk = _seg_tensors(rs, ks, v[:, sl], u, b, geo, ws)
            et = e.view(ns, BH, C, K)[:, :, -1, :, None]
            gyc = ws("gyc", ns, B, H, C, V).copy_(_chunks(gy[:, sl], geo)).view(m, C, V)
            # Reverse chunk recurrence: G_i = dL/dS_i = q_i^T gy_i + e^{tot_i} G_{i+1}.
            P = torch.bmm(q.transpose(1, 2), gyc, out=ws("P", m, K, V)).view(ns, BH, K, V)
            Gs = ws("G", ns + 1, BH, K, V)
            Gs[ns] = G
            for i in range(ns - 1, -1, -1):
                torch.addcmul(P[i], et[i], Gs[i + 1], out=Gs[i])
            G.copy_(Gs[0])
            Gn = Gs[1:].view(m, K, V)
            X = torch.mul(Gn, et.reshape(m, K, 1), out=ws("X", m, K, V))  # dL/d(kk^T v)
            # e^{tot} (S_i + kk_i^T v_i) = S_{i+1}, so dL/dtot = sum_v S_{i+1} G_{i+1}.
            g_tot = torch.einsum("mkv,mkv->mk", S[c0 + 1:c1 + 1].view(m, K, V), Gn)
            # Matmul grads (intra: A v, inter: q S_i, state update: kk^T v).
            gA = torch.bmm(gyc, vc.transpose(1, 2), out=ws("gA", m, C, C))
            gd = gA.diagonal(dim1=1, dim2=2).clone()
            gA.tril_(-1)
            gq = torch.bmm(gA, kk, out=ws("gq", m, C, K))
            gq.baddbmm_(gyc, S[c0:c1].view(m, K, V).transpose(1, 2))
            gkk = torch.bmm(gA.transpose(1, 2), q, out=ws("gkk", m, C, K))
            gkk.baddbmm_(vc, X.transpose(1, 2))
            gvc = torch.bmm(A.transpose(1, 2), gyc, out=ws("gv", m, C, V)).baddbmm_(kk, X)
            # Log space: q_t = r_t e^{b_{t-1}}, kk = k e^{-b}, tot = b_{C-1}, b = cumsum(w).
            gb = ws("gb", m, C, K)
            torch.mul(gq[:, 1:], q[:, 1:], out=gb[:, :-1])
            gb[:, -1] = g_tot
            gb.addcmul_(gkk, kk, value=-1)
            gwc = torch.matmul(upper, gb, out=ws("gw", m, C, K))  # dL/dw_j = sum_{t>=j} dL/db_t
            # Token layout: dL/dr = gq e^{a} + gd u k, dL/dk = gkk e^{-b} + gd u r (bonus d).
            sh = (B, ns, C, H, -1)
            gdt = _tokens(gd[..., None], geo)  # [B, ns, C, H, 1]
            gq5, e5 = _tokens(gq, geo), _tokens(e, geo)
            g = torch.mul(ks.reshape(sh), u, out=gr[:, sl].view(sh)).mul_(gdt)
            g[:, :, 1:].addcmul_(gq5[:, :, 1:], e5[:, :, :-1])  # e^{a_t} = e^{b_{t-1}}, e^{a_0} = 1
            g[:, :, 0].add_(gq5[:, :, 0])
            g = torch.mul(rs.reshape(sh), u, out=gk[:, sl].view(sh)).mul_(gdt)
            g.addcmul_(_tokens(gkk, geo), _tokens(eb, geo))
            gu += torch.einsum("bthk,bth->hk", rk, gdt.reshape(B, ns * C, H))
            gv[:, sl].view(sh).copy_(_tokens(gvc, geo))
            gw[:, sl].view(sh).copy_(_tokens(gwc, geo))
        return gr, gk, gv, gw, gu, G.view(B, H, K, V), None, None


def _general(r, k, v, w, u, state, geo, L):
    """Any decays: hierarchical intra-chunk (see _intra_levels), plain autograd."""
    B, n, C, H, K, V = geo[:6]
    N, BH = n * B * H, B * H
    dt = r.dtype
    rc = _chunks(r, geo).reshape(N, C, K)
    kc = _chunks(k, geo).reshape(N, C, K)
    vc = _chunks(v, geo).reshape(N, C, V)
    ld = torch.float64  # log-space in float64: see the module docstring
    w64 = _chunks(w, geo).reshape(N, C, K).to(ld)
    b = w64.cumsum(1)
    a = b - w64
    tot = b[:, -1:]
    # State-side factors, exponents <= 0. e^{tot - b_j} uses a reverse cumsum so a large
    # decay early in the chunk does not swamp the small suffix sums.
    suf = w64.flip(1).cumsum(1).flip(1) - w64  # sum_{p>j} w_p
    qi = rc * torch.exp(a).to(dt)
    ks = kc * torch.exp(suf).to(dt)
    d = (r * k * u).sum(-1).view(B, n, C, H).permute(1, 0, 3, 2).reshape(N, C)
    y = _intra_levels(rc, kc, vc, a, b, d, L, dt)
    U = torch.bmm(ks.transpose(1, 2), vc).view(n, BH, K, V)
    decay = torch.exp(tot).to(dt).view(n, BH, K, 1)
    S = state.reshape(BH, K, V)
    Ss = []
    for i in range(n):
        Ss.append(S)
        S = torch.addcmul(U[i], decay[i], S)
    y = torch.baddbmm(y, qi, torch.stack(Ss).view(N, K, V))
    return _tokens(y, geo).reshape(B, n * C, H, V), S.view(B, H, K, V)


def _intra_levels(rc, kc, vc, a, b, d, L, dt):
    """Intra-chunk output (strictly causal pairs + bonus diagonal) by halving blocks.

    rc, kc: [N, C, K]; vc: [N, C, V]; a, b: exclusive / inclusive log cumsums [N, C, K]
    (float64); d: bonus diagonal [N, C]. Returns [N, C, V] in dtype dt.
    """
    N, C, K = rc.shape
    V = vc.shape[-1]
    if C == 1:
        return d[..., None] * vc
    y = None
    act = None  # channels still to do, per block [N, nb, 1, K]; None = all
    s = C
    while s >= 2:
        nb, m = C // s, s // 2
        al, bl = a.view(N, nb, s, K), b.view(N, nb, s, K)
        # Pairs j < t only see w_1..w_{s-2} of the block: range = b_0 - a_{s-1}.
        lo, hi = bl[:, :, :1], al[:, :, -1:]
        safe = (lo - hi) <= L
        dense = safe if act is None else safe & act
        cross = ~safe if act is None else act & ~safe
        # dense channels: rho = middle of the range; cross channels: the half boundary a_m.
        ref = torch.where(dense, (lo + hi) * 0.5, al[:, :, m:m + 1])
        # Valid exponents are <= L/2 (dense) or <= 0 (cross); the clamp, kept one above that
        # so it never cuts a valid entry's gradient, only bounds entries masked out below
        # (t = 0 / j = s-1 of dense channels, the wrong half of cross channels).
        eq = torch.exp((al - ref).clamp(max=L / 2 + 1)).to(dt)
        ek = torch.exp((ref - bl).clamp(max=L / 2 + 1)).to(dt)
        if act is not None or not bool(safe.all()):
            second = (torch.arange(s, device=rc.device) >= m)[:, None]  # [s, 1]
            eq = eq * (dense | (cross & second)).to(dt)
            ek = ek * (dense | (cross & ~second)).to(dt)
        q = eq * rc.view(N, nb, s, K)
        kk = ek * kc.view(N, nb, s, K)
        A = torch.matmul(q, kk.transpose(-1, -2)).tril(-1)
        if s == C:
            A.diagonal(dim1=-2, dim2=-1).copy_(d.view(N, 1, C))
        yl = torch.matmul(A, vc.view(N, nb, s, V)).view(N, C, V)
        y = yl if y is None else y + yl
        if not bool(cross.any()):
            break
        act = cross.repeat_interleave(2, dim=1)
        s = m
    return y
