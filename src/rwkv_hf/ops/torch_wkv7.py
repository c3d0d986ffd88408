"""Chunked-parallel RWKV-7 WKV ("generalized delta rule") in pure PyTorch.

Layout: r, k, w, a, b: [B, T, H, K]; v: [B, T, H, V]; state S: [B, H, K, V]
(key-major).  w is the log-decay (finite, <= 0).  Per token t:

    u_t = S^T a_t                                   (read with the OLD state)
    S   = diag(exp(w_t)) S + b_t u_t^T + k_t v_t^T
    y_t = S^T r_t                                   (output reads the NEW state)

``wkv7(r, k, v, w, a, b, state) -> (y [B,T,H,V], final state [B,H,K,V])``, in
the inputs' dtype (float32/float64), differentiable w.r.t. all seven inputs.
Depends on torch only (the file may be copied flat into remote-code folders).

Chunked form.  In a chunk of L tokens starting from state S0 let
c_t = w_0 + ... + w_t (c_{-1} = 0, c_L := c_{L-1}).  Unrolling gives

    S_t = e^{c_t} S0 + sum_{i<=t} e^{c_t - c_i} (b_i u_i^T + k_i v_i^T),

so the reads U = [u_0 .. u_{L-1}] solve a unit-lower-triangular system

    (I - A_ab) U = A_ak V + (a e^{c_{t-1}}) S0,
    A_ab[j,i] = sum_k a_jk e^{c_{j-1,k} - c_ik} b_ik  (i < j),   A_ak likewise with k.

With M = (I - A_ab)^{-1}:  U = F V + W S0,  F = M A_ak,  W = M (a e^{c_{t-1}}),
and with A_rb / A_rk the r-b / r-k matrices (diagonal included, i <= t):

    Y   = (r e^{c} + A_rb W) S0 + (A_rk + A_rb F) V
    S_L = (diag(e^{c_L}) + bh^T W) S0 + (kh + F^T bh)^T V,   bh/kh = b/k e^{c_L - c}.

Each chunk is thus an affine map S0 -> P S0 + Q (P: K x K).  Everything except
"S <- P S + Q" is computed for all chunks at once with batched matmuls; that
sequential step is one small batched matmul per chunk (_AffineScan).

Stability.  The pair factors e^{c_x - c_y} (x >= y) inside the L x L matrices
are split as e^{c_x - c_L} (query side, in [1, e^D]) times e^{c_L - c_y} (key
side, in [e^-D, 1]), D = -c_L the chunk's total decay; all other factors are
<= 1.  The chunk length is halved (per segment, from 32) until D <= D_MAX for
every chunk and channel: e^{+-40} (fp32) / e^{+-300} (fp64) are far from
overflow and underflow, so the split is exact to rounding (RWKV-7's
w >= -0.61 gives D <= 19.4 at L = 32; only much stronger decays shorten
chunks).  At L = 1 the log-decay is clamped at -D_MAX; exp(-D_MAX) (4e-18 /
5e-131) is zero to working precision, so this does not change results.

Speed (CPU).  The sequence is processed in segments of ~128 chunk-heads with
the state carried across, so each segment's tensors stay cache-resident.
"""
import torch

from . import reference

__all__ = ["wkv7"]

# Largest admissible total log-decay of one chunk (per channel), per dtype.
_D_MAX = {torch.float32: 40.0, torch.float64: 300.0}
_DEFAULT_CHUNK = 32
# CPU: chunk-heads (B*H*chunks) per segment, sized so per-segment tensors stay in cache.
_SEG_CHUNK_HEADS = 128


class _UnitLowerInv(torch.autograd.Function):
    """M = (I + N)^{-1} for batched N whose strictly lower part is used (diag/upper ignored)."""

    @staticmethod
    def forward(ctx, N):
        L = N.shape[-1]
        eye = torch.eye(L, dtype=N.dtype, device=N.device).expand_as(N)
        # upper=False, unitriangular=True: only the strictly lower part of N is read.
        M = torch.linalg.solve_triangular(N, eye, upper=False, unitriangular=True)
        ctx.save_for_backward(M)
        return M

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gM):
        (M,) = ctx.saved_tensors
        # dM = -M dN M  =>  dLoss/dN = -M^T gM M^T on the strict lower part.
        Mt = M.transpose(-1, -2)
        return torch.tril(Mt @ gM @ Mt, -1).neg_()


class _AffineScan(torch.autograd.Function):
    """S_{n+1} = P_n S_n + Q_n for n < N; returns all S_0..S_N as [N+1, ...].

    Hand-written so the sequential loop writes into one preallocated buffer
    (no per-step allocation or autograd node) and its backward is a single
    reverse loop: G_n = g_n + P_n^T G_{n+1}, dP = G_{1:} S_{:N}^T (batched).
    """

    @staticmethod
    def forward(ctx, P, Q, S):
        N = P.shape[0]
        out = S.new_empty((N + 1,) + tuple(S.shape))
        out[0] = S
        outs = out.unbind(0)
        for Pn, Qn, Sn, Sn1 in zip(P.unbind(0), Q.unbind(0), outs[:-1], outs[1:]):
            torch.baddbmm(Qn, Pn, Sn, out=Sn1)
        ctx.save_for_backward(P, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):
        P, out = ctx.saved_tensors
        N = P.shape[0]
        G = torch.empty_like(out)            # G[n] = dLoss/dS_n (total)
        G[N] = gout[N]
        for n in range(N - 1, -1, -1):
            torch.baddbmm(gout[n], P[n].transpose(1, 2), G[n + 1], out=G[n])
        gP = G[1:] @ out[:N].transpose(-1, -2)
        return gP, G[1:], G[0]


def _chunks(x, N, L):
    """[B, T, H, D] -> [N, B, H, L, D] view (zero-padded to N*L tokens if needed)."""
    pad = N * L - x.shape[1]
    if pad:  # padded tokens (w=0, k=b=0) leave the state unchanged
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
    return x.unflatten(1, (N, L)).permute(1, 0, 3, 2, 4)


def _segment(r, k, v, w, a, b, state, L, d_max):
    """One segment: returns (y as a [B, N, L, H, V] view, final state [B*H, K, V])."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    L = min(L, 1 << max(T - 1, 0).bit_length())  # no longer than needed
    # Chunk length: halve until every chunk's total log-decay (per channel) is
    # >= -d_max, so the factored exponentials below stay within e^{+-d_max}.
    while True:
        N = -(-T // L)
        c = _chunks(w, N, L).cumsum(3)       # c_t (inclusive); contiguous [N,B,H,L,K]
        if L == 1:
            # One token per chunk: clamping at -d_max changes exp(w) only below
            # working precision, and makes the bound hold.
            c = c.clamp(min=-d_max)
            break
        if bool(c[..., -1, :].min() >= -d_max):
            break
        L //= 2
    Bb = N * B * H
    r, k, v, a, b = (_chunks(x, N, L) for x in (r, k, v, a, b))

    cL = c[..., -1:, :]              # chunk total log-decay, [N, B, H, 1, K]
    eq = torch.exp(c - cL)           # e^{c_t - c_L} in [1, e^D]  (query side)
    ek = torch.reciprocal(eq)        # e^{c_L - c_t} in [e^-D, 1] (key side)
    gL = torch.exp(cL)               # e^{c_L}
    ea = torch.cat([torch.reciprocal(gL), eq[..., :-1, :]], 3)  # e^{c_{t-1} - c_L}
    # Exponential first: the products come out contiguous in chunk layout.
    aq = (ea * a).reshape(Bb, L, K)  # a_t e^{c_{t-1} - c_L}
    rq = (eq * r).reshape(Bb, L, K)  # r_t e^{c_t - c_L}
    bh = (ek * b).reshape(Bb, L, K)  # b_t e^{c_L - c_t}
    kh = (ek * k).reshape(Bb, L, K)  # k_t e^{c_L - c_t}
    v = v.reshape(Bb, L, V)
    gL = gL.reshape(Bb, 1, K)
    del c, eq, ek, ea  # (inference) dropping dead tensors early keeps the working set cache-hot

    # Pair matrices: query x key factors multiply to the exact e^{c_x - c_y}
    # (<= 1) on the (strictly) lower part that is used.
    bhT, khT = bh.transpose(1, 2), kh.transpose(1, 2)
    nA_ab = torch.baddbmm(aq.new_zeros(()).expand(Bb, L, L), aq, bhT, beta=0, alpha=-1)
    A_ak = (aq @ khT).tril_(-1)
    A_rb = (rq @ bhT).tril_()
    A_rk = (rq @ khT).tril_()

    M = _UnitLowerInv.apply(nA_ab)   # (I - A_ab)^{-1}; reads only the strict lower part
    F = M @ A_ak                     # U0 = F V
    W = M @ (aq * gL)                # U = U0 + W S0;  a_t e^{c_{t-1}}
    del nA_ab, A_ak, M, aq
    O0 = torch.baddbmm(A_rk, A_rb, F) @ v            # A_rb U0 + A_rk V
    R = torch.baddbmm(rq * gL, A_rb, W)              # r e^{c} + A_rb W
    del A_rk, A_rb, rq
    Kq = torch.baddbmm(kh, F.transpose(1, 2), bh)    # kh + F^T bh
    Q = Kq.transpose(1, 2) @ v                       # bh^T U0 + kh^T V
    del F, kh, khT, Kq, v
    P = bhT @ W                                      # + diag(e^{c_L})
    P.diagonal(dim1=1, dim2=2).add_(gL.squeeze(1))
    del bh, bhT, W

    # Sequential part over chunks: S <- P_n S + Q_n.
    S_all = _AffineScan.apply(P.view(N, B * H, K, K), Q.view(N, B * H, K, V), state)
    y = torch.baddbmm(O0, R, S_all[:N].reshape(Bb, K, V))  # [Bb, L, V]
    return y.view(N, B, H, L, V).permute(1, 0, 3, 2, 4), S_all[N]


def wkv7_chunked(r, k, v, w, a, b, state, chunk_size=None, segment_len=None):
    """wkv7 with explicit tuning knobs (used by tests and benchmarks).

    chunk_size: maximal chunk length (power of two; reduced automatically for
    strong decays).  segment_len: tokens processed per pass; the sequence is cut
    into segments (state carried between them) so that on CPU the per-segment
    working set stays cache-resident.  Default: ~_SEG_CHUNK_HEADS chunk-heads per
    segment on CPU, the whole sequence on other devices.
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    d_max = _D_MAX.get(r.dtype, 40.0)
    L = chunk_size or _DEFAULT_CHUNK
    if segment_len is None:
        segment_len = L * max(1, _SEG_CHUNK_HEADS // (B * H)) if r.device.type == "cpu" else T
    S = state.reshape(B * H, K, V)
    track = torch.is_grad_enabled() and any(x.requires_grad for x in (r, k, v, w, a, b, state))
    y = [] if track else r.new_empty(B, T, H, V)
    # split (not slicing): its backward is one concatenation, not a full-size zero-fill per segment
    parts = zip(*(x.split(segment_len, 1) for x in (r, k, v, w, a, b)))
    for t0, seg in zip(range(0, T, segment_len), parts):
        t1 = min(T, t0 + segment_len)
        y5, S = _segment(*seg, S, L, d_max)
        if track:  # autograd: concatenate (slice-assignment would copy the full grad per segment)
            y.append(y5.flatten(1, 2)[:, : t1 - t0])
            continue
        # Inference: write straight into [B, T, H, V]; the copy does the layout permutation.
        Lc = y5.shape[2]
        n = (t1 - t0) // Lc
        y[:, t0 : t0 + n * Lc].unflatten(1, (n, Lc)).copy_(y5[:, :n])
        if t0 + n * Lc < t1:
            y[:, t0 + n * Lc : t1] = y5[:, n, : t1 - t0 - n * Lc]
    if track:
        y = y[0].contiguous() if len(y) == 1 else torch.cat(y, 1)
    return y, S.view(B, H, K, V)


# Up to this many tokens (generation steps) the token loop beats the chunked form's setup.
SHORT = 4


def _step(r, k, v, w, a, b, S):
    """One token (a generation step) with as few ops as possible: the reference loop's math."""
    r, k, v, w, a, b = (x.squeeze(1) for x in (r, k, v, w, a, b))  # [B, H, K]
    # S <- diag(e^w) S + b (a^T S) + k v^T
    S = torch.addcmul(S * torch.exp(w).unsqueeze(-1) + b.unsqueeze(-1) @ (a.unsqueeze(-2) @ S),
                      k.unsqueeze(-1), v.unsqueeze(-2))
    return (r.unsqueeze(-2) @ S).transpose(1, 2), S


def wkv7(r, k, v, w, a, b, state):
    """RWKV-7 WKV: returns (y [B,T,H,V], final state [B,H,K,V]) in the input dtype."""
    if r.shape[1] == 1:
        return _step(r, k, v, w, a, b, state)
    if r.shape[1] <= SHORT:
        return reference.wkv7(r, k, v, w, a, b, state)
    return wkv7_chunked(r, k, v, w, a, b, state)
