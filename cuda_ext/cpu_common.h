// What the CPU kernels (wkv_cpu.cpp, lm_cpu.cpp) share: the parallel loop and branch-free math
// (loops over xexp vectorise, where std::exp does not without -ffast-math).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace rwkv_hf_cpu {

// f(th, begin, end) for `threads` contiguous blocks of [0, n), th = 0 .. threads - 1. Built with
// OpenMP, the blocks run on the OpenMP runtime torch already loaded (its libgomp.so.1 has the
// soname this library asks for), so they reuse torch's worker threads: starting a std::thread
// costs 40-100 us, more while torch's workers still spin after a matmul. Without OpenMP (a
// compiler that lacks it), std::threads.
template <typename F>
void parallel_blocks(int64_t n, int threads, F f) {
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  if (nt == 1) {
    f(0, int64_t{0}, n);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
  {
    const int th = omp_get_thread_num(), m = omp_get_num_threads();
    f(th, n * th / m, n * (th + 1) / m);
  }
#else
  std::vector<std::thread> pool;
  pool.reserve(nt - 1);
  for (int th = 1; th < nt; ++th) pool.emplace_back([&, th] { f(th, n * th / nt, n * (th + 1) / nt); });
  f(0, int64_t{0}, n / nt);
  for (auto& t : pool) t.join();
#endif
}

// e^x for x <= 88 in float32: 2^n e^f with n = round(x / ln 2), |f| <= ln2 / 2, a degree-6
// polynomial for e^f (Cephes' expf coefficients, about 1 ulp), 2^n built in the exponent bits;
// below -87.3 (where e^x is subnormal) it returns 0. Branch-free, so loops over it vectorise.
inline float xexp(float x) {
  const float xc = std::min(std::max(x, -87.3f), 88.0f);
  const float big = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float t = xc * 1.44269504088896341f + big;
  const float n = t - big;
  float f = xc - n * 0.693359375f;
  f = f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  const float ef = p * f * f + f + 1.0f;
  int32_t ti, bi;
  std::memcpy(&ti, &t, 4);
  std::memcpy(&bi, &big, 4);
  const int32_t bits = (ti - bi + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return x < -87.3f ? 0.0f : ef * scale;
}
inline double xexp(double x) { return std::exp(x); }

// 1 / (1 + e^-x), through xexp.
inline float xsigmoid(float x) { return 1.0f / (1.0f + xexp(-x)); }

}  // namespace rwkv_hf_cpu
