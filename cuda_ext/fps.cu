// PointRWKV's farthest point sampling (rwkv_hf.ops.farthest_point_sample) on the GPU: one block
// per cloud runs all n - 1 steps, where the torch form launches about seven small kernels per step
// (some 14k launches to sample 2048 of 8192 points).
//
// Per step, from the last point taken: each thread updates the running squared distance d[i] to
// the nearest taken point for its points (i = tid, tid + NT, ...; d in global scratch, which
// stays in L1/L2) and keeps its largest (the first of ties, i ascending); the block reduces the
// (value, index) pairs with warp shuffles, then across warps in shared memory (the smaller index
// on ties, so the result is torch.argmax's), and every thread reads the winner after a barrier.
//
// The squared distance is (dx*dx + dy*dy) + dz*dz with every product and sum rounded on its own
// (__fmul_rn / __fadd_rn: nvcc would otherwise contract them into fused multiply-adds), the torch
// form's (p - q).pow(2).sum(-1), so every backend picks the same points, ties included.
#include "wkv_common.h"

namespace rwkv_hf {
namespace {

__device__ __forceinline__ float sq_dist(float dx, float dy, float dz) {
  return __fadd_rn(__fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy)), __fmul_rn(dz, dz));
}

__device__ __forceinline__ double sq_dist(double dx, double dy, double dz) {
  return __dadd_rn(__dadd_rn(__dmul_rn(dx, dx), __dmul_rn(dy, dy)), __dmul_rn(dz, dz));
}

// (v, i) <- the larger of (v, i) and (ov, oi), the smaller index on ties.
template <typename T>
__device__ __forceinline__ void keep_max(T& v, int& i, T ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

// The largest (v, i) of the warp, on every lane.
template <typename T>
__device__ __forceinline__ void warp_max(T& v, int& i) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    const T ov = __shfl_xor_sync(0xffffffffu, v, m);
    const int oi = __shfl_xor_sync(0xffffffffu, i, m);
    keep_max(v, i, ov, oi);
  }
}

template <typename T, int NT>
__global__ void __launch_bounds__(NT) fps_kernel(int N, int n, const T* __restrict__ points,
                                                 T* __restrict__ nearest, int64_t* __restrict__ idx) {
  constexpr int WARPS = NT / 32;
  __shared__ T s_val[WARPS];
  __shared__ int s_arg[WARPS];
  __shared__ int s_last;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const T* p = points + (int64_t)blockIdx.x * N * 3;
  T* d = nearest + (int64_t)blockIdx.x * N;
  int64_t* out = idx + (int64_t)blockIdx.x * n;
  const T inf = static_cast<T>(INFINITY);
  for (int i = tid; i < N; i += NT) d[i] = inf;
  if (tid == 0) out[0] = 0;
  int last = 0;
  for (int s = 1; s < n; ++s) {
    const T lx = p[3 * last], ly = p[3 * last + 1], lz = p[3 * last + 2];
    T best = -inf;
    int arg = N;  // a thread without points loses every comparison
    for (int i = tid; i < N; i += NT) {
      const T dist = sq_dist(p[3 * i] - lx, p[3 * i + 1] - ly, p[3 * i + 2] - lz);
      const T m = dist < d[i] ? dist : d[i];
      d[i] = m;
      if (m > best) {
        best = m;
        arg = i;
      }
    }
    warp_max(best, arg);
    if (lane == 0) {
      s_val[warp] = best;
      s_arg[warp] = arg;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < WARPS ? s_val[lane] : -inf;
      arg = lane < WARPS ? s_arg[lane] : N;
      warp_max(best, arg);
      if (lane == 0) {
        s_last = arg;
        out[s] = arg;
      }
    }
    __syncthreads();  // s_last is written; s_val and s_arg are free for the next step
    last = s_last;
  }
}

}  // namespace

template <typename T>
cudaError_t fps_launch(const FpsArgs<T>& a, cudaStream_t stream) {
  // Small clouds: 256 threads (a few points each; a shorter reduction per step), else 1024.
  if (a.N <= 2048) {
    fps_kernel<T, 256><<<a.B, 256, 0, stream>>>(a.N, a.n, a.points, a.nearest, a.idx);
  } else {
    fps_kernel<T, 1024><<<a.B, 1024, 0, stream>>>(a.N, a.n, a.points, a.nearest, a.idx);
  }
  return cudaGetLastError();
}

template cudaError_t fps_launch<float>(const FpsArgs<float>&, cudaStream_t);
template cudaError_t fps_launch<double>(const FpsArgs<double>&, cudaStream_t);

}  // namespace rwkv_hf
