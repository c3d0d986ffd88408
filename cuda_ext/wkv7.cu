// RWKV-7 WKV, the generalized delta rule.
//
//   S_t = A_t S_{t-1} + k_t v_t^T,  A_t = diag(d_t) + b_t a_t^T,  d_t = exp(w_t),
//   y_t = S_t^T r_t   (the output reads the NEW state; a reads the OLD state),
//   per head S is [K, V] = [N, N] (key-major), S_{-1} the initial state.
//
// Forward: one block per (batch, head) (and chunk, see below); each thread holds an R x C tile
// of S (FwdTile in wkv_common.h); the tokens' vectors are staged in shared memory, TT per
// barrier: sa = a^T S (column sums: the tile's rows, then the column block's lanes by a
// butterfly); S = d (.) S + b sa^T + k v^T; y = r^T S (summed over the lanes once per group of
// kGroup tokens). With gradients it also stores sa_t (float32
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
// Kernel B1 (backwards in time, one block per (batch, head)): R x C tiles of G (BwdTile in
// wkv_common.h), tokens in groups of kGroup; column sums (c_t per token by a butterfly, gv once
// per group) are shuffles, row sums (gk, gb, anchors) shuffles over the warp's column blocks and
// then shared memory once per group. Writes gk, gv, gb, e_t and c_t (float32 scratch), the
// anchors and gS_{-1}.
// Kernel B2 (forwards in time, one block per (batch, head, chunk), chunks in parallel): R x C
// tiles of S from the chunk's snapshot (RowTile); computes ga, gr and gw.
#include "wkv_common.h"

namespace rwkv_hf {
namespace {

// Forward over chunk blockIdx.y ([c*L, min(T, (c+1)*L)), L a multiple of kSnap; one chunk of
// L >= T when not chunked). LOCAL = false: from the chunk's start state s0[b, h, c] (the initial
// state when not chunked; null: zero), writes y, sa, the snapshots the chunk starts or contains
// and, for the last chunk, the final state. LOCAL = true (pass 1 of the chunked form): from
// S = 0, writes only the chunk's end state `out[b, h, c]` and its transition `trans[b, h, c]` =
// A_{end} ... A_{start} (each column of P = I runs through the state recurrence without input).
// Tokens go in groups of kGroup: y's column sums are reduced and stored once per group; sa, which
// the recurrence waits on, is summed per token by a butterfly (the shortest chain of shuffles).
template <typename F, typename FW, int N, bool LOCAL>
__global__ void __launch_bounds__(FwdTile<N>::THREADS) wkv7_fwd_kernel(
    int T, int H, int L, const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,
    const FW* __restrict__ w, const F* __restrict__ a, const F* __restrict__ bb,
    const float* __restrict__ s0 /* [B,H,NCL,N,N] */, F* __restrict__ y,
    float* __restrict__ out /* final state [B,H,N,N]; LOCAL: [B,H,NCL,N,N] */,
    float* __restrict__ snap /* [B,H,NC,N,N] | null */, float* __restrict__ sa_out /* | null */,
    float* __restrict__ trans /* LOCAL: [B,H,NCL,N,N] */) {
  using Tl = FwdTile<N>;
  constexpr int TT = Stage<N>::TT, R = Tl::R, C = Tl::C, NT = Tl::THREADS, G = kGroup;
  constexpr int Q = G * C / Tl::RB;  // y values per lane and group
  __shared__ __align__(16) float s_r[TT][N];
  __shared__ __align__(16) float s_k[TT][N];
  __shared__ __align__(16) float s_d[TT][N];
  __shared__ __align__(16) float s_a[TT][N];
  __shared__ __align__(16) float s_b[TT][N];
  __shared__ __align__(16) float s_v[TT][N];
  const int bh = blockIdx.x, h = bh % H, b = bh / H, tid = threadIdx.x;
  const int c = blockIdx.y, NCL = gridDim.y, tbeg = c * L, tend = min(T, tbeg + L);
  const int rb = Tl::rb_of(tid), c0 = Tl::cb_of(tid) * C;  // rows Tl::row(rb, 0 .. R-1), columns c0 ..
  const int NC = (T + kSnap - 1) / kSnap;
  const int64_t stride = (int64_t)H * N;
  const int64_t hbase = (int64_t)b * T * stride + (int64_t)h * N;
  const int64_t cell = ((int64_t)bh * NCL + c) * N * N + c0;  // column c0 of chunk c
  const bool zero = LOCAL || s0 == nullptr;
  float S[R * C], P[LOCAL ? R * C : 1];  // S[e * C + cc] = S[row(rb, e)][c0 + cc]
#pragma unroll
  for (int e = 0; e < R; ++e)
#pragma unroll
    for (int cc = 0; cc < C; ++cc) {
      S[e * C + cc] = zero ? 0.f : s0[cell + (int64_t)Tl::row(rb, e) * N + cc];
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
  // Stage loads: thread tid moves the E consecutive elements from tid * E of every array (token
  // sq / N, features sq % N ..), one stage ahead into registers, so that their latency hides
  // behind the previous stage's tokens.
  constexpr int E = TT * N / NT;
  const int sq = tid * E, stt = sq / N, sx = sq % N;
  Raw<F, E> pr, pk, pa, pb, pv;
  Raw<FW, E> pw;
  auto fetch = [&](int t0) {
    if (t0 + stt < tend) {
      const int64_t o = hbase + (int64_t)(t0 + stt) * stride + sx;
      if constexpr (!LOCAL) pr.load(r + o);
      pk.load(k + o);
      pw.load(w + o);
      pa.load(a + o);
      pb.load(bb + o);
      pv.load(v + o);
    }
  };
  fetch(tbeg);
  for (int t0 = tbeg; t0 < tend; t0 += TT) {
    const int cnt = min(TT, tend - t0);
    __syncthreads();
    if constexpr (!LOCAL) pr.to_shared(&s_r[stt][sx]);
    pk.to_shared(&s_k[stt][sx]);
    pw.to_shared(&s_d[stt][sx], true);
    pa.to_shared(&s_a[stt][sx]);
    pb.to_shared(&s_b[stt][sx]);
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
        Tl::all_reduce(sa);
        if constexpr (LOCAL) Tl::all_reduce(pa_);
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
                yg[g * C + cc] += re[m] * x;
              }
            }
        }
        if (!LOCAL && sa_out != nullptr && rb == 0) {  // every lane holds the block's sa
          float* o = sa_out + hbase + (int64_t)(t0 + tt) * stride + c0;
#pragma unroll
          for (int cc = 0; cc < C; ++cc) o[cc] = sa[cc];
        }
      }
      if constexpr (!LOCAL) {
        Tl::reduce_scatter_n(yg, rb);  // lane rb: entries Q rb .. of [token][column]
#pragma unroll
        for (int q = 0; q < Q; ++q) {
          const int i = Q * rb + q, tt = g0 + i / C;
          if (tt < cnt) y[hbase + (int64_t)(t0 + tt) * stride + c0 + i % C] = from_f<F>(yg[q]);
        }
        const int t = t0 + g0 + G - 1;  // snapshots fall on group ends (kSnap % kGroup == 0)
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

// B1: backwards in time over chunk blockIdx.y (as the forward kernel), on BwdTile's R x C tiles
// of G, in groups of kGroup tokens. Column sums (c_t, which the recurrence waits on: a butterfly
// per token; gv: one reduce-scatter per group) are shuffles in the column block. Row sums (gk,
// gb and the anchors) are per-thread partials over the tile's C columns, summed over the warp's
// column blocks by shuffles, then over the warps through shared memory once per RG tokens
// (two barriers) by all threads, one (token, row) each. LOCAL = false: from G^{partial} at the
// chunk's last token, gend[b, h, c] (gS_final when not chunked; null: zero), writes gk, gv, gb,
// e, c_t, the anchors of the chunk and, for the first chunk, gS_{-1}. LOCAL = true (pass 1 of the
// chunked form): from G = 0, writes only G^{partial} at the token before the chunk,
// `out[b, h, c]` (no row sums, no barriers but the stages').
template <typename F, typename FW, int N, bool LOCAL>
__global__ void __launch_bounds__(BwdTile<N>::THREADS) wkv7_bwd_b1_kernel(
    int T, int H, int L, const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,
    const FW* __restrict__ w, const F* __restrict__ a, const F* __restrict__ bb,
    const float* __restrict__ snap, const float* __restrict__ sa, const F* __restrict__ gy,
    const float* __restrict__ gend /* [B,H,NCL,N,N] */, F* __restrict__ gk, F* __restrict__ gv,
    F* __restrict__ gb, float* __restrict__ e /* [B,T,H,N] */,
    float* __restrict__ cvec /* [B,T,H,N] */, float* __restrict__ anchor /* [B,H,NC,N] */,
    float* __restrict__ out /* gS_{-1} [B,H,N,N]; LOCAL: [B,H,NCL,N,N] */) {
  using Tl = BwdTile<N>;
  // 8 tokens per stage (4 for N = 128): the staged vectors and the row sums share 48 KB.
  constexpr int TT = N == 128 ? 4 : 8, R = Tl::R, C = Tl::C, NT = Tl::THREADS, W = Tl::WARPS;
  constexpr int G = kGroup, Q = G * C / Tl::RB;  // gv values per lane and group
  constexpr int RG = N == 128 ? 1 : G;  // tokens per flush of the row sums
  __shared__ __align__(16) float s_r[TT][N];
  __shared__ __align__(16) float s_k[TT][N];
  __shared__ __align__(16) float s_v[TT][N];
  __shared__ __align__(16) float s_d[TT][N];
  __shared__ __align__(16) float s_a[TT][N];
  __shared__ __align__(16) float s_b[TT][N];
  __shared__ __align__(16) float s_gy[TT][N];
  __shared__ __align__(16) float s_sa[TT][N];
  // Row partial sums per token of the flush, vector (gk, gb) and warp; the anchors' partials
  // (every kSnap tokens, on a group's last token).
  __shared__ __align__(16) float s_row[LOCAL ? 1 : RG][2][LOCAL ? 1 : W][N];
  __shared__ __align__(16) float s_anc[LOCAL ? 1 : W][N];
  const int bh = blockIdx.x, h = bh % H, b = bh / H, tid = threadIdx.x;
  const int ch = blockIdx.y, NCL = gridDim.y, tbeg = ch * L, tend = min(T, tbeg + L);
  const int rb = Tl::rb_of(tid), c0 = Tl::cb_of(tid) * C;
  const int NC = (T + kSnap - 1) / kSnap;
  const int64_t stride = (int64_t)H * N;
  const int64_t hbase = (int64_t)b * T * stride + (int64_t)h * N;
  float G_[R * C];  // G^{partial} (without the current token's r gy^T term), G_[e * C + cc]
  const int64_t end = ((int64_t)bh * NCL + ch) * N * N + c0;  // gend's column c0
  const bool zero = LOCAL || gend == nullptr;
#pragma unroll
  for (int e2 = 0; e2 < R; ++e2)
#pragma unroll
    for (int cc = 0; cc < C; ++cc)
      G_[e2 * C + cc] = zero ? 0.f : gend[end + (int64_t)Tl::row(rb, e2) * N + cc];
  const float* snp = snap + (int64_t)bh * NC * N * N + c0;
  float* anp = anchor + (int64_t)bh * NC * N;
  // Stage loads (see wkv7_fwd_kernel): E consecutive elements per array and thread.
  constexpr int E = TT * N / NT;
  const int sq = tid * E, stt = sq / N, sx = sq % N;
  Raw<F, E> pr, pk, pv, pa, pb, pg;
  Raw<FW, E> pw;
  Raw<float, E> ps;
  auto fetch = [&](int t0) {
    if (t0 + stt < tend) {
      const int64_t o = hbase + (int64_t)(t0 + stt) * stride + sx;
      pr.load(r + o);
      pw.load(w + o);
      pa.load(a + o);
      pb.load(bb + o);
      pg.load(gy + o);
      if constexpr (!LOCAL) {
        pk.load(k + o);
        pv.load(v + o);
        ps.load(sa + o);
      }
    }
  };
  const int tlast = tbeg + ((tend - 1 - tbeg) / TT) * TT;  // the chunk's last stage
  fetch(tlast);
  for (int t0 = tlast; t0 >= tbeg; t0 -= TT) {
    const int cnt = min(TT, tend - t0);
    __syncthreads();
    pr.to_shared(&s_r[stt][sx]);
    pw.to_shared(&s_d[stt][sx], true);
    pa.to_shared(&s_a[stt][sx]);
    pb.to_shared(&s_b[stt][sx]);
    pg.to_shared(&s_gy[stt][sx]);
    if constexpr (!LOCAL) {
      pk.to_shared(&s_k[stt][sx]);
      pv.to_shared(&s_v[stt][sx]);
      ps.to_shared(&s_sa[stt][sx]);
    }
    __syncthreads();
    if (t0 - TT >= tbeg) fetch(t0 - TT);
    for (int g0 = ((cnt - 1) / G) * G; g0 >= 0; g0 -= G) {
      float gvg[G * C];  // gv's partial sums of the group's tokens, [token][column]
      bool anchored = false;  // the group's last token t has beta_t = S_t . G_t anchored
#pragma unroll
      for (int gi = G - 1; gi >= 0; --gi) {
        const int tt = g0 + gi, t = t0 + tt;
#pragma unroll
        for (int cc = 0; cc < C; ++cc) gvg[gi * C + cc] = 0.f;
        if (tt < cnt) {
          float gyv[C], vv[C], sav[C], cp[C];
#pragma unroll
          for (int cc = 0; cc < C; ++cc) {
            gyv[cc] = s_gy[tt][c0 + cc];
            vv[cc] = LOCAL ? 0.f : s_v[tt][c0 + cc];
            sav[cc] = LOCAL ? 0.f : s_sa[tt][c0 + cc];
            cp[cc] = 0.f;
          }
          float gkp[R], gbp[R];
          // Complete G_t with the output's term r_t gy_t^T; the row and column sums of G_t.
#pragma unroll
          for (int e0 = 0; e0 < R; e0 += 4) {
            const int row = Tl::row(rb, e0);
            const float4 r4 = ld4(&s_r[tt][row]), b4 = ld4(&s_b[tt][row]);
            const float re[4] = {r4.x, r4.y, r4.z, r4.w}, be[4] = {b4.x, b4.y, b4.z, b4.w};
            float ke[4] = {0.f, 0.f, 0.f, 0.f};
            if constexpr (!LOCAL) {
              const float4 k4 = ld4(&s_k[tt][row]);
              ke[0] = k4.x, ke[1] = k4.y, ke[2] = k4.z, ke[3] = k4.w;
            }
#pragma unroll
            for (int m = 0; m < 4; ++m) {
              float gk_ = 0.f, gb_ = 0.f;
#pragma unroll
              for (int cc = 0; cc < C; ++cc) {
                float& g = G_[(e0 + m) * C + cc];
                g += re[m] * gyv[cc];
                cp[cc] += g * be[m];
                if constexpr (!LOCAL) {
                  gvg[gi * C + cc] += g * ke[m];
                  gk_ += g * vv[cc];
                  gb_ += g * sav[cc];
                }
              }
              gkp[e0 + m] = gk_;
              gbp[e0 + m] = gb_;
            }
          }
          Tl::all_reduce(cp);
          if constexpr (!LOCAL) {
            if (rb == 0) {  // every lane holds the block's c_t
              float* o = cvec + hbase + (int64_t)t * stride + c0;
#pragma unroll
              for (int cc = 0; cc < C; ++cc) o[cc] = cp[cc];
            }
            float q[2 * R];  // [gk, gb][row]
#pragma unroll
            for (int e2 = 0; e2 < R; ++e2) q[e2] = gkp[e2], q[R + e2] = gbp[e2];
            Tl::row_put(q, &s_row[gi % RG][0][0][0], tid);
            if (gi == G - 1 && (t + 1) % kSnap == 0 && t + 1 < T) {  // beta_t = S_t . G_t
              anchored = true;
              float bp[R];
              Tl::row_dots(snp + (int64_t)((t + 1) / kSnap) * N * N, G_, bp, rb);
              Tl::row_put(bp, &s_anc[0][0], tid);
            }
          }
          // G^{partial}_{t-1} = A_t^T G_t = diag(d_t) G_t + a_t c_t^T.
          Tl::decay_add_outer(G_, s_d[tt], s_a[tt], cp, rb);
        }
        if (!LOCAL && gi % RG == 0) {  // the row sums of tokens g0 + gi .. g0 + gi + RG - 1
          __syncthreads();
          for (int p = tid; p < RG * N; p += NT) {
            const int tt = g0 + gi + p / N, i = p % N;
            if (tt < cnt) {
              const float gkx = Tl::row_sum(&s_row[p / N][0][0][0], i);
              const float gbx = Tl::row_sum(&s_row[p / N][1][0][0], i);
              const int64_t o = hbase + (int64_t)(t0 + tt) * stride + i;
              gk[o] = from_f<F>(gkx);
              gb[o] = from_f<F>(gbx);
              e[o] = s_b[tt][i] * gbx + s_k[tt][i] * gkx;
            }
          }
          if (anchored && gi == 0 && tid < N)
            anp[(int64_t)((t0 + g0 + G) / kSnap) * N + tid] = Tl::row_sum(&s_anc[0][0], tid);
          __syncthreads();  // the sums are read before the next tokens overwrite them
        }
      }
      if constexpr (!LOCAL) {
        Tl::reduce_scatter_n(gvg, rb);  // lane rb: entries Q rb .. of [token][column]
#pragma unroll
        for (int q = 0; q < Q; ++q) {
          const int i = Q * rb + q, tt = g0 + i / C;
          if (tt < cnt) gv[hbase + (int64_t)(t0 + tt) * stride + c0 + i % C] = from_f<F>(gvg[q]);
        }
      }
    }
  }
  if constexpr (LOCAL) {
    float* op = out + ((int64_t)bh * NCL + ch) * N * N + c0;
#pragma unroll
    for (int e2 = 0; e2 < R; ++e2)
#pragma unroll
      for (int cc = 0; cc < C; ++cc) op[(int64_t)Tl::row(rb, e2) * N + cc] = G_[e2 * C + cc];
    return;
  } else {
    if (ch != 0) return;
    // G_{-1} = A_0^T G_0 is the gradient of the initial state; anchor beta_{-1} = S_{-1} . G_{-1}.
    float bp[R];
    Tl::row_dots(snp, G_, bp, rb);  // S_{-1} . G_{-1}
    Tl::row_put(bp, &s_anc[0][0], tid);
    __syncthreads();
    if (tid < N) anp[tid] = Tl::row_sum(&s_anc[0][0], tid);
    float* op = out + (int64_t)bh * N * N + c0;
#pragma unroll
    for (int e2 = 0; e2 < R; ++e2)
#pragma unroll
      for (int cc = 0; cc < C; ++cc) op[(int64_t)Tl::row(rb, e2) * N + cc] = G_[e2 * C + cc];
  }
}

// B2: one block per (batch*head, snapshot chunk), forwards in time inside the chunk from its
// snapshot, on RowTile's R x C tiles of S (wkv_common.h). Per token: the partial row dots
// S_{t-1} . c_t (ga) and, after the row update S_t = d S_{t-1} + b sa_t^T + k v_t^T, S_t . gy_t
// (gr); summed over the column blocks once per group of kGroup tokens, after which the lane
// owning a row runs that row's chain gw_t = beta_{t-1} - a_t ga_t - r_{t-1} gr_{t-1},
// beta_t = gw_t + e_t over the group's tokens and writes ga, gw, gr.
template <typename F, typename FW, int N>
__global__ void __launch_bounds__(RowTile<N>::THREADS) wkv7_bwd_b2_kernel(
    int T, int H, const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,
    const FW* __restrict__ w, const F* __restrict__ a, const F* __restrict__ bb,
    const float* __restrict__ snap, const float* __restrict__ sa, const F* __restrict__ gy,
    const float* __restrict__ e, const float* __restrict__ cvec, const float* __restrict__ anchor,
    F* __restrict__ gr, FW* __restrict__ gw, F* __restrict__ ga) {
  using Tl = RowTile<N>;
  constexpr int TT = 8, R = Tl::R, C = Tl::C, NT = Tl::THREADS, G = kGroup;
  // Per-token column vectors (c, sa, v, gy) and row vectors (d, b, k; a, r, e for the chains).
  __shared__ __align__(16) float s_c[TT][N];
  __shared__ __align__(16) float s_sa[TT][N];
  __shared__ __align__(16) float s_v[TT][N];
  __shared__ __align__(16) float s_gy[TT][N];
  __shared__ __align__(16) float s_d[TT][N];
  __shared__ __align__(16) float s_b[TT][N];
  __shared__ __align__(16) float s_k[TT][N];
  __shared__ __align__(16) float s_a[TT][N];
  __shared__ __align__(16) float s_r[TT][N];
  __shared__ __align__(16) float s_e[TT][N];
  const int NC = (T + kSnap - 1) / kSnap;
  const int bh = blockIdx.x / NC, h = bh % H, b = bh / H, c = blockIdx.x % NC, tid = threadIdx.x;
  const int rb = Tl::rb_of(tid), cb = Tl::cb_of(tid), r0 = rb * R;
  const int64_t stride = (int64_t)H * N;
  const int64_t hbase = (int64_t)b * T * stride + (int64_t)h * N;
  float S[R * C];  // S[e * C + j] = S[r0 + e][col(cb, j)]
  Tl::load(snap + ((int64_t)bh * NC + c) * N * N, S, r0, cb);  // from the chunk's snapshot
  const int tbeg = c * kSnap, tend = min(T, tbeg + kSnap);
  // The owner lanes' row chain: beta from the anchor; r_{t-1} gr_{t-1} for the chunk's first
  // token from S_{tbeg-1} (the snapshot) and gy_{tbeg-1}.
  const int orow = r0 + Tl::own_row(cb);
  float beta = anchor[((int64_t)bh * NC + c) * N + orow], rgr_prev = 0.f;
  if (tbeg > 0) {
    const int64_t o = hbase + (int64_t)(tbeg - 1) * stride;
    float p[R];
#pragma unroll
    for (int e2 = 0; e2 < R; ++e2) {
      p[e2] = 0.f;
#pragma unroll
      for (int j = 0; j < C; ++j) p[e2] += S[e2 * C + j] * to_f(gy[o + Tl::col(cb, j)]);
    }
    Tl::row_sums(p, cb);
    rgr_prev = to_f(r[o + orow]) * p[0];
  }
  // Stage loads (see wkv7_fwd_kernel): E consecutive elements per array and thread.
  constexpr int E = TT * N / NT;
  const int sq = tid * E, stt = sq / N, sx = sq % N;
  Raw<F, E> pr, pk, pv, pa, pb, pg;
  Raw<FW, E> pw;
  Raw<float, E> pe, pc, ps;
  auto fetch = [&](int t0) {
    if (t0 + stt < tend) {
      const int64_t o = hbase + (int64_t)(t0 + stt) * stride + sx;
      pr.load(r + o), pk.load(k + o), pv.load(v + o), pa.load(a + o), pb.load(bb + o);
      pg.load(gy + o), pw.load(w + o), pe.load(e + o), pc.load(cvec + o), ps.load(sa + o);
    }
  };
  fetch(tbeg);
  for (int t0 = tbeg; t0 < tend; t0 += TT) {
    const int cnt = min(TT, tend - t0);
    __syncthreads();
    pc.to_shared(&s_c[stt][sx]);
    ps.to_shared(&s_sa[stt][sx]);
    pv.to_shared(&s_v[stt][sx]);
    pg.to_shared(&s_gy[stt][sx]);
    pw.to_shared(&s_d[stt][sx], true);
    pb.to_shared(&s_b[stt][sx]);
    pk.to_shared(&s_k[stt][sx]);
    pa.to_shared(&s_a[stt][sx]);
    pr.to_shared(&s_r[stt][sx]);
    pe.to_shared(&s_e[stt][sx]);
    __syncthreads();
    if (t0 + TT < tend) fetch(t0 + TT);
    for (int g0 = 0; g0 < cnt; g0 += G) {
      float dots[R * 2 * G];  // [row][token][ga, gr] partial sums
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int tt = g0 + g;
        float ga_[R], gr_[R];
#pragma unroll
        for (int e2 = 0; e2 < R; ++e2) ga_[e2] = gr_[e2] = 0.f;
        if (tt < cnt) {
          float de[R], be[R], ke[R];
          ld_rows(&s_d[tt][r0], de), ld_rows(&s_b[tt][r0], be), ld_rows(&s_k[tt][r0], ke);
#pragma unroll
          for (int j = 0; j < C; j += 4) {
            const int col = Tl::col(cb, j);
            const float4 c4 = ld4(&s_c[tt][col]), sa4 = ld4(&s_sa[tt][col]);
            const float4 v4 = ld4(&s_v[tt][col]), g4 = ld4(&s_gy[tt][col]);
            const float cv[4] = {c4.x, c4.y, c4.z, c4.w}, sv[4] = {sa4.x, sa4.y, sa4.z, sa4.w};
            const float vv[4] = {v4.x, v4.y, v4.z, v4.w}, gv[4] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
            for (int e2 = 0; e2 < R; ++e2)
#pragma unroll
              for (int m = 0; m < 4; ++m) {
                float& x = S[e2 * C + j + m];
                ga_[e2] += x * cv[m];
                x = x * de[e2] + (be[e2] * sv[m] + ke[e2] * vv[m]);
                gr_[e2] += x * gv[m];
              }
          }
        }
#pragma unroll
        for (int e2 = 0; e2 < R; ++e2) {
          dots[e2 * 2 * G + 2 * g] = ga_[e2];
          dots[e2 * 2 * G + 2 * g + 1] = gr_[e2];
        }
      }
      Tl::row_sums(dots, cb);  // dots[0 .. 2G-1]: row orow's [token][ga, gr]
      if (Tl::owner(cb)) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const int tt = g0 + g;
          if (tt < cnt) {
            const float gax = dots[2 * g], grx = dots[2 * g + 1];
            const float gwt = beta - s_a[tt][orow] * gax - rgr_prev;
            beta = gwt + s_e[tt][orow];
            const int64_t o = hbase + (int64_t)(t0 + tt) * stride + orow;
            ga[o] = from_f<F>(gax);
            gw[o] = from_f<FW>(gwt);
            gr[o] = from_f<F>(grx);
            rgr_prev = s_r[tt][orow] * grx;
          }
        }
      }
    }
  }
}

}  // namespace

template <typename F, typename FW>
cudaError_t wkv7_forward_launch(const V7Fwd<F, FW>& p, cudaStream_t stream) {
  const V7In<F, FW>& a = p.in;
  const MatSizes& s = a.s;
  const dim3 grid(s.B * s.H, s.NCL);
  return dispatch_n(s.N, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    const float* starts = p.s0;
    if (s.NCL > 1) {  // pass 1: chunks from zero in parallel; then the chunk start states
      wkv7_fwd_kernel<F, FW, N, true><<<grid, FwdTile<N>::THREADS, 0, stream>>>(
          s.T, s.H, s.L, a.r, a.k, a.v, a.w, a.a, a.b, nullptr, nullptr, p.local, nullptr,
          nullptr, p.trans);
      combine_chunks<N>(s.B * s.H, s.NCL, false, p.trans, p.local, p.s0, p.starts, stream);
      starts = p.starts;
    }
    wkv7_fwd_kernel<F, FW, N, false><<<grid, FwdTile<N>::THREADS, 0, stream>>>(
        s.T, s.H, s.L, a.r, a.k, a.v, a.w, a.a, a.b, starts, p.y, p.sT, p.snap, p.sa, nullptr);
  });
}

template <typename F, typename FW>
cudaError_t wkv7_backward_launch(const V7Bwd<F, FW>& p, cudaStream_t stream) {
  const V7In<F, FW>& a = p.in;
  const MatSizes& s = a.s;
  const dim3 grid(s.B * s.H, s.NCL);
  const int NC = (s.T + kSnap - 1) / kSnap;
  return dispatch_n(s.N, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    const float* gend = p.gsT;
    if (s.NCL > 1) {  // pass 1: chunks from G = 0 in parallel; then G at every chunk's end
      wkv7_bwd_b1_kernel<F, FW, N, true><<<grid, BwdTile<N>::THREADS, 0, stream>>>(
          s.T, s.H, s.L, a.r, a.k, a.v, a.w, a.a, a.b, p.snap, p.sa, p.gy, nullptr, nullptr,
          nullptr, nullptr, nullptr, nullptr, nullptr, p.local);
      combine_chunks<N>(s.B * s.H, s.NCL, true, p.trans, p.local, p.gsT, p.gend, stream);
      gend = p.gend;
    }
    wkv7_bwd_b1_kernel<F, FW, N, false><<<grid, BwdTile<N>::THREADS, 0, stream>>>(
        s.T, s.H, s.L, a.r, a.k, a.v, a.w, a.a, a.b, p.snap, p.sa, p.gy, gend, p.gk, p.gv, p.gb,
        p.e, p.cvec, p.anchor, p.gs0);
    wkv7_bwd_b2_kernel<F, FW, N><<<dim3(s.B * s.H * NC), RowTile<N>::THREADS, 0, stream>>>(
        s.T, s.H, a.r, a.k, a.v, a.w, a.a, a.b, p.snap, p.sa, p.gy, p.e, p.cvec, p.anchor, p.gr,
        p.gw, p.ga);
  });
}

// w in float32, or in the activations' dtype (read as it is: no float32 copy of it).
#define RWKV_HF_WKV7(F, FW)                                                                \
  template cudaError_t wkv7_forward_launch<F, FW>(const V7Fwd<F, FW>&, cudaStream_t);      \
  template cudaError_t wkv7_backward_launch<F, FW>(const V7Bwd<F, FW>&, cudaStream_t);
RWKV_HF_WKV7(float, float)
RWKV_HF_WKV7(c10::BFloat16, float)
RWKV_HF_WKV7(c10::BFloat16, c10::BFloat16)
RWKV_HF_WKV7(c10::Half, float)
RWKV_HF_WKV7(c10::Half, c10::Half)

}  // namespace rwkv_hf
