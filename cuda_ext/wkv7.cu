// RWKV-7 WKV, the generalized delta rule.
//
//   S_t = A_t S_{t-1} + k_t v_t^T,  A_t = diag(d_t) + b_t a_t^T,  d_t = exp(w_t),
//   y_t = S_t^T r_t   (the output reads the NEW state; a reads the OLD state),
//   per head S is [K, V] = [N, N] (key-major), S_{-1} the initial state.
//
// Forward: one block per (batch, head) (and chunk, see below); each thread holds an R x C tile
// of S (Tile in wkv_common.h); the tokens' vectors are staged in shared memory, TT per barrier:
// sa = a^T S (column sums: the tile's rows, then the column block's lanes by shuffles);
// S = d (.) S + b sa^T + k v^T; y = r^T S. With gradients it also stores sa_t (float32
// [B, T, H, N]) and snapshots snap[c] = S_{c*kSnap - 1} (snap[0] = S_{-1}).
//
// Chunk-parallel form (few (batch, head) pairs, long T; the caller picks the chunk length L):
// pass 1 runs every chunk from S = 0 in parallel and also carries P = I through the
// recurrence without input, giving the chunk's end state L_c and transition
// P_c = A_end ... A_start; a combine pass walks the chunks in order, S_start[c+1] = P_c
// S_start[c] + L_c; pass 2 runs every chunk again from its start state, writing the outputs.
// The backward does the same for G (below) with P_c^T, going backwards over the chunks.
//
// Backward. G_t = dL/dS_t in full (S_t feeds y_t, S_{t+1}, and the final state):
//   G_{T-1} = gS_final + r_{T-1} gy_{T-1}^T,  G_{t-1} = A_t^T G_t + r_{t-1} gy_{t-1}^T,
//   gS_{-1} = A_0^T G_0,  with (A_t^T G)[i,:] = d_i G[i,:] + a_i c_t^T,  c_t = G_t^T b_t.
//   gr_t = S_t gy_t            gk_t = G_t v_t            gv_t = G_t^T k_t
//   gb_t = G_t sa_t            ga_t = S_{t-1} c_t        gw_t = d_t (.) rowsum(S_{t-1} (.) G_t)
// The row recurrence of S given sa is row-local: S_t[i,:] = d_i S_{t-1}[i,:] + b_i sa_t + k_i v_t.
// For gw (S forwards, G backwards) use per row i beta_t = S_t[i,:] . G_t[i,:]:
//   beta_t     = gw_t,i + b_i gb_t,i + k_i gk_t,i                        (expand S_t)
//   beta_{t-1} = gw_t,i + a_i ga_t,i + r_{t-1,i} gr_{t-1,i}              (expand G_{t-1})
// so forwards inside a chunk: gw_t = beta_{t-1} - a_t ga_t - r_{t-1} gr_{t-1},
// beta_t = gw_t + e_t with e_t = b_t gb_t + k_t gk_t, re-anchored at every chunk start by
// beta_{c*kSnap-1} = snap[c][i,:] . G_{c*kSnap-1}[i,:] (no inversion of the decay).
//
// Kernel B1 (backwards in time, one block per (batch, head)): lane group x holds row x and
// column x of G; row sums (gk, gb, anchors) and column sums (gv, c_x) need only the group's
// shuffles; the vector c_t is exchanged through shared memory (one barrier per token). Writes gk, gv, gb,
// e_t and c_t (float32 scratch), the anchors and gS_{-1}.
// Kernel B2 (forwards in time, one block per (batch, head, chunk), chunks in parallel):
// thread x holds row x of S from the chunk's snapshot; computes ga, gr and gw.
#include "wkv_common.h"

namespace rwkv_hf {
namespace {

// Forward over chunk blockIdx.y ([c*L, min(T, (c+1)*L)), L a multiple of kSnap; one chunk of
// L >= T when not chunked). LOCAL = false: from the chunk's start state s0[b, h, c] (the initial
// state when not chunked), writes y, sa, the snapshots the chunk starts or contains and, for the
// last chunk, the final state. LOCAL = true (pass 1 of the chunked form): from S = 0, writes only
// the chunk's end state `out[b, h, c]` and its transition `trans[b, h, c]` =
// A_{end} ... A_{start} (each column of P = I runs through the state recurrence without input).
template <typename F, int N, bool LOCAL>
__global__ void __launch_bounds__(Tile<N>::THREADS) wkv7_fwd_kernel(
    int T, int H, int L, const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,
    const float* __restrict__ w, const F* __restrict__ a, const F* __restrict__ bb,
    const float* __restrict__ s0 /* [B,H,NCL,N,N] */, F* __restrict__ y,
    float* __restrict__ out /* final state [B,H,N,N]; LOCAL: [B,H,NCL,N,N] */,
    float* __restrict__ snap /* [B,H,NC,N,N] | null */, float* __restrict__ sa_out /* | null */,
    float* __restrict__ trans /* LOCAL: [B,H,NCL,N,N] */) {
  using Tl = Tile<N>;
  constexpr int TT = Stage<N>::TT, R = Tl::R, C = Tl::C, NT = Tl::THREADS;
  __shared__ __align__(16) float s_r[TT][N];
  __shared__ __align__(16) float s_k[TT][N];
  __shared__ __align__(16) float s_d[TT][N];
  __shared__ __align__(16) float s_a[TT][N];
  __shared__ __align__(16) float s_b[TT][N];
  __shared__ __align__(16) float s_v[TT][N];
  const int bh = blockIdx.x, h = bh % H, b = bh / H, tid = threadIdx.x;
  const int c = blockIdx.y, NCL = gridDim.y, tbeg = c * L, tend = min(T, tbeg + L);
  const int rb = tid % Tl::RB, c0 = (tid / Tl::RB) * C;  // rows Tl::row(rb, 0 .. R-1), columns c0 ..
  const int mycol = c0 + Tl::col(rb);  // the column whose sums this lane ends up with
  const bool writer = rb % (Tl::RB / C) == 0;  // one lane per column of the block writes it
  const int NC = (T + kSnap - 1) / kSnap;
  const int64_t stride = (int64_t)H * N;
  const int64_t hbase = (int64_t)b * T * stride + (int64_t)h * N;
  const int64_t cell = ((int64_t)bh * NCL + c) * N * N + c0;  // column c0 of chunk c
  float S[R * C], P[LOCAL ? R * C : 1];  // S[e * C + cc] = S[row(rb, e)][c0 + cc]
#pragma unroll
  for (int e = 0; e < R; ++e)
#pragma unroll
    for (int cc = 0; cc < C; ++cc) {
      S[e * C + cc] = LOCAL ? 0.f : s0[cell + (int64_t)Tl::row(rb, e) * N + cc];
      if constexpr (LOCAL) P[e * C + cc] = Tl::row(rb, e) == c0 + cc ? 1.f : 0.f;
    }
  float* snp = LOCAL || snap == nullptr ? nullptr : snap + (int64_t)bh * NC * N * N + c0;
  auto store = [&](float* q, const float* X) {  // the tile X into the [N, N] matrix at q
#pragma unroll
    for (int e = 0; e < R; ++e)
#pragma unroll
      for (int cc = 0; cc < C; ++cc) q[(int64_t)Tl::row(rb, e) * N + cc] = X[e * C + cc];
  };
  if (snp != nullptr) store(snp + (int64_t)(tbeg / kSnap) * N * N, S);  // the chunk's start
  // Stage loads are issued one stage ahead into registers (E per array and thread), so their
  // latency hides behind the previous stage's tokens.
  constexpr int E = TT * N / NT;
  F pr[E] = {}, pk[E] = {}, pa[E] = {}, pb[E] = {}, pv[E] = {};
  float pw[E] = {};
  auto fetch = [&](int t0) {
    const int lim = min(TT, tend - t0) * N;
#pragma unroll
    for (int it = 0; it < E; ++it) {
      const int q = tid + it * NT;
      if (q < lim) {
        const int64_t o = hbase + (int64_t)(t0 + q / N) * stride + q % N;
        if constexpr (!LOCAL) pr[it] = r[o];
        pk[it] = k[o];
        pw[it] = w[o];
        pa[it] = a[o];
        pb[it] = bb[o];
        pv[it] = v[o];
      }
    }
  };
  fetch(tbeg);
  for (int t0 = tbeg; t0 < tend; t0 += TT) {
    const int cnt = min(TT, tend - t0);
    __syncthreads();
#pragma unroll
    for (int it = 0; it < E; ++it) {
      const int q = tid + it * NT, tt = q / N, x = q % N;
      if constexpr (!LOCAL) s_r[tt][x] = to_f(pr[it]);
      s_k[tt][x] = to_f(pk[it]);
      s_d[tt][x] = expf(pw[it]);
      s_a[tt][x] = to_f(pa[it]);
      s_b[tt][x] = to_f(pb[it]);
      s_v[tt][x] = to_f(pv[it]);
    }
    __syncthreads();
    if (t0 + TT < tend) fetch(t0 + TT);
    for (int tt = 0; tt < cnt; ++tt) {
      const int t = t0 + tt;
      float vv[C], sa[C], pa_[C];
#pragma unroll
      for (int cc = 0; cc < C; ++cc) {
        vv[cc] = s_v[tt][c0 + cc];  // (C consecutive floats: one vector load)
        sa[cc] = 0.f;
        pa_[cc] = 0.f;
      }
      // sa = a^T S (and a^T P) over the tile's rows, then over the column block's lanes.
#pragma unroll
      for (int e = 0; e < R; e += 4) {
        const float4 a4 = ld4(&s_a[tt][Tl::row(rb, e)]);
        const float ae[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
          for (int cc = 0; cc < C; ++cc) {
            sa[cc] += ae[m] * S[(e + m) * C + cc];
            if constexpr (LOCAL) pa_[cc] += ae[m] * P[(e + m) * C + cc];
          }
      }
      Tl::all_reduce(sa, rb);
      if constexpr (LOCAL) Tl::all_reduce(pa_, rb);
      float yp[C];
#pragma unroll
      for (int cc = 0; cc < C; ++cc) yp[cc] = 0.f;
#pragma unroll
      for (int e = 0; e < R; e += 4) {
        const int row = Tl::row(rb, e);
        const float4 d4 = ld4(&s_d[tt][row]), b4 = ld4(&s_b[tt][row]), k4 = ld4(&s_k[tt][row]);
        const float de[4] = {d4.x, d4.y, d4.z, d4.w}, be[4] = {b4.x, b4.y, b4.z, b4.w};
        const float ke[4] = {k4.x, k4.y, k4.z, k4.w};
        float re[4] = {0.f, 0.f, 0.f, 0.f};
        if constexpr (!LOCAL) {
          const float4 r4 = ld4(&s_r[tt][row]);
          re[0] = r4.x, re[1] = r4.y, re[2] = r4.z, re[3] = r4.w;
        }
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
          for (int cc = 0; cc < C; ++cc) {
            float& x = S[(e + m) * C + cc];
            x = x * de[m] + (be[m] * sa[cc] + ke[m] * vv[cc]);
            if constexpr (LOCAL) {
              float& p = P[(e + m) * C + cc];
              p = p * de[m] + be[m] * pa_[cc];
            } else {
              yp[cc] += re[m] * x;
            }
          }
      }
      if constexpr (!LOCAL) {
        const float yj = Tl::reduce_scatter(yp, rb);
        if (writer) {
          const int64_t o = hbase + (int64_t)t * stride + mycol;
          y[o] = from_f<F>(yj);
          if (sa_out != nullptr) {
            float sc = sa[0];
#pragma unroll
            for (int cc = 1; cc < C; ++cc) sc = c0 + cc == mycol ? sa[cc] : sc;
            sa_out[o] = sc;
          }
        }
        if (snp != nullptr && (t + 1) % kSnap == 0 && t + 1 < tend)
          store(snp + (int64_t)((t + 1) / kSnap) * N * N, S);
      }
    }
  }
  if constexpr (LOCAL) {
    store(out + cell, S);
    store(trans + cell, P);
  } else if (c == NCL - 1) {
    store(out + (int64_t)bh * N * N + c0, S);
  }
}

// B1: backwards in time over chunk blockIdx.y (as the forward kernel). Lane group x holds row x
// (Gr, entries qrow(qt, ..)) and column x (Gc, entries qrow(qt, ..)) of G. LOCAL = false: from G^{partial} at
// the chunk's last token, gend[b, h, c] (gS_final when not chunked), writes gk, gv, gb, e, c_t,
// the anchors of the chunk and, for the first chunk, gS_{-1}. LOCAL = true (pass 1 of the chunked
// form): from G = 0, writes only G^{partial} at the token before the chunk, `out[b, h, c]`.
template <typename F, int N, bool LOCAL>
__global__ void __launch_bounds__(N * kSplit) wkv7_bwd_b1_kernel(
    int T, int H, int L, const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,
    const float* __restrict__ w, const F* __restrict__ a, const F* __restrict__ bb,
    const float* __restrict__ snap, const float* __restrict__ sa, const F* __restrict__ gy,
    const float* __restrict__ gend /* [B,H,NCL,N,N] */, F* __restrict__ gk, F* __restrict__ gv,
    F* __restrict__ gb, float* __restrict__ e /* [B,T,H,N] */,
    float* __restrict__ cvec /* [B,T,H,N] */, float* __restrict__ anchor /* [B,H,NC,N] */,
    float* __restrict__ out /* gS_{-1} [B,H,N,N]; LOCAL: [B,H,NCL,N,N] */) {
  constexpr int TT = Stage<N>::TT, NR = N / kSplit, NT = N * kSplit;
  __shared__ __align__(16) float s_r[TT][N];
  __shared__ __align__(16) float s_k[TT][N];
  __shared__ __align__(16) float s_v[TT][N];
  __shared__ __align__(16) float s_d[TT][N];
  __shared__ __align__(16) float s_a[TT][N];
  __shared__ __align__(16) float s_b[TT][N];
  __shared__ __align__(16) float s_gy[TT][N];
  __shared__ __align__(16) float s_sa[TT][N];
  __shared__ __align__(16) float s_c[2][N];
  const int bh = blockIdx.x, h = bh % H, b = bh / H, tid = threadIdx.x;
  const int ch = blockIdx.y, NCL = gridDim.y, tbeg = ch * L, tend = min(T, tbeg + L);
  const int x = tid / kSplit, qt = tid % kSplit;  // entries qrow(qt, 0 .. NR - 1)
  const bool leader = tid % kSplit == 0;
  const int NC = (T + kSnap - 1) / kSnap;
  const int64_t stride = (int64_t)H * N;
  const int64_t hbase = (int64_t)b * T * stride + (int64_t)h * N;
  float Gr[NR], Gc[NR];  // G^{partial} (without the current token's r gy^T term)
  const float* gp = gend + ((int64_t)bh * NCL + ch) * N * N;
#pragma unroll
  for (int jj = 0; jj < NR; ++jj) Gr[jj] = LOCAL ? 0.f : gp[x * N + qrow(qt, jj)];
#pragma unroll
  for (int ii = 0; ii < NR; ++ii) Gc[ii] = LOCAL ? 0.f : gp[qrow(qt, ii) * N + x];
  const float* snp = snap + (int64_t)bh * NC * N * N + (int64_t)x * N;
  float* anp = anchor + (int64_t)bh * NC * N + x;
  int parity = 0;
  // Stage loads are issued one stage ahead into registers (see the forward kernel).
  constexpr int E = TT * N / NT;
  F pr[E] = {}, pk[E] = {}, pv[E] = {}, pa[E] = {}, pb[E] = {}, pg[E] = {};
  float pw[E] = {}, ps[E] = {};
  auto fetch = [&](int t0) {
    const int lim = min(TT, tend - t0) * N;
#pragma unroll
    for (int it = 0; it < E; ++it) {
      const int q = tid + it * NT;
      if (q < lim) {
        const int64_t o = hbase + (int64_t)(t0 + q / N) * stride + q % N;
        pr[it] = r[o];
        pk[it] = k[o];
        pv[it] = v[o];
        pw[it] = w[o];
        pa[it] = a[o];
        pb[it] = bb[o];
        pg[it] = gy[o];
        ps[it] = sa[o];
      }
    }
  };
  const int tlast = tbeg + ((tend - 1 - tbeg) / TT) * TT;  // the chunk's last stage
  fetch(tlast);
  for (int t0 = tlast; t0 >= tbeg; t0 -= TT) {
    const int cnt = min(TT, tend - t0);
    __syncthreads();
#pragma unroll
    for (int it = 0; it < E; ++it) {
      const int q = tid + it * NT, tt = q / N, xx = q % N;
      s_r[tt][xx] = to_f(pr[it]);
      s_k[tt][xx] = to_f(pk[it]);
      s_v[tt][xx] = to_f(pv[it]);
      s_d[tt][xx] = expf(pw[it]);
      s_a[tt][xx] = to_f(pa[it]);
      s_b[tt][xx] = to_f(pb[it]);
      s_gy[tt][xx] = to_f(pg[it]);
      s_sa[tt][xx] = ps[it];
    }
    __syncthreads();
    if (t0 - TT >= tbeg) fetch(t0 - TT);
    for (int tt = cnt - 1; tt >= 0; --tt) {
      const int t = t0 + tt;
      const float rx = s_r[tt][x], kx = s_k[tt][x], dx = s_d[tt][x], ax = s_a[tt][x];
      const float bx = s_b[tt][x], gyx = s_gy[tt][x];
      // Complete G_t with the output's term r_t gy_t^T; partial row sums over j, column sums
      // over i.
      float p0 = 0.f, p1 = 0.f, q0 = 0.f, q1 = 0.f, m0 = 0.f, m1 = 0.f, n0 = 0.f, n1 = 0.f;
#pragma unroll
      for (int l = 0; l < NR; l += 4) {
        const float4 g4 = ld4(&s_gy[tt][qrow(qt, l)]), v4 = ld4(&s_v[tt][qrow(qt, l)]);
        const float4 sa4 = ld4(&s_sa[tt][qrow(qt, l)]), r4 = ld4(&s_r[tt][qrow(qt, l)]);
        const float4 k4 = ld4(&s_k[tt][qrow(qt, l)]), b4 = ld4(&s_b[tt][qrow(qt, l)]);
        Gr[l] += rx * g4.x;
        Gr[l + 1] += rx * g4.y;
        Gr[l + 2] += rx * g4.z;
        Gr[l + 3] += rx * g4.w;
        Gc[l] += r4.x * gyx;
        Gc[l + 1] += r4.y * gyx;
        Gc[l + 2] += r4.z * gyx;
        Gc[l + 3] += r4.w * gyx;
        p0 += Gr[l] * v4.x + Gr[l + 1] * v4.y;
        p1 += Gr[l + 2] * v4.z + Gr[l + 3] * v4.w;
        q0 += Gr[l] * sa4.x + Gr[l + 1] * sa4.y;
        q1 += Gr[l + 2] * sa4.z + Gr[l + 3] * sa4.w;
        m0 += Gc[l] * k4.x + Gc[l + 1] * k4.y;
        m1 += Gc[l + 2] * k4.z + Gc[l + 3] * k4.w;
        n0 += Gc[l] * b4.x + Gc[l + 1] * b4.y;
        n1 += Gc[l + 2] * b4.z + Gc[l + 3] * b4.w;
      }
      if (!LOCAL && (t + 1) % kSnap == 0 && t + 1 < T) {  // anchor beta_t = S_t[x,:] . G_t[x,:]
        const int c = (t + 1) / kSnap;
        const float* q = snp + (int64_t)c * N * N;
        float b0 = 0.f, b1 = 0.f;
#pragma unroll
        for (int l = 0; l < NR; l += 4) {
          const float4 s4 = ld4(q + qrow(qt, l));
          b0 += s4.x * Gr[l] + s4.y * Gr[l + 1];
          b1 += s4.z * Gr[l + 2] + s4.w * Gr[l + 3];
        }
        const float beta = group_sum(b0 + b1);
        if (leader) anp[(int64_t)c * N] = beta;
      }
      const float cx = group_sum(n0 + n1);
      if (LOCAL && leader) s_c[parity][x] = cx;
      if (!LOCAL) {
        const float gkx = group_sum(p0 + p1), gbx = group_sum(q0 + q1);
        const float gvx = group_sum(m0 + m1);
        if (leader) {
          const int64_t o = hbase + (int64_t)t * stride + x;
          gk[o] = from_f<F>(gkx);
          gb[o] = from_f<F>(gbx);
          gv[o] = from_f<F>(gvx);
          e[o] = bx * gbx + kx * gkx;
          cvec[o] = cx;
          s_c[parity][x] = cx;
        }
      }
      __syncthreads();
      // G^{partial}_{t-1} = A_t^T G_t: rows d_x G[x,:] + a_x c^T, columns d (.) G[:,x] + a c_x.
#pragma unroll
      for (int l = 0; l < NR; l += 4) {
        const float4 c4 = ld4(&s_c[parity][qrow(qt, l)]);
        const float4 d4 = ld4(&s_d[tt][qrow(qt, l)]), a4 = ld4(&s_a[tt][qrow(qt, l)]);
        Gr[l] = Gr[l] * dx + ax * c4.x;
        Gr[l + 1] = Gr[l + 1] * dx + ax * c4.y;
        Gr[l + 2] = Gr[l + 2] * dx + ax * c4.z;
        Gr[l + 3] = Gr[l + 3] * dx + ax * c4.w;
        Gc[l] = Gc[l] * d4.x + a4.x * cx;
        Gc[l + 1] = Gc[l + 1] * d4.y + a4.y * cx;
        Gc[l + 2] = Gc[l + 2] * d4.z + a4.z * cx;
        Gc[l + 3] = Gc[l + 3] * d4.w + a4.w * cx;
      }
      parity ^= 1;
    }
  }
  if constexpr (LOCAL) {
    float* op = out + ((int64_t)bh * NCL + ch) * N * N + x;
#pragma unroll
    for (int ii = 0; ii < NR; ++ii) op[qrow(qt, ii) * N] = Gc[ii];
    return;
  }
  if (ch != 0) return;
  // G_{-1} = A_0^T G_0 is the gradient of the initial state; anchor beta_{-1} = S_{-1} . G_{-1}.
  {
    float b0 = 0.f, b1 = 0.f;
#pragma unroll
    for (int l = 0; l < NR; l += 4) {
      const float4 s4 = ld4(snp + qrow(qt, l));
      b0 += s4.x * Gr[l] + s4.y * Gr[l + 1];
      b1 += s4.z * Gr[l + 2] + s4.w * Gr[l + 3];
    }
    const float beta = group_sum(b0 + b1);
    if (leader) anp[0] = beta;
  }
  float* op = out + (int64_t)bh * N * N + x;
#pragma unroll
  for (int ii = 0; ii < NR; ++ii) op[qrow(qt, ii) * N] = Gc[ii];
}

template <typename F, int N>
__global__ void __launch_bounds__(N) wkv7_bwd_b2_kernel(
    int T, int H, const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,
    const float* __restrict__ w, const F* __restrict__ a, const F* __restrict__ bb,
    const float* __restrict__ snap, const float* __restrict__ sa, const F* __restrict__ gy,
    const float* __restrict__ e, const float* __restrict__ cvec, const float* __restrict__ anchor,
    F* __restrict__ gr, float* __restrict__ gw, F* __restrict__ ga) {
  constexpr int TT = Stage<N>::TT;
  __shared__ __align__(16) float s_v[TT][N];
  __shared__ __align__(16) float s_gy[TT][N];
  __shared__ __align__(16) float s_sa[TT][N];
  __shared__ __align__(16) float s_c[TT][N];
  const int bh = blockIdx.x, h = bh % H, b = bh / H, x = threadIdx.x, c = blockIdx.y;
  const int NC = (T + kSnap - 1) / kSnap;
  const int64_t stride = (int64_t)H * N;
  const int64_t base = (int64_t)b * T * stride + (int64_t)h * N + x;
  float Sr[N];
  const float* snp = snap + ((int64_t)bh * NC + c) * N * N + (int64_t)x * N;
#pragma unroll
  for (int j = 0; j < N; j += 4) {
    const float4 s4 = ld4(snp + j);
    Sr[j] = s4.x;
    Sr[j + 1] = s4.y;
    Sr[j + 2] = s4.z;
    Sr[j + 3] = s4.w;
  }
  float beta = anchor[((int64_t)bh * NC + c) * N + x];
  const int tbeg = c * kSnap, tend = min(T, tbeg + kSnap);
  // r_{t-1} gr_{t-1} for the chunk's first token: S_{tbeg-1} is the snapshot.
  float rgr_prev = 0.f;
  if (tbeg > 0) {
    const int64_t o = base + (int64_t)(tbeg - 1) * stride - x;  // row start of gy_{tbeg-1}
    float g0 = 0.f;
    for (int j = 0; j < N; ++j) g0 += Sr[j] * to_f(gy[o + j]);
    rgr_prev = to_f(r[o + x]) * g0;
  }
  for (int t0 = tbeg; t0 < tend; t0 += TT) {
    const int cnt = min(TT, tend - t0);
    __syncthreads();
    for (int tt = 0; tt < cnt; ++tt) {
      const int64_t o = base + (int64_t)(t0 + tt) * stride;
      s_v[tt][x] = to_f(v[o]);
      s_gy[tt][x] = to_f(gy[o]);
      s_sa[tt][x] = sa[o];
      s_c[tt][x] = cvec[o];
    }
    __syncthreads();
    for (int tt = 0; tt < cnt; ++tt) {
      const int64_t o = base + (int64_t)(t0 + tt) * stride;
      const float rx = to_f(r[o]), kx = to_f(k[o]), dx = expf(w[o]);
      const float ax = to_f(a[o]), bx = to_f(bb[o]), ex = e[o];
      float a0 = 0.f, a1 = 0.f;
#pragma unroll
      for (int j = 0; j < N; j += 4) {
        const float4 c4 = ld4(&s_c[tt][j]);
        a0 += Sr[j] * c4.x + Sr[j + 1] * c4.y;
        a1 += Sr[j + 2] * c4.z + Sr[j + 3] * c4.w;
      }
      const float gax = a0 + a1;
      const float gwt = beta - ax * gax - rgr_prev;
      beta = gwt + ex;
      float g0 = 0.f, g1 = 0.f;
#pragma unroll
      for (int j = 0; j < N; j += 4) {
        const float4 sa4 = ld4(&s_sa[tt][j]), v4 = ld4(&s_v[tt][j]), g4 = ld4(&s_gy[tt][j]);
        Sr[j] = Sr[j] * dx + (bx * sa4.x + kx * v4.x);
        Sr[j + 1] = Sr[j + 1] * dx + (bx * sa4.y + kx * v4.y);
        Sr[j + 2] = Sr[j + 2] * dx + (bx * sa4.z + kx * v4.z);
        Sr[j + 3] = Sr[j + 3] * dx + (bx * sa4.w + kx * v4.w);
        g0 += Sr[j] * g4.x + Sr[j + 1] * g4.y;
        g1 += Sr[j + 2] * g4.z + Sr[j + 3] * g4.w;
      }
      const float grx = g0 + g1;
      ga[o] = from_f<F>(gax);
      gw[o] = gwt;
      gr[o] = from_f<F>(grx);
      rgr_prev = rx * grx;
    }
  }
}

void check_v7(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
              const at::Tensor& a, const at::Tensor& b) {
  check_cuda_tensor(r, "r");
  TORCH_CHECK(r.dim() == 4, "rwkv_hf cuda wkv7: r must be [B, T, H, K]");
  check_act(k, r, "k");
  check_act(v, r, "v");
  check_act(a, r, "a");
  check_act(b, r, "b");
  check_float(w, "w");
  TORCH_CHECK(k.sizes() == r.sizes() && w.sizes() == r.sizes() && a.sizes() == r.sizes() &&
                  b.sizes() == r.sizes(),
              "rwkv_hf cuda wkv7: r, k, w, a, b must share one shape [B, T, H, K]");
  TORCH_CHECK(v.sizes() == r.sizes(), "rwkv_hf cuda wkv7: needs V == K (v of r's shape), got v ",
              v.sizes(), " and r ", r.sizes());
}

}  // namespace

std::vector<at::Tensor> wkv7_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                     at::Tensor a, at::Tensor b, at::Tensor s0, bool save,
                                     int64_t chunk) {
  check_v7(r, k, v, w, a, b);
  check_float(s0, "state");
  const int B = r.size(0), T = r.size(1), H = r.size(2), n = r.size(3);
  TORCH_CHECK(s0.numel() == (int64_t)B * H * n * n, "rwkv_hf cuda wkv7: state must be [B, H, K, V]");
  const int L = chunk_length(chunk, T), NCL = (T + L - 1) / L;
  const at::cuda::OptionalCUDAGuard guard(r.device());
  auto y = at::empty_like(v);
  auto sT = at::empty({B, H, n, n}, s0.options());
  const int NC = (T + kSnap - 1) / kSnap;
  auto snap = save ? at::empty({B, H, NC, n, n}, s0.options()) : at::empty({0}, s0.options());
  auto sa = save ? at::empty({B, T, H, n}, s0.options()) : at::empty({0}, s0.options());
  auto trans = at::empty({NCL > 1 ? B : 0, H, NCL, n, n}, s0.options());
  if (B * H == 0) return {y, sT, snap, sa, trans};
  auto starts = s0.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  RWKV_HF_DISPATCH_F(r.scalar_type(), "wkv7", [&] {
    RWKV_HF_DISPATCH_N(n, "wkv7", [&] {
      const F *pr = (const F*)r.data_ptr(), *pk = (const F*)k.data_ptr(),
              *pv = (const F*)v.data_ptr(), *pa = (const F*)a.data_ptr(),
              *pb = (const F*)b.data_ptr();
      if (NCL > 1) {  // pass 1: chunks from zero in parallel; then the chunk start states
        auto local = at::empty({B, H, NCL, n, n}, s0.options());
        starts = at::empty({B, H, NCL, n, n}, s0.options());
        starts.select(2, 0).copy_(s0.view({B, H, n, n}));
        wkv7_fwd_kernel<F, N, true><<<dim3(B * H, NCL), Tile<N>::THREADS, 0, stream>>>(
            T, H, L, pr, pk, pv, w.data_ptr<float>(), pa, pb, nullptr, nullptr,
            local.data_ptr<float>(), nullptr, nullptr, trans.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        chunk_combine_kernel<N><<<dim3(B * H, N / 16), N, 0, stream>>>(
            NCL, false, trans.data_ptr<float>(), local.data_ptr<float>(), starts.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      wkv7_fwd_kernel<F, N, false><<<dim3(B * H, NCL), Tile<N>::THREADS, 0, stream>>>(
          T, H, L, pr, pk, pv, w.data_ptr<float>(), pa, pb, starts.data_ptr<float>(),
          (F*)y.data_ptr(), sT.data_ptr<float>(), save ? snap.data_ptr<float>() : nullptr,
          save ? sa.data_ptr<float>() : nullptr, nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (!save) trans = at::empty({0, H, NCL, n, n}, s0.options());
  return {y, sT, snap, sa, trans};
}

std::vector<at::Tensor> wkv7_backward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                      at::Tensor a, at::Tensor b, at::Tensor snap, at::Tensor sa,
                                      at::Tensor trans, at::Tensor gy, at::Tensor gsT,
                                      int64_t chunk) {
  check_v7(r, k, v, w, a, b);
  check_act(gy, r, "gy");
  check_float(snap, "snapshots");
  check_float(sa, "sa");
  check_float(gsT, "gsT");
  const int B = r.size(0), T = r.size(1), H = r.size(2), n = r.size(3);
  const int NC = (T + kSnap - 1) / kSnap;
  const int L = chunk_length(chunk, T), NCL = (T + L - 1) / L;
  TORCH_CHECK(snap.numel() == (int64_t)B * H * NC * n * n && sa.numel() == r.numel(),
              "rwkv_hf cuda wkv7: bad saved tensors");
  TORCH_CHECK(NCL == 1 || trans.numel() == (int64_t)B * H * NCL * n * n,
              "rwkv_hf cuda wkv7: the chunk transitions of the forward are missing (chunk ", chunk,
              ")");
  if (NCL > 1) check_float(trans, "transitions");
  TORCH_CHECK(NC < 65536, "rwkv_hf cuda wkv7: sequence too long (T >= ", 65536 * kSnap, ")");
  const at::cuda::OptionalCUDAGuard guard(r.device());
  auto f32 = r.options().dtype(at::kFloat);
  auto gr = at::empty_like(r), gk = at::empty_like(r), gv = at::empty_like(v);
  auto ga = at::empty_like(r), gb = at::empty_like(r);
  auto gw = at::empty({B, T, H, n}, f32);
  auto gs0 = at::empty({B, H, n, n}, f32);
  if (B * H == 0) return {gr, gk, gv, gw, ga, gb, gs0};
  auto e = at::empty({B, T, H, n}, f32), cvec = at::empty({B, T, H, n}, f32);
  auto anchor = at::empty({B, H, NC, n}, f32);
  auto gend = gsT.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  RWKV_HF_DISPATCH_F(r.scalar_type(), "wkv7", [&] {
    RWKV_HF_DISPATCH_N(n, "wkv7", [&] {
      const F *pr = (const F*)r.data_ptr(), *pk = (const F*)k.data_ptr(),
              *pv = (const F*)v.data_ptr(), *pa = (const F*)a.data_ptr(),
              *pb = (const F*)b.data_ptr(), *pg = (const F*)gy.data_ptr();
      if (NCL > 1) {  // pass 1: chunks from G = 0 in parallel; then G at every chunk's end
        auto local = at::empty({B, H, NCL, n, n}, f32);
        gend = at::empty({B, H, NCL, n, n}, f32);
        gend.select(2, NCL - 1).copy_(gsT.view({B, H, n, n}));
        wkv7_bwd_b1_kernel<F, N, true><<<dim3(B * H, NCL), N * kSplit, 0, stream>>>(
            T, H, L, pr, pk, pv, w.data_ptr<float>(), pa, pb, snap.data_ptr<float>(),
            sa.data_ptr<float>(), pg, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
            nullptr, local.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        chunk_combine_kernel<N><<<dim3(B * H, N / 16), N, 0, stream>>>(
            NCL, true, trans.data_ptr<float>(), local.data_ptr<float>(), gend.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      wkv7_bwd_b1_kernel<F, N, false><<<dim3(B * H, NCL), N * kSplit, 0, stream>>>(
          T, H, L, pr, pk, pv, w.data_ptr<float>(), pa, pb, snap.data_ptr<float>(),
          sa.data_ptr<float>(), pg, gend.data_ptr<float>(), (F*)gk.data_ptr(), (F*)gv.data_ptr(),
          (F*)gb.data_ptr(), e.data_ptr<float>(), cvec.data_ptr<float>(),
          anchor.data_ptr<float>(), gs0.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      wkv7_bwd_b2_kernel<F, N><<<dim3(B * H, NC), N, 0, stream>>>(
          T, H, pr, pk, pv, w.data_ptr<float>(), pa, pb, snap.data_ptr<float>(),
          sa.data_ptr<float>(), pg, e.data_ptr<float>(), cvec.data_ptr<float>(),
          anchor.data_ptr<float>(), (F*)gr.data_ptr(), gw.data_ptr<float>(), (F*)ga.data_ptr());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {gr, gk, gv, gw, ga, gb, gs0};
}

}  // namespace rwkv_hf
