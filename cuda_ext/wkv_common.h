// Device helpers shared by the kernels of the rwkv_hf WKV extension (the .cu files only).
//
// Conventions (the package's operator layer, rwkv_hf/ops/__init__.py):
//   * decays are LOG-decays w: the per-step factor is exp(w);
//   * per-token tensors are [B, T, H, N] (matrix-state ops) or [B, T, C] (per-channel ops),
//     contiguous, in F = float / bfloat16 / half; w and u always reach the kernels in float32;
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

// Tokens staged in shared memory per barrier by the matrix-state kernels.
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

// Tiled layout of the forward kernels: each thread holds an R x C tile of the [N, N] state.
// The per-token vectors of the rows (decay, key, ... : R values each) and of the columns (value:
// C values) are read from shared memory once per tile instead of once per entry: these reads
// bound the kernels (shared memory serves 128 bytes per cycle per multiprocessor), and a tile
// reads (5 R + C) / (R C) floats per entry where a column split over 4 lanes reads 5.
// The RB = N / R threads of a column block are adjacent lanes of one warp (thread cb * RB + rb),
// so column sums over the rows are warp shuffles. Row block rb holds rows tile_row(rb, e).
template <int N>
struct Tile {
  static constexpr int R = N == 128 ? 8 : 4;   // rows per thread
  static constexpr int C = N == 16 ? 2 : 4;    // columns per thread (a full warp for N = 16)
  static constexpr int RB = N / R;             // row blocks = lanes per column block (<= 32)
  static constexpr int THREADS = N * N / (R * C);
  // Float4 group g of the row blocks lie side by side, so that a quarter-warp's 16-byte loads
  // of a row vector hit distinct banks.
  static __device__ __forceinline__ int row(int rb, int e) {
    return (e >> 2) * (4 * RB) + rb * 4 + (e & 3);
  }
  // Sums of x[0 .. C-1] over the RB lanes of a column block, scattered: the result is the sum
  // for column col(rb) of the tile (C + log2(RB) - 2 shuffles instead of C log2(RB)).
  static __device__ __forceinline__ int col(int rb) {
    return C == 4 ? ((rb & (RB / 2)) ? 2 : 0) + ((rb & (RB / 4)) ? 1 : 0) : ((rb & (RB / 2)) ? 1 : 0);
  }
  static __device__ __forceinline__ float reduce_scatter(const float (&x)[C], int rb) {
    constexpr unsigned kAll = 0xffffffffu;
    const bool hi = rb & (RB / 2);
    float keep;
    int m;
    if constexpr (C == 4) {
      const float k0 = (hi ? x[2] : x[0]) + __shfl_xor_sync(kAll, hi ? x[0] : x[2], RB / 2);
      const float k1 = (hi ? x[3] : x[1]) + __shfl_xor_sync(kAll, hi ? x[1] : x[3], RB / 2);
      const bool lo = rb & (RB / 4);
      keep = (lo ? k1 : k0) + __shfl_xor_sync(kAll, lo ? k0 : k1, RB / 4);
      m = RB / 8;
    } else {
      keep = (hi ? x[1] : x[0]) + __shfl_xor_sync(kAll, hi ? x[0] : x[1], RB / 2);
      m = RB / 4;
    }
    for (; m >= 1; m >>= 1) keep += __shfl_xor_sync(kAll, keep, m);
    return keep;
  }
  static constexpr int WARPS = THREADS / 32;  // THREADS is a multiple of 32
  // Row partial sums q[0 .. R-1] summed over the column blocks of this warp (lanes RB apart);
  // every lane gets the warp's sums. Lanes with tid % 32 < RB then hold one per row block.
  template <int Q>
  static __device__ __forceinline__ void warp_rows(float (&q)[Q]) {
#pragma unroll
    for (int m = RB; m < 32; m <<= 1)
#pragma unroll
      for (int e = 0; e < Q; ++e) q[e] += __shfl_xor_sync(0xffffffffu, q[e], m);
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
  // Row sums of the backward sweeps: row_put stores q[0 .. R-1], summed over the warp's column
  // blocks, into dst [WARPS][N] (one row block's lanes per warp); after a barrier row_sum adds
  // the WARPS partials of row i.
  static __device__ __forceinline__ void row_put(float (&q)[R], float* dst, int tid) {
    warp_rows(q);
    if (tid % 32 < RB) {
#pragma unroll
      for (int e = 0; e < R; ++e) dst[(tid / 32) * N + row(tid % RB, e)] = q[e];
    }
  }
  static __device__ __forceinline__ float row_sum(const float* src, int i) {
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) acc += src[w * N + i];
    return acc;
  }
  // All C column sums on every lane of the column block.
  static __device__ __forceinline__ void all_reduce(float (&x)[C], int rb) {
    constexpr unsigned kAll = 0xffffffffu;
    const float s = reduce_scatter(x, rb);
    const int c = col(rb);
    if constexpr (C == 4) {
      const float o1 = __shfl_xor_sync(kAll, s, RB / 4);  // column c ^ 1
      const float o2 = __shfl_xor_sync(kAll, s, RB / 2);  // column c ^ 2
      const float o3 = __shfl_xor_sync(kAll, o1, RB / 2);  // column c ^ 3
#pragma unroll
      for (int cc = 0; cc < 4; ++cc)
        x[cc] = cc == c ? s : cc == (c ^ 1) ? o1 : cc == (c ^ 2) ? o2 : o3;
    } else {
      const float o1 = __shfl_xor_sync(kAll, s, RB / 2);
      x[0] = c == 0 ? s : o1;
      x[1] = c == 0 ? o1 : s;
    }
  }
};

namespace {
// The sequential step of the chunk-parallel form of wkv6 / wkv7, per (batch, head) over its NCL
// chunks:
//   forwards:  X[c+1] = M_c X[c] + Lc_c      (chunk start states from the chunks' transitions)
//   backwards: X[c-1] = M_c^T X[c] + Lc_c    (the same for the gradient G of the state)
// from X[0] = x0 (forwards) or X[NCL-1] = x0 (backwards), x0 [B*H, N, N]. Block (b*H + h, group
// of CJ columns); thread i computes row i; M_c is staged through shared memory in tiles of MT
// columns.
template <int N>
__global__ void __launch_bounds__(N) chunk_combine_kernel(int NCL, bool backward,
                                                          const float* __restrict__ M,
                                                          const float* __restrict__ Lc,
                                                          const float* __restrict__ x0,
                                                          float* __restrict__ X) {
  constexpr int CJ = 16, MT = N < 32 ? N : 32;
  __shared__ float tile[MT][N + 1];
  __shared__ float xs[N][CJ];
  const int i = threadIdx.x, j0 = blockIdx.y * CJ;
  const int64_t base = (int64_t)blockIdx.x * NCL * N * N;
  int c = backward ? NCL - 1 : 0;
  for (int q = i; q < N * CJ; q += N) {
    const int64_t o = (int64_t)(q / CJ) * N + j0 + q % CJ;
    const float x = x0[(int64_t)blockIdx.x * N * N + o];
    xs[q / CJ][q % CJ] = x;
    X[base + (int64_t)c * N * N + o] = x;
  }
  for (int step = 0; step + 1 < NCL; ++step) {
    const float* Mc = M + base + (int64_t)c * N * N;
    float acc[CJ];
#pragma unroll
    for (int jj = 0; jj < CJ; ++jj) acc[jj] = 0.f;
    for (int m0 = 0; m0 < N; m0 += MT) {
      __syncthreads();  // xs written / the previous tile consumed
      for (int q = i; q < MT * N; q += N) {
        if (backward) {  // (M^T)[ii][m0 + mm] = M[m0 + mm][ii]
          const int mm = q / N, ii = q % N;
          tile[mm][ii] = Mc[(m0 + mm) * N + ii];
        } else {
          const int ii = q / MT, mm = q % MT;
          tile[mm][ii] = Mc[ii * N + m0 + mm];
        }
      }
      __syncthreads();
      for (int mm = 0; mm < MT; ++mm) {
        const float p = tile[mm][i];
#pragma unroll
        for (int jj = 0; jj < CJ; ++jj) acc[jj] += p * xs[m0 + mm][jj];
      }
    }
    const int cn = backward ? c - 1 : c + 1;
    const float* lp = Lc + base + (int64_t)c * N * N + (int64_t)i * N + j0;
    float* xp = X + base + (int64_t)cn * N * N + (int64_t)i * N + j0;
    __syncthreads();  // every thread is done reading xs
#pragma unroll
    for (int jj = 0; jj < CJ; ++jj) {
      acc[jj] += lp[jj];
      xp[jj] = acc[jj];
      xs[i][jj] = acc[jj];
    }
    c = cn;
  }
}

// The chunk start states (forwards) or the gradients at the chunks' ends (backwards) of the
// chunk-parallel form into X [B*H, NCL, N, N], from pass 1's transitions and local results.
template <int N>
void combine_chunks(int BH, int NCL, bool backward, const float* trans, const float* local,
                    const float* x0, float* X, cudaStream_t stream) {
  chunk_combine_kernel<N><<<dim3(BH, N / 16), N, 0, stream>>>(NCL, backward, trans, local, x0, X);
}

// body(std::integral_constant<int, N>()) for the head size n (the host checks n first), then
// the launches' status.
template <typename Body>
cudaError_t dispatch_n(int n, Body&& body) {
  switch (n) {
    case 16: body(std::integral_constant<int, 16>()); break;
    case 32: body(std::integral_constant<int, 32>()); break;
    case 64: body(std::integral_constant<int, 64>()); break;
    case 128: body(std::integral_constant<int, 128>()); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
}  // namespace
}  // namespace rwkv_hf
