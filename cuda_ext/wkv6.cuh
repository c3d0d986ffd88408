// RWKV-5/6 WKV (matrix state, diagonal per-token decay, bonus u).
//
//   y_t = r_t^T (S_{t-1} + diag(u) k_t v_t^T),      S_t = diag(d_t) S_{t-1} + k_t v_t^T,
//   d_t = exp(w_t); per head S is [K, V] = [N, N] (key-major), S_{-1} the initial state.
//
// Forward: one block per (batch, head) (and chunk: the chunk-parallel form of wkv7.cu, with
// the diagonal transition diag(prod_t d_t)); each thread holds an R x C tile of S (FwdTile in
// wkv_common.h; y is summed over the column block's lanes once per group of kGroup tokens);
// r, k, v, exp(w), u*k of TT tokens are staged in shared memory per barrier.
// When gradients are needed it stores snapshots snap[c] = S_{c*kSnap - 1} (snap[0] = S_{-1}).
//
// Backward. G_t = dL/dS_t (S_t feeds y_{t+1}, S_{t+1} and, for the last token, the final
// state): G_{T-1} = gS_final, G_{t-1} = diag(d_t) G_t + r_t gy_t^T, and gS_{-1} = G_{-1}.
//   gr_t = S_{t-1} gy_t + u (.) k_t (v_t . gy_t)
//   gk_t = G_t v_t      + u (.) r_t (v_t . gy_t)
//   gv_t = G_t^T k_t    + gy_t (r_t . (u (.) k_t))
//   gu   = sum_t r_t (.) k_t (v_t . gy_t)
//   gw_t = d_t (.) rowsum(S_{t-1} (.) G_t)            ((.) elementwise, per key row i)
// gw needs S_{t-1} and G_t together, S running forwards and G backwards. Instead of inverting
// the decay (unstable: d can be ~0), use per key row i the scalar beta_t = S_t[i,:] . G_t[i,:]:
//   beta_t     = d_i S_{t-1}[i,:].G_t[i,:] + k_i (v_t . G_t[i,:]) = gw_t,i + k_t,i gks_t,i
//   beta_{t-1} = S_{t-1}[i,:].(d_i G_t[i,:] + r_i gy_t)         = gw_t,i + r_t,i grs_t,i
// with gks = G_t v_t and grs = S_{t-1} gy_t. So, going forwards inside a chunk,
//   gw_t = beta_{t-1} - r_t grs_t,   beta_t = gw_t + k_t gks_t,
// exact, without exponentials, and re-anchored at each chunk start by the directly computed
// beta_{c*kSnap-1} = snap[c][i,:] . G_{c*kSnap-1}[i,:], so rounding runs over <= kSnap steps.
//
// Kernel B1 (one block per (batch, head), backwards in time): R x C tiles of G (BwdTile in
// wkv_common.h), tokens in groups of kGroup: gv (column sums, shuffles once per group), gk and
// gks (row sums: shuffles over the warp's column blocks, then shared memory once per group),
// e_t = k_t gks_t (float32 scratch), the anchors beta, and gS_{-1}.
// Kernel B2 (one block per (batch, head, chunk), forwards in time, chunks in parallel): R x C
// tiles of S from the chunk's snapshot (RowTile); computes grs, gr, gw (beta chain), gu.
//
// `rev`: every kernel reads and writes token t of its scan at position T-1-t (the right-to-left
// half of bi_wkv6 runs on the sequence as it is, no flipped copies); snapshots, chunks and
// scratch follow the scan's order. WC: w is [H, N], one decay for every token (RWKV-5), read in
// place (a template parameter: a runtime choice of the address costs the kernels registers).
// The launchers are instantiated with WC = false in wkv6.cu and WC = true in wkv5.cu: two
// units that compile in parallel (together they took twice as long as either).
// The per-token outputs y, gk, gv, gr are OutVec (wkv_launch.h): rounded once, or float32; gw
// (in w's type FW, float or F) is one too, so that bi_wkv6's second half adds the first's.
#pragma once

#include "wkv_common.h"

namespace rwkv_hf {
namespace {

// Forward over chunk blockIdx.y ([c*L, min(T, (c+1)*L)), L a multiple of kSnap; one chunk of
// L >= T when not chunked). LOCAL = false: from the chunk's start state (at s0 + b s0b +
// (h NCL + c) N N: the chunk starts, or the initial state when not chunked; null: zero),
// writes y, the snapshots the chunk starts or contains and, for the last chunk, the final state
// (at out + b outb + h N N: the batch strides let bi_wkv6's halves read and write their slices
// of [B, 2, H, N, N] in place). LOCAL = true (pass 1 of the chunked form): from S = 0, writes
// only the chunk's end state `out[b, h, c]` and its transition `trans[b, h, c]` =
// diag(prod_t d_t).
// Tokens go in groups of kGroup (y's column sums reduced and stored once per group). The bonus
// is rank one, y_j = sum_i r_i S_ij + v_j (r . (u (.) k)): one multiply per entry for y.
template <typename F, typename FW, int N, bool LOCAL, bool WC>
__global__ void __launch_bounds__(FwdTile<N>::THREADS) wkv6_fwd_kernel(
    int T, int H, int L, bool rev, const F* __restrict__ r, const F* __restrict__ k,
    const F* __restrict__ v, const FW* __restrict__ w, const float* __restrict__ u,
    const float* __restrict__ s0, int64_t s0b, OutVec<F> y,
    float* __restrict__ out /* final state; LOCAL: [B,H,NCL,N,N] */, int64_t outb,
    float* __restrict__ snap /* [B,H,NC,N,N] | null */,
    float* __restrict__ trans /* LOCAL: [B,H,NCL,N,N] */) {
  using Tl = FwdTile<N>;
  constexpr int TT = Stage<N>::TT, R = Tl::R, C = Tl::C, NT = Tl::THREADS, G = kGroup;
  constexpr int Q = G * C / Tl::RB;  // y values per lane and group
  __shared__ __align__(16) float s_r[TT][N];
  __shared__ __align__(16) float s_k[TT][N];
  __shared__ __align__(16) float s_d[TT][N];
  __shared__ __align__(16) float s_uk[TT][N];
  __shared__ __align__(16) float s_v[TT][N];
  const int bh = blockIdx.x, h = bh % H, b = bh / H, tid = threadIdx.x;
  const int c = blockIdx.y, NCL = gridDim.y, tbeg = c * L, tend = min(T, tbeg + L);
  const int rb = Tl::rb_of(tid), c0 = Tl::cb_of(tid) * C;  // rows Tl::row(rb, 0 .. R-1), columns c0 ..
  const int NC = (T + kSnap - 1) / kSnap;
  const int64_t stride = (int64_t)H * N;
  const int64_t hbase = (int64_t)b * T * stride + (int64_t)h * N;
  auto tok = [&](int t) { return hbase + (int64_t)(rev ? T - 1 - t : t) * stride; };
  const int64_t cell = ((int64_t)bh * NCL + c) * N * N + c0;  // column c0 of chunk c
  const int64_t start = b * s0b + ((int64_t)h * NCL + c) * N * N + c0;  // s0's column c0
  const bool zero = LOCAL || s0 == nullptr;
  float S[R * C], P[LOCAL ? R : 1];  // S[e * C + cc] = S[row(rb, e)][c0 + cc]; P: decay products
#pragma unroll
  for (int e = 0; e < R; ++e) {
#pragma unroll
    for (int cc = 0; cc < C; ++cc)
      S[e * C + cc] = zero ? 0.f : s0[start + (int64_t)Tl::row(rb, e) * N + cc];
    if constexpr (LOCAL) P[e] = 1.f;
  }
  float* snp = LOCAL || snap == nullptr ? nullptr : snap + (int64_t)bh * NC * N * N + c0;
  auto store = [&](float* q) {  // the tile of S into the [N, N] matrix at q
#pragma unroll
    for (int e = 0; e < R; ++e)
#pragma unroll
      for (int cc = 0; cc < C; ++cc) q[(int64_t)Tl::row(rb, e) * N + cc] = S[e * C + cc];
  };
  if (snp != nullptr) store(snp + (int64_t)(tbeg / kSnap) * N * N);  // the chunk's start
  // Stage loads (see wkv7_fwd_kernel): E consecutive elements per array and thread, one stage
  // ahead into registers.
  constexpr int E = TT * N / NT;
  const int sq = tid * E, stt = sq / N, sx = sq % N;
  Raw<F, E> pr, pk, pv;
  Raw<FW, E> pw;
  auto fetch = [&](int t0) {
    if (t0 + stt < tend) {
      const int64_t o = tok(t0 + stt) + sx;
      if constexpr (!LOCAL) pr.load(r + o);
      pk.load(k + o);
      pw.load(w + (WC ? h * N + sx : o));
      pv.load(v + o);
    }
  };
  fetch(tbeg);
  for (int t0 = tbeg; t0 < tend; t0 += TT) {
    const int cnt = min(TT, tend - t0);
    __syncthreads();
    if constexpr (!LOCAL) {
      pr.to_shared(&s_r[stt][sx]);
      float uk[E];
#pragma unroll
      for (int i = 0; i < E; ++i) uk[i] = u == nullptr ? 0.f : u[h * N + sx + i] * pk.get(i);
      st_shared(&s_uk[stt][sx], uk);
    }
    pk.to_shared(&s_k[stt][sx]);
    pw.to_shared(&s_d[stt][sx], true);
    pv.to_shared(&s_v[stt][sx]);
    __syncthreads();
    if (t0 + TT < tend) fetch(t0 + TT);
    for (int g0 = 0; g0 < cnt; g0 += G) {
      float yg[G * C];  // y's partial sums of the group's tokens, [token][column]
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int tt = g0 + g;
#pragma unroll
        for (int cc = 0; cc < C; ++cc) yg[g * C + cc] = 0.f;
        if (tt >= cnt) continue;
        float vv[C];
#pragma unroll
        for (int cc = 0; cc < C; ++cc) vv[cc] = s_v[tt][c0 + cc];  // (one vector load)
        float ruk = 0.f;  // the tile rows' part of r . (u (.) k): the bonus, once per column
#pragma unroll
        for (int e = 0; e < R; e += 4) {
          const int row = Tl::row(rb, e);
          const float4 k4 = ld4(&s_k[tt][row]), d4 = ld4(&s_d[tt][row]);
          const float ke[4] = {k4.x, k4.y, k4.z, k4.w}, de[4] = {d4.x, d4.y, d4.z, d4.w};
          float re[4] = {0.f, 0.f, 0.f, 0.f};
          if constexpr (!LOCAL) {
            const float4 r4 = ld4(&s_r[tt][row]), uk4 = ld4(&s_uk[tt][row]);
            re[0] = r4.x, re[1] = r4.y, re[2] = r4.z, re[3] = r4.w;
            ruk += r4.x * uk4.x + r4.y * uk4.y + r4.z * uk4.z + r4.w * uk4.w;
          }
#pragma unroll
          for (int m = 0; m < 4; ++m) {
#pragma unroll
            for (int cc = 0; cc < C; ++cc) {
              float& x = S[(e + m) * C + cc];
              if constexpr (!LOCAL) yg[g * C + cc] += re[m] * x;
              x = x * de[m] + ke[m] * vv[cc];
            }
            if constexpr (LOCAL) P[e + m] *= de[m];
          }
        }
        if constexpr (!LOCAL) {
#pragma unroll
          for (int cc = 0; cc < C; ++cc) yg[g * C + cc] += ruk * vv[cc];
        }
      }
      if constexpr (!LOCAL) {
        Tl::reduce_scatter_n(yg, rb);  // lane rb: entries Q rb .. of [token][column]
#pragma unroll
        for (int q = 0; q < Q; ++q) {
          const int i = Q * rb + q, tt = g0 + i / C;
          if (tt < cnt) put(y, tok(t0 + tt) + c0 + i % C, yg[q]);
        }
        const int t = t0 + g0 + G - 1;  // snapshots fall on group ends (kSnap % kGroup == 0)
        if (snp != nullptr && (t + 1) % kSnap == 0 && t + 1 < tend)
          store(snp + (int64_t)((t + 1) / kSnap) * N * N);
      }
    }
  }
  if constexpr (LOCAL) {
    store(out + cell);
#pragma unroll
    for (int e = 0; e < R; ++e)
#pragma unroll
      for (int cc = 0; cc < C; ++cc) {
        const int row = Tl::row(rb, e);
        trans[cell + (int64_t)row * N + cc] = row == c0 + cc ? P[e] : 0.f;
      }
  } else if (c == NCL - 1) {
    store(out + b * outb + (int64_t)h * N * N + c0);
  }
}

// B1: backwards in time over chunk blockIdx.y (as the forward kernel), on BwdTile's R x C tiles
// of G, in groups of kGroup tokens (see wkv7.cu: gv's column sums reduced once per group; the row
// sums gk, gks (= G v) and the anchors summed over the warp's column blocks by shuffles, then over
// the warps through shared memory once per RG tokens by all threads). LOCAL = false: from G at
// the chunk's last token (at gend + b gendb + (h NCL + ch) N N: gS_final when not chunked;
// null: zero), writes gk, gv, e, the anchors of the chunk and, for the first chunk, gS_{-1} (at
// out + b outb + h N N). LOCAL = true (pass 1 of the chunked form): from G = 0, writes only G at
// the token before the chunk, `out[b, h, c]`. The bonus terms enter the sums through
// G + diag(r u) 1 gy^T, as rank-one parts of the sums (one multiply per row or column, not per
// entry): gk_i = sum_j (G_ij + r_i u_i gy_j) v_j = gks_i + r_i u_i (v . gy),
// gv_j = sum_i (G_ij + r_i u_i gy_j) k_i = (G^T k)_j + gy_j ((r u) . k).
template <typename F, typename FW, int N, bool LOCAL, bool WC>
__global__ void __launch_bounds__(BwdTile<N>::THREADS) wkv6_bwd_b1_kernel(
    int T, int H, int L, bool rev, const F* __restrict__ r, const F* __restrict__ k,
    const F* __restrict__ v, const FW* __restrict__ w, const float* __restrict__ u,
    const float* __restrict__ snap, const F* __restrict__ gy,
    const float* __restrict__ gend, int64_t gendb, OutVec<F> gk, OutVec<F> gv,
    float* __restrict__ e /* [B,T,H,N] */, float* __restrict__ anchor /* [B,H,NC,N] */,
    float* __restrict__ out /* gS_{-1}; LOCAL: [B,H,NCL,N,N] */, int64_t outb) {
  using Tl = BwdTile<N>;
  // 8 tokens per stage (4 for N = 128): the staged vectors and the row sums share 48 KB.
  constexpr int TT = N == 128 ? 4 : 8, R = Tl::R, C = Tl::C, NT = Tl::THREADS, W = Tl::WARPS;
  constexpr int G = kGroup, Q = G * C / Tl::RB;  // gv values per lane and group
  constexpr int RG = N == 128 ? 1 : G;  // tokens per flush of the row sums
  __shared__ __align__(16) float s_r[TT][N];
  __shared__ __align__(16) float s_k[TT][N];
  __shared__ __align__(16) float s_v[TT][N];
  __shared__ __align__(16) float s_d[TT][N];
  __shared__ __align__(16) float s_gy[TT][N];
  __shared__ __align__(16) float s_ru[TT][N];
  // Row partial sums per token of the flush, vector (gk, gks) and warp; the anchors' partials
  // (every kSnap tokens, on a group's first token).
  __shared__ __align__(16) float s_row[LOCAL ? 1 : RG][2][LOCAL ? 1 : W][N];
  __shared__ __align__(16) float s_anc[LOCAL ? 1 : W][N];
  const int bh = blockIdx.x, h = bh % H, b = bh / H, tid = threadIdx.x;
  const int ch = blockIdx.y, NCL = gridDim.y, tbeg = ch * L, tend = min(T, tbeg + L);
  const int rb = Tl::rb_of(tid), c0 = Tl::cb_of(tid) * C;
  const int NC = (T + kSnap - 1) / kSnap;
  const int64_t stride = (int64_t)H * N;
  const int64_t hbase = (int64_t)b * T * stride + (int64_t)h * N;
  auto tok = [&](int t) { return hbase + (int64_t)(rev ? T - 1 - t : t) * stride; };
  float G_[R * C];  // G_[e * C + cc] = G[row(rb, e)][c0 + cc]
  const float* gp =
      LOCAL || gend == nullptr ? nullptr : gend + b * gendb + ((int64_t)h * NCL + ch) * N * N + c0;
#pragma unroll
  for (int e2 = 0; e2 < R; ++e2)
#pragma unroll
    for (int cc = 0; cc < C; ++cc)
      G_[e2 * C + cc] = gp == nullptr ? 0.f : gp[(int64_t)Tl::row(rb, e2) * N + cc];
  const float* snp = snap + (int64_t)bh * NC * N * N + c0;
  // Stage loads (see wkv7_fwd_kernel): E consecutive elements per array and thread.
  constexpr int E = TT * N / NT;
  const int sq = tid * E, stt = sq / N, sx = sq % N;
  Raw<F, E> pr, pk, pv, pg;
  Raw<FW, E> pw;
  auto fetch = [&](int t0) {
    if (t0 + stt < tend) {
      const int64_t o = tok(t0 + stt) + sx;
      pr.load(r + o);
      pw.load(w + (WC ? h * N + sx : o));
      pg.load(gy + o);
      if constexpr (!LOCAL) {
        pk.load(k + o);
        pv.load(v + o);
      }
    }
  };
  const int tlast = tbeg + ((tend - 1 - tbeg) / TT) * TT;  // the chunk's last stage
  fetch(tlast);
  for (int t0 = tlast; t0 >= tbeg; t0 -= TT) {
    const int cnt = min(TT, tend - t0);
    __syncthreads();
    pr.to_shared(&s_r[stt][sx]);
    if constexpr (!LOCAL) {
      float ru[E];
#pragma unroll
      for (int i = 0; i < E; ++i) ru[i] = u == nullptr ? 0.f : pr.get(i) * u[h * N + sx + i];
      st_shared(&s_ru[stt][sx], ru);
      pk.to_shared(&s_k[stt][sx]);
      pv.to_shared(&s_v[stt][sx]);
    }
    pw.to_shared(&s_d[stt][sx], true);
    pg.to_shared(&s_gy[stt][sx]);
    __syncthreads();
    if (t0 - TT >= tbeg) fetch(t0 - TT);
    for (int g0 = ((cnt - 1) / G) * G; g0 >= 0; g0 -= G) {
      float gvg[G * C];  // gv's partial sums of the group's tokens, [token][column]
      bool anchored = false;  // the group's first token t has beta_{t-1} = S_{t-1} . G_{t-1}
#pragma unroll
      for (int gi = G - 1; gi >= 0; --gi) {
        const int tt = g0 + gi, t = t0 + tt;
#pragma unroll
        for (int cc = 0; cc < C; ++cc) gvg[gi * C + cc] = 0.f;
        if (tt < cnt) {
          float gyv[C], vv[C];
#pragma unroll
          for (int cc = 0; cc < C; ++cc) {
            gyv[cc] = s_gy[tt][c0 + cc];
            vv[cc] = LOCAL ? 0.f : s_v[tt][c0 + cc];
          }
          if constexpr (!LOCAL) {  // the sums of G_t (the bonus folded in, see above)
            float gkp[R], gksp[R], vgy = 0.f, ruk = 0.f;  // the tile's parts of v . gy, (r u) . k
#pragma unroll
            for (int cc = 0; cc < C; ++cc) vgy += gyv[cc] * vv[cc];
#pragma unroll
            for (int e0 = 0; e0 < R; e0 += 4) {
              const int row = Tl::row(rb, e0);
              const float4 k4 = ld4(&s_k[tt][row]), ru4 = ld4(&s_ru[tt][row]);
              const float ke[4] = {k4.x, k4.y, k4.z, k4.w}, rue[4] = {ru4.x, ru4.y, ru4.z, ru4.w};
#pragma unroll
              for (int m = 0; m < 4; ++m) {
                float gks_ = 0.f;
#pragma unroll
                for (int cc = 0; cc < C; ++cc) {
                  const float g = G_[(e0 + m) * C + cc];
                  gks_ += g * vv[cc];
                  gvg[gi * C + cc] += g * ke[m];
                }
                gkp[e0 + m] = gks_ + rue[m] * vgy;
                gksp[e0 + m] = gks_;
                ruk += rue[m] * ke[m];
              }
            }
#pragma unroll
            for (int cc = 0; cc < C; ++cc) gvg[gi * C + cc] += ruk * gyv[cc];
            float q[2 * R];  // [gk, gks][row]
#pragma unroll
            for (int e2 = 0; e2 < R; ++e2) q[e2] = gkp[e2], q[R + e2] = gksp[e2];
            Tl::row_put(q, &s_row[gi % RG][0][0][0], tid);
          }
          // G_{t-1} = diag(d_t) G_t + r_t gy_t^T.
          Tl::decay_add_outer(G_, s_d[tt], s_r[tt], gyv, rb);
          if (!LOCAL && gi == 0 && t % kSnap == 0) {  // beta_{t-1} = S_{t-1} . G_{t-1}
            anchored = true;
            float bp[R];
            Tl::row_dots(snp + (int64_t)(t / kSnap) * N * N, G_, bp, rb);
            Tl::row_put(bp, &s_anc[0][0], tid);
          }
        }
        if (!LOCAL && gi % RG == 0) {  // the row sums of tokens g0 + gi .. g0 + gi + RG - 1
          __syncthreads();
          for (int p = tid; p < RG * N; p += NT) {
            const int tt = g0 + gi + p / N, i = p % N;
            if (tt < cnt) {
              const float gkx = Tl::row_sum(&s_row[p / N][0][0][0], i);
              const float gksx = Tl::row_sum(&s_row[p / N][1][0][0], i);
              const int64_t o = tok(t0 + tt) + i;
              put(gk, o, gkx);
              e[o] = s_k[tt][i] * gksx;
            }
          }
          if (anchored && tid < N)
            anchor[((int64_t)bh * NC + (t0 + g0) / kSnap) * N + tid] = Tl::row_sum(&s_anc[0][0], tid);
          __syncthreads();  // the sums are read before the next tokens overwrite them
        }
      }
      if constexpr (!LOCAL) {
        Tl::reduce_scatter_n(gvg, rb);  // lane rb: entries Q rb .. of [token][column]
#pragma unroll
        for (int q = 0; q < Q; ++q) {
          const int i = Q * rb + q, tt = g0 + i / C;
          if (tt < cnt) put(gv, tok(t0 + tt) + c0 + i % C, gvg[q]);
        }
      }
    }
  }
  if (!LOCAL && ch != 0) return;
  float* op =
      out + (LOCAL ? ((int64_t)bh * NCL + ch) * N * N : b * outb + (int64_t)h * N * N) + c0;
#pragma unroll
  for (int e2 = 0; e2 < R; ++e2)
#pragma unroll
    for (int cc = 0; cc < C; ++cc) op[(int64_t)Tl::row(rb, e2) * N + cc] = G_[e2 * C + cc];
}

// B2: one block per (batch*head, snapshot chunk), forwards in time inside the chunk from its
// snapshot, on RowTile's R x C tiles of S (see wkv7.cu). Per token: the partial row dots
// S_{t-1} . gy_t (grs) and v_t . gy_t (every row's copy), then the row update
// S_t = d S_{t-1} + k v_t^T; summed over the column blocks once per group of kGroup tokens, after
// which the lane owning a row runs the chain gw_t = beta_{t-1} - r_t grs_t,
// beta_t = gw_t + e_t, writes gr and gw, and sums its row's gu.
template <typename F, typename FW, int N, bool WC>
__global__ void __launch_bounds__(RowTile<N>::THREADS) wkv6_bwd_b2_kernel(
    int T, int H, bool rev, const F* __restrict__ r, const F* __restrict__ k,
    const F* __restrict__ v, const FW* __restrict__ w, const float* __restrict__ u,
    const float* __restrict__ snap, const F* __restrict__ gy, const float* __restrict__ e,
    const float* __restrict__ anchor, OutVec<F> gr, OutVec<FW> gw,
    float* __restrict__ gu_part /* [B,NC,H,N] | null */) {
  using Tl = RowTile<N>;
  constexpr int TT = 8, R = Tl::R, C = Tl::C, NT = Tl::THREADS, G = kGroup;
  __shared__ __align__(16) float s_v[TT][N];
  __shared__ __align__(16) float s_gy[TT][N];
  __shared__ __align__(16) float s_d[TT][N];
  __shared__ __align__(16) float s_k[TT][N];
  __shared__ __align__(16) float s_r[TT][N];
  __shared__ __align__(16) float s_e[TT][N];
  const int NC = (T + kSnap - 1) / kSnap;
  const int bh = blockIdx.x / NC, h = bh % H, b = bh / H, c = blockIdx.x % NC, tid = threadIdx.x;
  const int rb = Tl::rb_of(tid), cb = Tl::cb_of(tid), r0 = rb * R;
  const int64_t stride = (int64_t)H * N;
  const int64_t hbase = (int64_t)b * T * stride + (int64_t)h * N;
  auto tok = [&](int t) { return hbase + (int64_t)(rev ? T - 1 - t : t) * stride; };
  float S[R * C];  // S[e * C + j] = S[r0 + e][col(cb, j)]
  Tl::load(snap + ((int64_t)bh * NC + c) * N * N, S, r0, cb);  // from the chunk's snapshot
  const int orow = r0 + Tl::own_row(cb);
  const float uo = u == nullptr ? 0.f : u[h * N + orow];
  float beta = anchor[((int64_t)bh * NC + c) * N + orow];
  double gu_acc = 0.0;
  const int tbeg = c * kSnap, tend = min(T, tbeg + kSnap);
  // Stage loads (see wkv7_fwd_kernel): E consecutive elements per array and thread.
  constexpr int E = TT * N / NT;
  const int sq = tid * E, stt = sq / N, sx = sq % N;
  Raw<F, E> pr, pk, pv, pg;
  Raw<FW, E> pw;
  Raw<float, E> pe;
  auto fetch = [&](int t0) {
    if (t0 + stt < tend) {
      const int64_t o = tok(t0 + stt) + sx;
      pr.load(r + o), pk.load(k + o), pv.load(v + o), pg.load(gy + o), pe.load(e + o);
      pw.load(w + (WC ? h * N + sx : o));
    }
  };
  fetch(tbeg);
  for (int t0 = tbeg; t0 < tend; t0 += TT) {
    const int cnt = min(TT, tend - t0);
    __syncthreads();
    pv.to_shared(&s_v[stt][sx]);
    pg.to_shared(&s_gy[stt][sx]);
    pw.to_shared(&s_d[stt][sx], true);
    pk.to_shared(&s_k[stt][sx]);
    pr.to_shared(&s_r[stt][sx]);
    pe.to_shared(&s_e[stt][sx]);
    __syncthreads();
    if (t0 + TT < tend) fetch(t0 + TT);
    for (int g0 = 0; g0 < cnt; g0 += G) {
      float dots[R * 2 * G];  // [row][token][grs, v . gy] partial sums
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int tt = g0 + g;
        float grs[R], vgy = 0.f;
#pragma unroll
        for (int e2 = 0; e2 < R; ++e2) grs[e2] = 0.f;
        if (tt < cnt) {
          float de[R], ke[R];
          ld_rows(&s_d[tt][r0], de), ld_rows(&s_k[tt][r0], ke);
#pragma unroll
          for (int j = 0; j < C; j += 4) {
            const int col = Tl::col(cb, j);
            const float4 v4 = ld4(&s_v[tt][col]), g4 = ld4(&s_gy[tt][col]);
            const float vv[4] = {v4.x, v4.y, v4.z, v4.w}, gv[4] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
            for (int m = 0; m < 4; ++m) {
              vgy += vv[m] * gv[m];
#pragma unroll
              for (int e2 = 0; e2 < R; ++e2) {
                float& x = S[e2 * C + j + m];
                grs[e2] += x * gv[m];
                x = x * de[e2] + ke[e2] * vv[m];
              }
            }
          }
        }
#pragma unroll
        for (int e2 = 0; e2 < R; ++e2) {
          dots[e2 * 2 * G + 2 * g] = grs[e2];
          dots[e2 * 2 * G + 2 * g + 1] = vgy;
        }
      }
      Tl::row_sums(dots, cb);  // dots[0 .. 2G-1]: row orow's [token][grs, v . gy]
      if (Tl::owner(cb)) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const int tt = g0 + g;
          if (tt < cnt) {
            const float grsx = dots[2 * g], vgyx = dots[2 * g + 1];
            const float rx = s_r[tt][orow], kx = s_k[tt][orow];
            const int64_t o = tok(t0 + tt) + orow;
            put(gr, o, grsx + uo * kx * vgyx);
            gu_acc += (double)(rx * kx * vgyx);
            const float gwt = beta - rx * grsx;
            put(gw, o, gwt);
            beta = gwt + s_e[tt][orow];
          }
        }
      }
    }
  }
  if (Tl::owner(cb) && gu_part != nullptr)  // null: a half without the bonus (bi_wkv6)
    gu_part[(((int64_t)b * NC + c) * H + h) * N + orow] = (float)gu_acc;
}

}  // namespace

template <typename F, typename FW, bool WC>
cudaError_t wkv6_forward_launch(const V6Fwd<F, FW>& p, cudaStream_t stream) {
  const V6In<F, FW>& a = p.in;
  const MatSizes& s = a.s;
  const dim3 grid(s.B * s.H, s.NCL);
  return dispatch_n(s.N, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    const float* starts = p.s0;
    int64_t starts_b = a.sb;
    if (s.NCL > 1) {  // pass 1: chunks from zero in parallel; then the chunk start states
      wkv6_fwd_kernel<F, FW, N, true, WC><<<grid, FwdTile<N>::THREADS, 0, stream>>>(
          s.T, s.H, s.L, a.rev, a.r, a.k, a.v, a.w, a.u, nullptr, 0, OutVec<F>(), p.local, 0,
          nullptr, p.trans);
      combine_chunks_diag<N>(s.B, s.H, s.NCL, false, p.trans, p.local, p.s0, a.sb, p.starts,
                             stream);
      starts = p.starts, starts_b = (int64_t)s.H * s.NCL * N * N;
    }
    wkv6_fwd_kernel<F, FW, N, false, WC><<<grid, FwdTile<N>::THREADS, 0, stream>>>(
        s.T, s.H, s.L, a.rev, a.r, a.k, a.v, a.w, a.u, starts, starts_b, p.y, p.sT, a.sb, p.snap,
        nullptr);
  });
}

template <typename F, typename FW, bool WC>
cudaError_t wkv6_backward_launch(const V6Bwd<F, FW>& p, cudaStream_t stream) {
  const V6In<F, FW>& a = p.in;
  const MatSizes& s = a.s;
  const dim3 grid(s.B * s.H, s.NCL);
  const int NC = (s.T + kSnap - 1) / kSnap;
  return dispatch_n(s.N, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    const float* gend = p.gsT;
    int64_t gend_b = a.sb;
    if (s.NCL > 1) {  // pass 1: chunks from G = 0 in parallel; then G at every chunk's end
      wkv6_bwd_b1_kernel<F, FW, N, true, WC><<<grid, BwdTile<N>::THREADS, 0, stream>>>(
          s.T, s.H, s.L, a.rev, a.r, a.k, a.v, a.w, a.u, p.snap, p.gy, nullptr, 0, OutVec<F>(),
          OutVec<F>(), nullptr, nullptr, p.local, 0);
      combine_chunks_diag<N>(s.B, s.H, s.NCL, true, p.trans, p.local, p.gsT, a.sb, p.gend,
                             stream);
      gend = p.gend, gend_b = (int64_t)s.H * s.NCL * N * N;
    }
    wkv6_bwd_b1_kernel<F, FW, N, false, WC><<<grid, BwdTile<N>::THREADS, 0, stream>>>(
        s.T, s.H, s.L, a.rev, a.r, a.k, a.v, a.w, a.u, p.snap, p.gy, gend, gend_b, p.gk, p.gv,
        p.e, p.anchor, p.gs0, a.sb);
    wkv6_bwd_b2_kernel<F, FW, N, WC><<<dim3(s.B * s.H * NC), RowTile<N>::THREADS, 0, stream>>>(
        s.T, s.H, a.rev, a.r, a.k, a.v, a.w, a.u, p.snap, p.gy, p.e, p.anchor, p.gr, p.gw,
        p.gu_part);
  });
}

}  // namespace rwkv_hf
