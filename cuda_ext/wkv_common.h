// Device helpers shared by the kernels of the rwkv_hf WKV extension (the .cu files only).
//
// Conventions (the package's operator layer, rwkv_hf/ops/__init__.py):
//   * decays are LOG-decays w: the per-step factor is exp(w);
//   * per-token tensors are [B, T, H, N] (matrix-state ops) or [B, T, C] (per-channel ops),
//     contiguous, in F = float / bfloat16 / half; u and the per-channel ops' w in float32, the
//     matrix-state ops' per-token w in FW = float or F (read as it comes, no float32 copy);
//   * states, snapshots and every accumulation are float32 (a few long sums in float64).
// No ATen here (see wkv_launch.h); the host side is wkv_host.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "wkv_launch.h"

namespace rwkv_hf {

template <typename F>
__device__ __forceinline__ float to_f(F x) { return static_cast<float>(x); }

template <typename F>
__device__ __forceinline__ F from_f(float x) { return static_cast<F>(x); }

template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }

// Tokens staged in shared memory per barrier by the matrix-state forward kernels.
template <int N>
struct Stage {
  static constexpr int TT = N <= 64 ? 16 : 8;
};

// Writes x (plus o.add[i], if any) to the per-token output o (OutVec, wkv_launch.h): rounded
// once to F, or in float32.
template <typename F>
__device__ __forceinline__ void put(const OutVec<F>& o, int64_t i, float x) {
  if (o.add != nullptr) x += o.add[i];
  if (o.out32 != nullptr) {
    o.out32[i] = x;
  } else {
    o.out[i] = from_f<F>(x);
  }
}

__device__ __forceinline__ float4 ld4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}

// One round of a reduce-scatter over lanes: the lanes `lane_mask` apart exchange halves of
// x[0 .. 2 HALF - 1], each keeping the half `hi` selects (upper if set) summed with its
// partner's, in x[0 .. HALF - 1].
template <int HALF, int V>
__device__ __forceinline__ void halve(float (&x)[V], bool hi, int lane_mask) {
#pragma unroll
  for (int i = 0; i < HALF; ++i) {
    const float send = hi ? x[i] : x[i + HALF], keep = hi ? x[i + HALF] : x[i];
    x[i] = keep + __shfl_xor_sync(0xffffffffu, send, lane_mask);
  }
}

// Tiled layout of the matrix-state kernels: each thread holds an R x C tile of the [N, N] state.
// The per-token vectors of the rows (decay, key, ... : R values each) and of the columns (value:
// C values) are read from shared memory once per tile instead of once per entry. Those reads,
// with the instructions issued, bound the kernels: shared memory returns one 32-bit register per
// lane per cycle and multiprocessor (an LDS.128 of a warp takes 4 cycles, whatever it
// broadcasts), halved when lanes 2i and 2i+1 read the same address (documented for CC 7.x). So a
// tile reads (5 R + C) / (R C) registers per entry (a column split over 4 lanes read 5), and the
// two lanes of a pair hold the same rows.
// Lanes: thread tid is row block rb = (tid / 2) % RB of column block cb = tid % 2 + 2 (tid / 2RB);
// the RB lanes of a column block are every other lane of 2 RB adjacent lanes of one warp (so
// column sums over the rows are warp shuffles, lane distance 2 m for row-block distance m).
// Row block rb holds rows row(rb, e).
template <int N, int R_, int C_>
struct Tile {
  static constexpr int R = R_;  // rows per thread (a multiple of 4)
  static constexpr int C = C_;  // columns per thread (2 or 4)
  static constexpr int RB = N / R;  // row blocks = lanes per column block
  static constexpr int THREADS = N * N / (R * C);
  static constexpr int WARPS = THREADS / 32;
  static_assert(R % 4 == 0 && (C == 2 || C == 4) && RB >= 4 && RB <= 16 && THREADS % 32 == 0,
                "unsupported tile");
  static __device__ __forceinline__ int rb_of(int tid) { return (tid >> 1) % RB; }
  static __device__ __forceinline__ int cb_of(int tid) { return (tid & 1) | ((tid >> 1) / RB) << 1; }
  // Float4 group g of the row blocks lie side by side, so that a quarter-warp's 16-byte loads
  // of a row vector hit distinct banks.
  static __device__ __forceinline__ int row(int rb, int e) {
    return (e >> 2) * (4 * RB) + rb * 4 + (e & 3);
  }
  static __device__ __forceinline__ float shfl(float x, int m) {  // the lane m row blocks away
    return __shfl_xor_sync(0xffffffffu, x, 2 * m);
  }
  // Sums of x[0 .. V-1] over the RB lanes of a column block, scattered (V >= RB, both powers of
  // 2; V = tokens x C for a group of tokens): lane rb ends with the sums of entries Q rb ..
  // Q rb + Q - 1 in x[0 .. Q-1], Q = V / RB (each round keeps the half its row-block bit selects).
  template <int V, int M = RB / 2, int HALF = V / 2>
  static __device__ __forceinline__ void reduce_scatter_n(float (&x)[V], int rb) {
    static_assert(V >= RB && V % RB == 0, "reduce_scatter_n: V must be a multiple of RB");
    halve<HALF>(x, rb & M, 2 * M);  // round for row-block bit M: HALF entries stay
    if constexpr (M > 1) reduce_scatter_n<V, M / 2, HALF / 2>(x, rb);
  }
  // All C column sums on every lane of the column block: a butterfly, log2(RB) rounds of C
  // independent shuffles (the shortest chain, for the sums the recurrence waits on).
  static __device__ __forceinline__ void all_reduce(float (&x)[C]) {
#pragma unroll
    for (int m = 1; m < RB; m <<= 1)
#pragma unroll
      for (int cc = 0; cc < C; ++cc) x[cc] += shfl(x[cc], m);
  }
  // Row partial sums: x [V / R][R] (V / R vectors of the tile's R rows), summed over the column
  // blocks of this warp (lane bit 0, then lane bits 2 RB, 4 RB, ... : CBW = 32 / RB blocks) by a
  // reduce-scatter (each round keeps the half of the values its lane bit selects; a butterfly
  // once one value is left), then stored into dst [V / R][WARPS][N] (this warp's partials), one
  // store per value left on a lane, instead of every lane summing every value.
  static constexpr int CBW = 32 / RB;
  template <int V, int J = 0, int LEN = V>
  static __device__ __forceinline__ void warp_scatter(float (&x)[V], int lane) {
    constexpr int M = J == 0 ? 1 : (2 * RB) << (J - 1);  // this round's lane bit
    if constexpr (M < 32) {
      if constexpr (LEN > 1) {
        halve<LEN / 2>(x, lane & M, M);
        warp_scatter<V, J + 1, LEN / 2>(x, lane);
      } else {
        x[0] += __shfl_xor_sync(0xffffffffu, x[0], M);
        warp_scatter<V, J + 1, 1>(x, lane);
      }
    }
  }
  template <int V>
  static __device__ __forceinline__ void row_put(float (&x)[V], float* dst, int tid) {
    const int lane = tid % 32, rb = rb_of(tid);
    warp_scatter<V>(x, lane);
    int off = 0, len = V;  // the lane's first value, as an index into [V / R][R]
    bool writer = true;   // one lane of those a butterfly left with the same values
#pragma unroll
    for (int j = 0; j < 5; ++j) {
      const int m = j == 0 ? 1 : (2 * RB) << (j - 1);
      if (m >= 32) break;
      if (len > 1) {
        if (lane & m) off += len / 2;
        len /= 2;
      } else if (lane & m) {
        writer = false;
      }
    }
    if (writer) {
#pragma unroll
      for (int q = 0; q < (V >= CBW ? V / CBW : 1); ++q) {
        const int i = off + q;
        dst[(i / R) * WARPS * N + (tid / 32) * N + row(rb, i % R)] = x[q];
      }
    }
  }
  // X = diag(d) X + x y^T on the tile: d, x the per-row vectors (shared memory, N floats), y the
  // tile's C column values.
  static __device__ __forceinline__ void decay_add_outer(float (&X)[R * C], const float* d,
                                                          const float* x, const float (&y)[C],
                                                          int rb) {
#pragma unroll
    for (int e0 = 0; e0 < R; e0 += 4) {
      const float4 d4 = *reinterpret_cast<const float4*>(d + row(rb, e0));
      const float4 x4 = *reinterpret_cast<const float4*>(x + row(rb, e0));
      const float de[4] = {d4.x, d4.y, d4.z, d4.w}, xe[4] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
      for (int m = 0; m < 4; ++m)
#pragma unroll
        for (int cc = 0; cc < C; ++cc) {
          float& z = X[(e0 + m) * C + cc];
          z = z * de[m] + xe[m] * y[cc];
        }
    }
  }
  // Per tile row: M[row, c0 ..] . X[row, ..] over the tile's C columns, M an [N, N] matrix
  // from its column c0 (the anchors' partials: a snapshot times G).
  static __device__ __forceinline__ void row_dots(const float* M, const float (&X)[R * C],
                                                  float (&out)[R], int rb) {
#pragma unroll
    for (int e = 0; e < R; ++e) {
      const float* mr = M + (int64_t)row(rb, e) * N;
      float acc = 0.f;
#pragma unroll
      for (int cc = 0; cc < C; ++cc) acc += mr[cc] * X[e * C + cc];
      out[e] = acc;
    }
  }
  // After a barrier, row_sum adds the WARPS partials of row i that row_put stored.
  static __device__ __forceinline__ float row_sum(const float* src, int i) {
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) acc += src[w * N + i];
    return acc;
  }
};

// The backward sweeps' tiles (B1: 4 x 4; 8 x 4 for N = 128; 4 x 2 for N = 16) and the forward
// kernels' (8 x 4 from N = 64: half the threads of 4 x 4, so half the per-token reductions and
// shared-memory reads of the column vectors, and fewer instructions per state entry).
template <int N>
using BwdTile = Tile<N, (N >= 64 ? 8 : 4), (N == 16 ? 2 : 4)>;
template <int N>
using FwdTile = Tile<N, (N >= 64 ? 8 : 4), (N == 16 ? 2 : 4)>;

// The tiles of the backward's B2 kernels (forwards over one kSnap-token chunk from its
// snapshot): each thread holds R rows x C columns of S. Their outputs are row dots (S . c_t,
// S . gy_t), summed over the CB = N / C column blocks of a row by shuffles once per group of
// tokens, and the per-token column vectors (4 of them for RWKV-7) reach every row: C floats per
// thread and vector instead of N when a thread held a whole row (which made B2 bound by its
// shared-memory reads, ~4x its arithmetic).
// Lanes: tid = (rb / 2) 2CB + 2 cb + rb % 2: lanes 2i and 2i+1 read the same columns; the CB
// column blocks of a row lie within 2 CB lanes of one warp (lane distance 2 m for block
// distance m). Column block cb holds float4 groups i of the columns at i 4CB + 4cb (so that the
// blocks' 16-byte reads of a column vector are side by side); row block rb holds rows
// rb R .. rb R + R - 1.
template <int N>
struct RowTile {
  static constexpr int R = N == 16 ? 2 : 4;
  static constexpr int C = N == 16 ? 4 : N == 32 ? 8 : 16;
  static constexpr int CB = N / C, RB = N / R, THREADS = RB * CB;
  static_assert(THREADS % 32 == 0 && R <= CB && C % 4 == 0, "unsupported row tile");
  static __device__ __forceinline__ int rb_of(int tid) { return (tid / (2 * CB)) * 2 + (tid & 1); }
  static __device__ __forceinline__ int cb_of(int tid) { return (tid >> 1) % CB; }
  static __device__ __forceinline__ int col(int cb, int j) {  // the tile's column j
    return (j >> 2) * (4 * CB) + cb * 4 + (j & 3);
  }
  static __device__ __forceinline__ float shfl(float x, int m) {  // the lane m column blocks away
    return __shfl_xor_sync(0xffffffffu, x, 2 * m);
  }
  // x [R][V / R] (row-major: per tile row, that row's V / R values) summed over the column
  // blocks: afterwards x[0 .. V/R - 1] hold the sums of row own_row(cb) (column blocks
  // cb with cb % (CB / R) == 0 own a row; the others hold a copy).
  template <int V>
  static __device__ __forceinline__ void row_sums(float (&x)[V], int cb) {
    reduce_rows<V, CB / 2, V / 2>(x, cb);
  }
  template <int V, int M, int HALF>
  static __device__ __forceinline__ void reduce_rows(float (&x)[V], int cb) {
    if constexpr (M >= CB / R) {  // scatter: keep the half of the rows the bit selects
      halve<HALF>(x, cb & M, 2 * M);
      if constexpr (M > 1) reduce_rows<V, M / 2, HALF / 2>(x, cb);
    } else {  // butterfly over the remaining bits (more column blocks than rows)
#pragma unroll
      for (int i = 0; i < V / R; ++i) x[i] += shfl(x[i], M);
      if constexpr (M > 1) reduce_rows<V, M / 2, HALF>(x, cb);
    }
  }
  // The tile of the [N, N] matrix M (rows r0 .., the block's columns) into X[e * C + j].
  static __device__ __forceinline__ void load(const float* M, float (&X)[R * C], int r0, int cb) {
#pragma unroll
    for (int e = 0; e < R; ++e)
#pragma unroll
      for (int j = 0; j < C; j += 4) {
        const float4 m4 = ld4(M + (int64_t)(r0 + e) * N + col(cb, j));
        X[e * C + j] = m4.x, X[e * C + j + 1] = m4.y, X[e * C + j + 2] = m4.z, X[e * C + j + 3] = m4.w;
      }
  }
  static __device__ __forceinline__ int own_row(int cb) { return cb / (CB / R); }
  static __device__ __forceinline__ bool owner(int cb) { return cb % (CB / R) == 0; }
};

// Tokens per group of the forward kernels: their outputs' column sums are reduced and stored
// once per group (reduce_scatter_n over G x C values), and a group's shared-memory reads have
// fixed offsets.
constexpr int kGroup = 4;

// x[0 .. E-1] into shared memory at p (16-byte aligned when E % 4 == 0).
template <int E>
__device__ __forceinline__ void st_shared(float* p, const float (&x)[E]) {
  if constexpr (E % 4 == 0) {
#pragma unroll
    for (int i = 0; i < E; i += 4)
      *reinterpret_cast<float4*>(p + i) = float4{x[i], x[i + 1], x[i + 2], x[i + 3]};
  } else {
#pragma unroll
    for (int i = 0; i < E; ++i) p[i] = x[i];
  }
}

// E consecutive elements of F (a stage load of one thread), moved as 16-byte (or 4-byte) words:
// one vector load instead of E (the host keeps the per-token inputs 16-byte aligned).
template <typename F, int E>
struct Raw {
  static constexpr int BYTES = E * (int)sizeof(F);
  using Word = std::conditional_t<BYTES % 16 == 0, float4,
                                  std::conditional_t<BYTES % 4 == 0, float, F>>;
  static constexpr int W = BYTES / (int)sizeof(Word);
  Word w[W];
  __device__ __forceinline__ void load(const F* p) {
    const Word* q = reinterpret_cast<const Word*>(p);
#pragma unroll
    for (int i = 0; i < W; ++i) w[i] = q[i];
  }
  __device__ __forceinline__ float get(int i) const { return to_f(reinterpret_cast<const F*>(w)[i]); }
  // The E values in float32 into shared memory at p; `decay`: their exponentials (the factors
  // of log-decays).
  __device__ __forceinline__ void to_shared(float* p, bool decay = false) const {
    float x[E];
#pragma unroll
    for (int i = 0; i < E; ++i) x[i] = decay ? expf(get(i)) : get(i);
    st_shared(p, x);
  }
};

// x[0 .. R-1] from shared memory at p (16-byte aligned when R % 4 == 0).
template <int R>
__device__ __forceinline__ void ld_rows(const float* p, float (&x)[R]) {
  if constexpr (R % 4 == 0) {
#pragma unroll
    for (int i = 0; i < R; i += 4) {
      const float4 q = ld4(p + i);
      x[i] = q.x, x[i + 1] = q.y, x[i + 2] = q.z, x[i + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < R; ++i) x[i] = p[i];
  }
}


namespace {
// The sequential step of the chunk-parallel form of wkv6 / wkv7, per (batch, head) over its NCL
// chunks:
//   forwards:  X[c+1] = M_c X[c] + Lc_c      (chunk start states from the chunks' transitions)
//   backwards: X[c-1] = M_c^T X[c] + Lc_c    (the same for the gradient G of the state)
// from X[0] = x0 (forwards) or X[NCL-1] = x0 (backwards), x0 [B*H, N, N] (null: zero). Block
// (b*H + h, group of CJ columns); thread i computes row i, from row i of M_c (forwards) or its
// column i (backwards) read straight into registers. Only X depends on the walk: for N <= 64
// (two rows of N registers), each step's M_c and Lc_c are loaded during the step before, so a
// step waits on the one before it, not on memory (the walk is ~1/16 of RWKV-7's B=1 forward).
constexpr int kCombineCols = 16;  // columns of X per block

template <int N>
__device__ __forceinline__ void combine_operands(const float* __restrict__ Mc,
                                                 const float* __restrict__ Lc, bool backward,
                                                 int i, float (&m)[N], float (&l)[kCombineCols]) {
  if (backward) {  // column i of M_c: a coalesced load per element
#pragma unroll
    for (int k = 0; k < N; ++k) m[k] = Mc[k * N + i];
  } else {  // row i of M_c: 16-byte words
#pragma unroll
    for (int k = 0; k < N; k += 4) {
      const float4 q = ld4(Mc + i * N + k);
      m[k] = q.x, m[k + 1] = q.y, m[k + 2] = q.z, m[k + 3] = q.w;
    }
  }
#pragma unroll
  for (int jj = 0; jj < kCombineCols; jj += 4) {
    const float4 q = ld4(Lc + jj);
    l[jj] = q.x, l[jj + 1] = q.y, l[jj + 2] = q.z, l[jj + 3] = q.w;
  }
}

template <int N>
__global__ void __launch_bounds__(N) chunk_combine_kernel(int NCL, bool backward,
                                                          const float* __restrict__ M,
                                                          const float* __restrict__ Lc,
                                                          const float* __restrict__ x0,
                                                          float* __restrict__ X) {
  constexpr int CJ = kCombineCols;
  constexpr bool kAhead = N <= 64;  // the next step's operands loaded during this one
  __shared__ __align__(16) float xs[N][CJ];
  const int i = threadIdx.x, j0 = blockIdx.y * CJ;
  const int64_t base = (int64_t)blockIdx.x * NCL * N * N;
  int c = backward ? NCL - 1 : 0;
  for (int q = i; q < N * CJ; q += N) {
    const int64_t o = (int64_t)(q / CJ) * N + j0 + q % CJ;
    const float x = x0 == nullptr ? 0.f : x0[(int64_t)blockIdx.x * N * N + o];
    xs[q / CJ][q % CJ] = x;
    X[base + (int64_t)c * N * N + o] = x;
  }
  auto operands = [&](int cc, float(&m)[N], float(&l)[CJ]) {
    const int64_t at = base + (int64_t)cc * N * N;
    combine_operands<N>(M + at, Lc + at + (int64_t)i * N + j0, backward, i, m, l);
  };
  float m_next[N], l_next[CJ];
  if (kAhead && NCL > 1) operands(c, m_next, l_next);
  __syncthreads();  // xs written
  for (int step = 0; step + 1 < NCL; ++step) {
    const int cn = backward ? c - 1 : c + 1;
    float m[N], l[CJ];
    if constexpr (kAhead) {
#pragma unroll
      for (int k = 0; k < N; ++k) m[k] = m_next[k];
#pragma unroll
      for (int jj = 0; jj < CJ; ++jj) l[jj] = l_next[jj];
      if (step + 2 < NCL) operands(cn, m_next, l_next);
    } else {
      operands(c, m, l);
    }
    float acc[CJ];
#pragma unroll
    for (int jj = 0; jj < CJ; ++jj) acc[jj] = 0.f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
#pragma unroll
      for (int jj = 0; jj < CJ; jj += 4) {
        const float4 x = ld4(&xs[k][jj]);
        acc[jj] += m[k] * x.x, acc[jj + 1] += m[k] * x.y;
        acc[jj + 2] += m[k] * x.z, acc[jj + 3] += m[k] * x.w;
      }
    }
    float* xp = X + base + (int64_t)cn * N * N + (int64_t)i * N + j0;
    __syncthreads();  // every thread is done reading xs
#pragma unroll
    for (int jj = 0; jj < CJ; ++jj) {
      acc[jj] += l[jj];
      xp[jj] = acc[jj];
      xs[i][jj] = acc[jj];
    }
    __syncthreads();  // xs complete
    c = cn;
  }
}

// The chunk start states (forwards) or the gradients at the chunks' ends (backwards) of the
// chunk-parallel form into X [B*H, NCL, N, N], from pass 1's transitions and local results.
template <int N>
void combine_chunks(int BH, int NCL, bool backward, const float* trans, const float* local,
                    const float* x0, float* X, cudaStream_t stream) {
  chunk_combine_kernel<N><<<dim3(BH, N / kCombineCols), N, 0, stream>>>(NCL, backward, trans, local,
                                                                         x0, X);
}

// The same for a diagonal transition (RWKV-5/6: M_c = diag(p_c), stored as the matrix with p_c
// on its diagonal): X[c+1] = diag(p_c) X[c] + Lc_c (or X[c-1], backwards), entry by entry, one
// thread per (batch*head, entry) walking the chunks. The matrix form would multiply by the
// zeros: N times the work, in a walk of N / 16 blocks per (batch, head). x0 of (b, h) at
// x0 + b x0b + h N N (bi_wkv6's halves: their slices of [B, 2, H, N, N]); null: zero.
template <int N>
__global__ void chunk_combine_diag_kernel(int B, int H, int NCL, bool backward,
                                          const float* __restrict__ M,
                                          const float* __restrict__ Lc,
                                          const float* __restrict__ x0, int64_t x0b,
                                          float* __restrict__ X) {
  const int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // (bh, i, j)
  if (q >= (int64_t)B * H * N * N) return;
  const int64_t bh = q / (N * N), ij = q % (N * N), ii = (ij / N) * (N + 1);
  const float* m = M + bh * NCL * N * N;
  const float* l = Lc + bh * NCL * N * N;
  float* xs = X + bh * NCL * N * N;
  int c = backward ? NCL - 1 : 0;
  float x = x0 == nullptr ? 0.f : x0[(bh / H) * x0b + (bh % H) * N * N + ij];
  xs[(int64_t)c * N * N + ij] = x;
  for (int step = 0; step + 1 < NCL; ++step) {
    x = m[(int64_t)c * N * N + ii] * x + l[(int64_t)c * N * N + ij];
    c = backward ? c - 1 : c + 1;
    xs[(int64_t)c * N * N + ij] = x;
  }
}

template <int N>
void combine_chunks_diag(int B, int H, int NCL, bool backward, const float* trans,
                         const float* local, const float* x0, int64_t x0b, float* X,
                         cudaStream_t stream) {
  const int64_t n = (int64_t)B * H * N * N;
  chunk_combine_diag_kernel<N><<<(unsigned)((n + 255) / 256), 256, 0, stream>>>(
      B, H, NCL, backward, trans, local, x0, x0b, X);
}

// body(std::integral_constant<int, N>()) for the head size n, one of Ns (the host checks n
// first), then the launches' status.
template <int... Ns, typename Body>
cudaError_t dispatch_sizes(int n, Body&& body) {
  const bool known = ((n == Ns && (body(std::integral_constant<int, Ns>()), true)) || ...);
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

// The RWKV head sizes of the matrix-state kernels.
template <typename Body>
cudaError_t dispatch_n(int n, Body&& body) {
  return dispatch_sizes<16, 32, 64, 128>(n, body);
}
}  // namespace
}  // namespace rwkv_hf
