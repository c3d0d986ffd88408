// PointRWKV's farthest point sampling (rwkv_hf.ops.farthest_point_sample) on the CPU, float32 and
// float64, behind a C ABI (built into one library with wkv_cpu.cpp; rwkv_hf/ops/cpu_backend.py
// calls it through ctypes).
//
// Per cloud, from point 0: d[i] = min(d[i], |p_i - p_last|^2) over all points, and the next
// point is the first index of the largest d. The step is a sequential chain (n - 1 of them), each
// a pass over the cloud: the torch form runs it as about seven small ops per step (a few
// thousand dispatches for one sampling), here one pass over the coordinates kept as separate x,
// y, z arrays (so the pass vectorises), then a scan for the first index of the maximum.
//
// The squared distance is (dx*dx + dy*dy) + dz*dz with every product and sum rounded, as the
// torch form's (p - q).pow(2).sum(-1): no fused multiply-add (the compiler would otherwise
// contract it where the CPU has one), so both forms pick the same points, ties included.
#include <algorithm>
#include <cstdint>
#include <exception>
#include <limits>

#include "cpu_common.h"

namespace {

using rwkv_hf_cpu::parallel_items;

// One cloud: p [N, 3] -> idx [n]; buf holds 4 N values (x, y, z, d).
template <typename T>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void fps_cloud(int64_t N, int64_t n, const T* p, int64_t* idx, T* buf) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  T* x = buf;
  T* y = buf + N;
  T* z = buf + 2 * N;
  T* d = buf + 3 * N;
  for (int64_t i = 0; i < N; ++i) {
    x[i] = p[3 * i];
    y[i] = p[3 * i + 1];
    z[i] = p[3 * i + 2];
    d[i] = std::numeric_limits<T>::infinity();
  }
  int64_t last = 0;
  idx[0] = 0;
  for (int64_t s = 1; s < n; ++s) {
    const T lx = x[last], ly = y[last], lz = z[last];
    T best = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : best)
    for (int64_t i = 0; i < N; ++i) {
      const T dx = x[i] - lx, dy = y[i] - ly, dz = z[i] - lz;
      const T sx = dx * dx, sy = dy * dy, sz = dz * dz;
      const T m = std::min(d[i], (sx + sy) + sz);
      d[i] = m;
      best = std::max(best, m);
    }
    // The first index of the maximum (torch.argmax's choice among ties). The points are finite
    // (the caller checks), so every d is finite and best is one of them.
    int64_t arg = 0;
    while (arg + 1 < N && d[arg] != best) ++arg;
    idx[s] = arg;
    last = arg;
  }
}

template <typename T>
int fps(int64_t B, int64_t N, int64_t n, const T* points, int64_t* idx, int threads) {
  std::exception_ptr err;
  try {
    parallel_items<T>(B, threads, 4 * N, [&](int64_t b, T* buf) {
      fps_cloud<T>(N, n, points + b * N * 3, idx + b * n, buf);
    });
  } catch (...) { err = std::current_exception(); }
  return err ? 1 : 0;
}

}  // namespace

// points [B, N, 3] contiguous, 1 <= n <= N -> idx [B, n] (int64); 0 on success, 1 when the
// scratch could not be allocated.
extern "C" int rwkv_hf_fps_f32(int64_t B, int64_t N, int64_t n, const float* points, int64_t* idx, int threads) {
  return fps<float>(B, N, n, points, idx, threads);
}
extern "C" int rwkv_hf_fps_f64(int64_t B, int64_t N, int64_t n, const double* points, int64_t* idx,
                               int threads) {
  return fps<double>(B, N, n, points, idx, threads);
}
