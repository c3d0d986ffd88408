"""RWKV-6 (and RWKV-5) matrix-state WKV as a chunked-parallel pure-PyTorch op.

Layout: ``r, k, w`` are ``[B, T, H, K]``, ``v`` is ``[B, T, H, V]``, ``u`` is ``[H, K]``
and the state ``S`` is ``[B, H, K, V]``. ``w`` is the *log* decay (finite, ``<= 0``,
the per-step factor is ``exp(w)``). Per head, with ``S_0`` the given state::

    y_t     = r_t^T (S_t + diag(u) k_t v_t^T)
    S_{t+1} = diag(exp(w_t)) S_t + k_t v_t^T

``wkv6(r, k, v, w, u, state)`` returns ``(y [B, T, H, V], S_T [B, H, K, V])`` in the
input dtype (float32 or float64). RWKV-5 is the same op with ``w`` constant in time
(an expanded view is fine). Only ``torch`` is imported, so the file can be copied
flat into a Hub remote-code folder. Gradients come from ordinary autograd.

Math. Cut T into chunks of C tokens. Inside a chunk let ``b_t = sum_{p<=t} w_p``
(inclusive, per channel) and ``a_t = b_t - w_t`` (exclusive). Then ::

    y_t = (r_t * e^{a_t}) S_chunk                                   (inter-chunk)
        + sum_{j<t} [sum_k r_tk k_jk e^{a_tk - b_jk}] v_j           (intra-chunk, A)
        + (sum_k r_tk u_k k_tk) v_t                                 (bonus, diag of A)
    S_next = diag(e^{b_last}) S_chunk + sum_j (k_j * e^{b_last - b_j}) v_j^T

All exponents above are <= 0 (``c`` is non-increasing), so the inter-chunk terms
and the chunk recurrence are always safe. The intra-chunk matrix A is a matmul
only after factoring ``e^{a_t - b_j} = e^{a_t - rho} e^{rho - b_j}`` through a
reference ``rho``; that is exact only while neither factor over/underflows.

Stability. A (block, channel) whose log-decay range R (over the positions that
actually form pairs) is <= ``L`` (60 in float32, 600 in float64) uses
``rho`` = middle of its range, so both factors lie in ``[e^{-L/2}, e^{L/2}]``.
Otherwise the block is halved: pairs straddling the halves are factored through
the boundary m, ``e^{a_t - a_m} * e^{a_m - b_j}`` with both factors <= 1 (always
exact), and pairs inside each half are handled the same way one level down
(blocks of 2 tokens have R = 0, so this ends). Each level is one batched matmul
in which every channel uses either its own reference or the boundary (channels
done at a coarser level are zeroed), so the cost is ~one extra pass per level,
and only inputs that need it (very strong decays) pay for more than one level.
The common case (all chunks in range) is a single level in the input dtype; the
hierarchical path computes log-space sums in float64 so that a huge early decay
cannot cost absolute precision on later, weakly decayed pairs.
"""
import torch
import torch.nn.functional as F

__all__ = ["wkv6"]

CHUNK = 64  # tokens per chunk (power of two); 32..64 is fastest on CPU
_MAX_RANGE = {torch.float64: 600.0}  # per-reference log-range; 60 for other dtypes


def wkv6(r, k, v, w, u, state):
    """Chunked RWKV-6 WKV. See the module docstring for layout and semantics."""
    return _wkv6(r, k, v, w, u, state)


def _wkv6(r, k, v, w, u, state, chunk_size=CHUNK, max_range=None):
    B, T, H, K = r.shape
    V = v.shape[-1]
    dt = r.dtype
    L = float(max_range if max_range is not None else _MAX_RANGE.get(dt, 60.0))
    C = min(chunk_size, 1 << max(T - 1, 0).bit_length())  # power of two, no bigger than needed
    n = -(-T // C)
    Tp, N, BH = n * C, n * B * H, B * H

    def chunked(x):
        # [B, T, H, D] -> [n, B, H, C, D] view; padding tokens (r=k=v=0, w=0) change nothing.
        if Tp != T:
            x = F.pad(x, (0, 0, 0, 0, 0, Tp - T))
        return x.reshape(B, n, C, H, x.shape[-1]).permute(1, 0, 3, 2, 4)

    r5, k5 = chunked(r), chunked(k)
    vc = chunked(v).reshape(N, C, V)  # copies into [n*B*H, C, V] for bmm
    wc = chunked(w).reshape(N, C, K)

    # Bonus term (diagonal of A): d_t = sum_k r_t u k_t.
    d = (r5 * k5 * u[None, None, :, None, :]).sum(-1).reshape(N, C)

    b = wc.cumsum(1)
    tot = b[:, -1:]  # [N, 1, K] chunk log-decay
    if (-tot).amax().item() <= L:
        # Fast path: one reference per chunk and channel, rho = tot / 2 (a_0 = 0, b_last = tot),
        # so every factor is within e^{+-L/2}. The state-side factors reuse them:
        # e^{a} = e^{a-rho} e^{rho}, e^{tot-b} = e^{rho-b} e^{tot-rho}, with rho = tot - rho <= 0.
        a = b - wc
        rho = tot * 0.5
        eq = torch.exp(a - rho).view(n, B, H, C, K)
        ek = torch.exp(rho - b).view(n, B, H, C, K)
        q = (eq * r5).view(N, C, K)  # factor first: output takes its contiguous layout
        kk = (ek * k5).view(N, C, K)
        erho = torch.exp(rho)
        qi = q * erho  # r * e^{a}
        ks = kk * erho  # k * e^{tot - b}
        A = torch.bmm(q, kk.transpose(1, 2)).tril(-1)
        A.diagonal(dim1=-2, dim2=-1).copy_(d)
        y = torch.bmm(A, vc)
    else:
        rc = r5.reshape(N, C, K)
        kc = k5.reshape(N, C, K)
        ld = torch.float64  # log-space in float64: see docstring
        w64 = wc.to(ld)
        b = w64.cumsum(1)
        a = b - w64
        tot = b[:, -1:]
        # State-side factors, exponents <= 0. e^{tot - b_j} uses a reverse cumsum so a large
        # decay early in the chunk does not swamp the small suffix sums.
        suf = w64.flip(1).cumsum(1).flip(1) - w64  # sum_{p>j} w_p
        qi = rc * torch.exp(a).to(dt)
        ks = kc * torch.exp(suf).to(dt)
        y = _intra_levels(rc, kc, vc, a, b, d, L, dt)
    U = torch.bmm(ks.transpose(1, 2), vc).view(n, BH, K, V)
    decay = torch.exp(tot).to(dt).view(n, BH, K, 1)

    # Chunk-boundary states, sequential over the n chunks (cheap: one fused op per chunk).
    S = state.reshape(BH, K, V)
    Ss = []
    for i in range(n):
        Ss.append(S)
        S = torch.addcmul(U[i], decay[i], S)
    S_all = torch.stack(Ss).view(N, K, V)
    y = torch.baddbmm(y, qi, S_all)
    y = y.view(n, B, H, C, V).permute(1, 0, 3, 2, 4).reshape(B, Tp, H, V)
    if Tp != T:
        y = y[:, :T]
    return y, S.view(B, H, K, V)


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
        # The clamp only touches entries that are masked out below (t = 0 / j = s-1 rows of
        # dense channels, the wrong half of cross channels); it keeps them finite.
        eq = torch.exp((al - ref).clamp(max=L / 2)).to(dt)
        ek = torch.exp((ref - bl).clamp(max=L / 2)).to(dt)
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
