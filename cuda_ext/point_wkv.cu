// PointRWKV's bidirectional WKV (rwkv_hf.ops.point_wkv): the two scans, both directions in one
// launch. The ops layer forms y = r * (A_fwd + A_bwd + u * k * sum(v)) from their outputs.
//
// Per (batch, head), K = V = N, the state S [N, N] (row d: key index, column e: value index):
//   A_t[d]    = sum_e S_{t-1}[d, e] k_t[e]            (the state BEFORE the token, contracted
//                                                       with k over its value index)
//   S_t[d, e] = e_t[d] S_{t-1}[d, e] + k_t[d] v_t[e],  e_t = exp(w_t)
// Left to right: from state[:, 0] over t = 0 .. T-1; right to left: from state[:, 1] over
// t = T-1 .. 0 (its S_{t-1} is the state of the tokens after t). Below, "t-1" and "before" are
// in the direction's scan order. A [2, B, T, H, N] (float32, one slice per direction); final
// states [B, 2, H, N, N].
//
// Backward of one direction, against its scan order, with G = dL/dS_t (from the final state's
// gradient), q_t = dL/dA_t, Sp = S_{t-1}:
//   gk_t[d] = sum_e G[d, e] v_t[e] + sum_d' q_t[d'] Sp[d', d]     (= (G v)[d] + (Sp^T q)[d])
//   gv_t[e] = sum_d G[d, e] k_t[d]                                 (= (G^T k)[e])
//   gw_t[d] = e_t[d] sum_e G[d, e] Sp[d, e]
//   G <- diag(e_t) G + q_t k_t^T, which ends as the initial state's gradient.
// gw needs Sp and G at once, which run opposite ways. Per row d, with beta_t = S_t[d,:] . G_t[d,:]:
//   beta_t     = gw_t[d] + k_t[d] (G_t v_t)[d]                    (expand S_t)
//   beta_{t-1} = gw_t[d] + q_t[d] A_t[d]                           (expand G_{t-1})
// so, backwards inside a chunk, gw_t = beta_t - k_t (G_t v_t) and beta_{t-1} = gw_t + q_t A_t,
// anchored at the chunk's last token by beta = S_end . G_end (no inversion of the decay).
//
// Design (correctness first; PointRWKV's sequences are short, T <= ~2048, and a training batch
// gives B * H * 2 blocks): one block per (batch * head, direction), gridDim.y = 2. Thread
// 4 d + p holds columns p, p + 4, ... (C = N / 4 of them, interleaved: the lanes of a row read
// distinct banks) of row d of S (and, backwards, of G): the forward is row-local (A_t[d] is a
// sum over the row's 4 lanes, two shuffles). The per-token vectors are staged in shared memory,
// TT tokens per barrier pair, as float32 (e = exp(w) once per element). With gradients the
// forward stores a snapshot of S every kSnap tokens of the scan (snap[c] = the state before
// scan position c kSnap). The backward walks the snapshot chunks from the last: (1) from the
// chunk's snapshot forwards, the column sums Sp^T q (shuffles over the warp's rows, then the
// warps' partials through shared memory, one barrier per token, double-buffered) into gk, and
// q_t A_t (recomputed) parked in gw; (2) backwards over the chunk with G in registers, from
// the anchor S_end . G: G v (row sums), G^T k (column sums, as in 1) and the gw chain. The
// directions' gk, gv, gw are float32 [2, B, T, H, N]; the host sums them and rounds once.
#include "wkv_common.h"

namespace rwkv_hf {
namespace {

// The thread layout of the point_wkv kernels for head size N.
template <int N>
struct PointTile {
  static constexpr int P = 4;  // lanes per state row (adjacent lanes)
  static constexpr int C = N / P;  // columns per lane: p, p + P, ..., p + P (C - 1)
  static constexpr int THREADS = N * P;
  static constexpr int WARPS = THREADS / 32;
  static constexpr int TT = N == 128 ? 8 : 16;  // tokens staged per barrier pair
  static_assert(THREADS % 32 == 0 && TT % 2 == 0 && kSnap % TT == 0, "unsupported tile");

  // The sum of x over the row's P lanes, on every one of them.
  static __device__ __forceinline__ float row_sum(float x) {
#pragma unroll
    for (int m = 1; m < P; m <<= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
    return x;
  }
  // The column partial sums x[j] (column p + P j) summed over the warp's rows by shuffles, then
  // stored by the warp's first row into dst[warp][column] ([WARPS][N]).
  static __device__ __forceinline__ void col_put(float (&x)[C], float* dst, int tid) {
#pragma unroll
    for (int m = P; m < 32; m <<= 1)
#pragma unroll
      for (int j = 0; j < C; ++j) x[j] += __shfl_xor_sync(0xffffffffu, x[j], m);
    const int lane = tid % 32;
    if (lane < P) {
#pragma unroll
      for (int j = 0; j < C; ++j) dst[(tid / 32) * N + lane + P * j] = x[j];
    }
  }
  // After a barrier: column i's sum over the warps' partials that col_put stored.
  static __device__ __forceinline__ float col_sum(const float* src, int i) {
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) acc += src[w * N + i];
    return acc;
  }
};

// Token index of scan position s: left to right (dir 0) or right to left (dir 1).
__device__ __forceinline__ int point_token(int dir, int T, int s) { return dir == 0 ? s : T - 1 - s; }

// Forward: block (b * H + h, dir). From s0[b, dir, h] (null: zero), writes A[dir] and the final
// state sT[b, dir, h] and, when snap is not null, the snapshots snap[dir, b, h, c] = the state
// before scan position c kSnap.
template <typename F, typename FW, int N>
__global__ void __launch_bounds__(PointTile<N>::THREADS) point_fwd_kernel(
    int T, int H, const F* __restrict__ k, const F* __restrict__ v, const FW* __restrict__ w,
    const float* __restrict__ s0 /* [B,2,H,N,N] | null */, float* __restrict__ A /* [2,B,T,H,N] */,
    float* __restrict__ sT /* [B,2,H,N,N] */, float* __restrict__ snap /* [2,B,H,NC,N,N] | null */) {
  using Tl = PointTile<N>;
  constexpr int P = Tl::P, C = Tl::C, NT = Tl::THREADS, TT = Tl::TT;
  __shared__ float s_k[TT][N];
  __shared__ float s_v[TT][N];
  __shared__ float s_e[TT][N];
  const int BH = gridDim.x, bh = blockIdx.x, h = bh % H, b = bh / H, dir = blockIdx.y;
  const int tid = threadIdx.x, row = tid / P, p = tid % P;
  const int NC = (T + kSnap - 1) / kSnap;
  const int64_t stride = (int64_t)H * N;
  const int64_t base = (int64_t)b * T * stride + (int64_t)h * N;  // (b, token 0, h, 0)
  const int64_t abase = (int64_t)dir * BH * T * N + base;          // the same in A[dir]
  const int64_t cell = (((int64_t)b * 2 + dir) * H + h) * N * N + (int64_t)row * N + p;
  float S[C];  // S[j] = S[row][p + P j]
#pragma unroll
  for (int j = 0; j < C; ++j) S[j] = s0 == nullptr ? 0.f : s0[cell + P * j];
  float* snp = snap == nullptr
                   ? nullptr
                   : snap + ((int64_t)dir * BH + bh) * NC * N * N + (int64_t)row * N + p;
  for (int s0_ = 0; s0_ < T; s0_ += TT) {
    const int cnt = min(TT, T - s0_);
    __syncthreads();  // the previous stage has been read
    for (int i = tid; i < cnt * N; i += NT) {
      const int tt = i / N, x = i % N;
      const int64_t o = base + (int64_t)point_token(dir, T, s0_ + tt) * stride + x;
      s_k[tt][x] = to_f(k[o]);
      s_v[tt][x] = to_f(v[o]);
      s_e[tt][x] = expf(to_f(w[o]));
    }
    __syncthreads();
    for (int tt = 0; tt < cnt; ++tt) {
      const int s = s0_ + tt;
      if (snp != nullptr && s % kSnap == 0) {
        float* q = snp + (int64_t)(s / kSnap) * N * N;
#pragma unroll
        for (int j = 0; j < C; ++j) q[P * j] = S[j];
      }
      float a = 0.f;
#pragma unroll
      for (int j = 0; j < C; ++j) a += S[j] * s_k[tt][p + P * j];
      a = Tl::row_sum(a);
      if (p == 0) A[abase + (int64_t)point_token(dir, T, s) * stride + row] = a;
      const float ed = s_e[tt][row], kd = s_k[tt][row];
#pragma unroll
      for (int j = 0; j < C; ++j) S[j] = S[j] * ed + kd * s_v[tt][p + P * j];
    }
  }
#pragma unroll
  for (int j = 0; j < C; ++j) sT[cell + P * j] = S[j];
}

// Backward: block (b * H + h, dir), over the snapshot chunks from the last (see the head
// comment). gA (null: zero) [2,B,T,H,N]; gsT (null: zero) and gs0 [B,2,H,N,N]; gk, gv, gw:
// float32 [2,B,T,H,N], each direction's own.
template <typename F, typename FW, int N>
__global__ void __launch_bounds__(PointTile<N>::THREADS) point_bwd_kernel(
    int T, int H, const F* __restrict__ k, const F* __restrict__ v, const FW* __restrict__ w,
    const float* __restrict__ snap, const float* __restrict__ gA, const float* __restrict__ gsT,
    float* __restrict__ gk, float* __restrict__ gv, float* __restrict__ gw,
    float* __restrict__ gs0) {
  using Tl = PointTile<N>;
  constexpr int P = Tl::P, C = Tl::C, NT = Tl::THREADS, TT = Tl::TT, W = Tl::WARPS;
  __shared__ float s_k[TT][N];
  __shared__ float s_v[TT][N];
  __shared__ float s_e[TT][N];
  __shared__ float s_q[TT][N];
  __shared__ float s_col[2][W * N];  // the warps' column partials, by token parity
  __shared__ float s_row[2][N];      // (G v)[d], by token parity
  const int BH = gridDim.x, bh = blockIdx.x, h = bh % H, b = bh / H, dir = blockIdx.y;
  const int tid = threadIdx.x, row = tid / P, p = tid % P;
  const int NC = (T + kSnap - 1) / kSnap;
  const int64_t stride = (int64_t)H * N;
  const int64_t base = (int64_t)b * T * stride + (int64_t)h * N;
  const int64_t dbase = (int64_t)dir * BH * T * N + base;  // (dir, b, token 0, h, 0)
  const int64_t cell = (((int64_t)b * 2 + dir) * H + h) * N * N + (int64_t)row * N + p;
  const float* snp = snap + ((int64_t)dir * BH + bh) * NC * N * N + (int64_t)row * N + p;
  float G[C], S[C];  // G[j] = G[row][p + P j], S likewise
#pragma unroll
  for (int j = 0; j < C; ++j) G[j] = gsT == nullptr ? 0.f : gsT[cell + P * j];
  auto stage = [&](int first, int cnt) {  // scan positions first .. first + cnt - 1
    for (int i = tid; i < cnt * N; i += NT) {
      const int tt = i / N, x = i % N, t = point_token(dir, T, first + tt);
      const int64_t o = base + (int64_t)t * stride + x;
      s_k[tt][x] = to_f(k[o]);
      s_v[tt][x] = to_f(v[o]);
      s_e[tt][x] = expf(to_f(w[o]));
      s_q[tt][x] = gA == nullptr ? 0.f : gA[dbase + (int64_t)t * stride + x];
    }
  };
  for (int c = NC - 1; c >= 0; --c) {
    const int sbeg = c * kSnap, send = min(T, sbeg + kSnap);
#pragma unroll
    for (int j = 0; j < C; ++j) S[j] = snp[(int64_t)c * N * N + P * j];
    // (1) Forwards from the snapshot: gk_t = Sp^T q_t (the column sums), q_t A_t into gw.
    for (int s0_ = sbeg; s0_ < send; s0_ += TT) {
      const int cnt = min(TT, send - s0_);
      __syncthreads();
      stage(s0_, cnt);
      __syncthreads();
      for (int tt = 0; tt < cnt; ++tt) {
        const int t = point_token(dir, T, s0_ + tt), buf = tt & 1;
        const float qd = s_q[tt][row], ed = s_e[tt][row], kd = s_k[tt][row];
        float col[C], a = 0.f;
#pragma unroll
        for (int j = 0; j < C; ++j) {
          const int e = p + P * j;
          col[j] = qd * S[j];
          a += S[j] * s_k[tt][e];
          S[j] = S[j] * ed + kd * s_v[tt][e];
        }
        a = Tl::row_sum(a);
        if (p == 0) gw[dbase + (int64_t)t * stride + row] = qd * a;  // read in (2)
        Tl::col_put(col, s_col[buf], tid);
        __syncthreads();
        if (tid < N) gk[dbase + (int64_t)t * stride + tid] = Tl::col_sum(s_col[buf], tid);
      }
    }
    // (2) Backwards over the chunk: S is S_end; the row anchor beta = S_end . G_end.
    float beta = 0.f;
#pragma unroll
    for (int j = 0; j < C; ++j) beta += S[j] * G[j];
    beta = Tl::row_sum(beta);  // lane p == 0 runs the chain
    for (int s0_ = sbeg + (send - 1 - sbeg) / TT * TT; s0_ >= sbeg; s0_ -= TT) {
      const int cnt = min(TT, send - s0_);
      __syncthreads();
      stage(s0_, cnt);
      __syncthreads();
      for (int tt = cnt - 1; tt >= 0; --tt) {
        const int t = point_token(dir, T, s0_ + tt), buf = tt & 1;
        const float qd = s_q[tt][row], ed = s_e[tt][row], kd = s_k[tt][row];
        float col[C], gvd = 0.f;  // gvd: (G v)[row]
#pragma unroll
        for (int j = 0; j < C; ++j) {
          const int e = p + P * j;
          gvd += G[j] * s_v[tt][e];
          col[j] = G[j] * kd;
          G[j] = G[j] * ed + qd * s_k[tt][e];
        }
        gvd = Tl::row_sum(gvd);
        if (p == 0) {
          const int64_t o = dbase + (int64_t)t * stride + row;
          const float gwt = beta - kd * gvd;
          beta = gwt + gw[o];  // + q_t A_t, from (1)
          gw[o] = gwt;
          s_row[buf][row] = gvd;
        }
        Tl::col_put(col, s_col[buf], tid);
        __syncthreads();
        if (tid < N) {
          const int64_t o = dbase + (int64_t)t * stride + tid;
          gv[o] = Tl::col_sum(s_col[buf], tid);
          gk[o] += s_row[buf][tid];  // this thread wrote gk[o] in (1)
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < C; ++j) gs0[cell + P * j] = G[j];
}

// The head sizes of the point_wkv kernels (the host checks them first): besides the RWKV sizes,
// PointRWKV's 48 (384 channels in 8 heads, as released) and 96 (in 4). A row's 4 lanes and 8
// rows per warp need N % 8 == 0.
template <typename Body>
cudaError_t dispatch_point_n(int n, Body&& body) {
  return dispatch_sizes<16, 32, 48, 64, 96, 128>(n, body);
}

}  // namespace

template <typename F, typename FW>
cudaError_t point_forward_launch(const PointFwd<F, FW>& p, cudaStream_t stream) {
  const PointIn<F, FW>& a = p.in;
  return dispatch_point_n(a.N, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    point_fwd_kernel<F, FW, N><<<dim3(a.B * a.H, 2), PointTile<N>::THREADS, 0, stream>>>(
        a.T, a.H, a.k, a.v, a.w, p.s0, p.A, p.sT, p.snap);
  });
}

template <typename F, typename FW>
cudaError_t point_backward_launch(const PointBwd<F, FW>& p, cudaStream_t stream) {
  const PointIn<F, FW>& a = p.in;
  return dispatch_point_n(a.N, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    point_bwd_kernel<F, FW, N><<<dim3(a.B * a.H, 2), PointTile<N>::THREADS, 0, stream>>>(
        a.T, a.H, a.k, a.v, a.w, p.snap, p.gA, p.gsT, p.gk, p.gv, p.gw, p.gs0);
  });
}

// w in float32, or in the activations' dtype (read as it is: no float32 copy of it).
#define RWKV_HF_POINT(F, FW)                                                                 \
  template cudaError_t point_forward_launch<F, FW>(const PointFwd<F, FW>&, cudaStream_t);    \
  template cudaError_t point_backward_launch<F, FW>(const PointBwd<F, FW>&, cudaStream_t);
RWKV_HF_POINT(float, float)
RWKV_HF_POINT(c10::BFloat16, float)
RWKV_HF_POINT(c10::BFloat16, c10::BFloat16)
RWKV_HF_POINT(c10::Half, float)
RWKV_HF_POINT(c10::Half, c10::Half)

}  // namespace rwkv_hf
