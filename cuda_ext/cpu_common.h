// What the CPU kernels (wkv_cpu.cpp, lm_cpu.cpp, vision_cpu.cpp, point_cpu.cpp) share: the parallel loops,
// branch-free math (loops over xexp vectorise, where std::exp does not without -ffast-math), and
// for the fused model blocks the BLAS wrappers and row passes.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
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

// Run f(item, scratch) for item in [0, n) on up to `threads` threads (contiguous blocks).
// Scratch buffers are allocated here, before any thread starts, so nothing throws inside one;
// they are not zeroed (every kernel writes its scratch before reading it).
template <typename T, typename F>
void parallel_items(int64_t n, int threads, size_t scratch, F f) {
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  std::vector<std::unique_ptr<T[]>> bufs;
  for (int th = 0; th < nt; ++th) bufs.emplace_back(new T[std::max<size_t>(scratch, 1)]);
  parallel_blocks(n, nt, [&](int th, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) f(i, bufs[th].get());
  });
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
// e^x for x <= 709 in float64, likewise: n = round(x / ln 2), f = x - n ln 2 with ln 2 in two
// parts (Cody and Waite; exact products for |n| < 2^11), e^f by its Taylor series to degree 13
// (truncation below 1e-17 relative for |f| <= ln2 / 2), 2^n in the exponent bits; below -708
// (subnormal e^x) 0. About 1 ulp.
// Forced inline: otherwise GCC calls it, and a loop with a call in it does not vectorise.
__attribute__((always_inline)) inline double xexp(double x) {
  const double xc = std::min(std::max(x, -708.0), 709.0);
  const double big = 6755399441055744.0;  // 1.5 * 2^52
  const double t = xc * 1.4426950408889634074 + big;
  const double n = t - big;
  double f = xc - n * 6.93145751953125e-1;
  f = f - n * 1.42860682030941723212e-6;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * f + 1.0 / 479001600.0;
  p = p * f + 1.0 / 39916800.0;
  p = p * f + 1.0 / 3628800.0;
  p = p * f + 1.0 / 362880.0;
  p = p * f + 1.0 / 40320.0;
  p = p * f + 1.0 / 5040.0;
  p = p * f + 1.0 / 720.0;
  p = p * f + 1.0 / 120.0;
  p = p * f + 1.0 / 24.0;
  p = p * f + 1.0 / 6.0;
  p = p * f + 0.5;
  p = p * f + 1.0;
  p = p * f + 1.0;
  int64_t ti, bi;
  std::memcpy(&ti, &t, 8);
  std::memcpy(&bi, &big, 8);
  const int64_t bits = (ti - bi + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, 8);
  return x < -708.0 ? 0.0 : p * scale;
}

// 1 / (1 + e^-x), through xexp.
inline float xsigmoid(float x) { return 1.0f / (1.0f + xexp(-x)); }


// ------------------------------------------------------------------------------------ passes
// Below this many floats one thread is faster than starting another (generation steps).
constexpr int64_t kParallelWork = 1 << 15;
// A kernel called from a fused block reports failure (allocation) as a status: raise it, for the
// C entry point's catch (nothing may unwind out of an extern "C" function into ctypes).
inline void check(int status) {
  if (status != 0) throw std::bad_alloc();
}

// ------------------------------------------------------------------------------------ BLAS
// The Fortran sgemm (32-bit integers) of the BLAS torch links, for the fused model blocks: set
// once by rwkv_hf_cpu_set_sgemm (rwkv_hf.ops.cpu_backend.load_blas), shared by every file.
using Sgemm = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);
inline Sgemm g_sgemm = nullptr;

// y[rows, out] = x[rows, in] W^T (+ y when accumulate); W [out, in] row-major (an nn.Linear).
// Column-major BLAS view: y' = op(W') x' with W' = W^T stored [in, out].
inline void linear(int64_t rows, int64_t in, int64_t out, const float* x, const float* W, float* y, bool accumulate) {
  const int m = static_cast<int>(out), n = static_cast<int>(rows), k = static_cast<int>(in);
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  g_sgemm("T", "N", &m, &n, &k, &one, W, &k, x, &k, &beta, y, &m);
}

// y[rows, out] = x[rows, in] M; M [in, out] row-major (the LoRA factors); ldx is x's row stride.
inline void matmul(int64_t rows, int64_t in, int64_t out, const float* x, int64_t ldx, const float* M, float* y) {
  const int m = static_cast<int>(out), n = static_cast<int>(rows), k = static_cast<int>(in);
  const int ldb = static_cast<int>(ldx);
  const float one = 1.0f, zero = 0.0f;
  g_sgemm("N", "N", &m, &n, &k, &one, M, &m, x, &ldb, &zero, y, &m);
}


// f(r0, r1) over [0, rows) in contiguous blocks on up to `threads` threads.
template <typename F>
void parallel_rows(int64_t rows, int64_t row_work, int threads, F f) {
  parallel_blocks(rows, rows * row_work < kParallelWork ? 1 : threads,
                               [&](int, int64_t r0, int64_t r1) { f(r0, r1); });
}

// f(x[i]) in place on n floats.
template <typename F>
void map_inplace(int64_t n, float* x, int threads, F f) {
  parallel_rows(n, 1, threads, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) x[i] = f(x[i]);
  });
}

inline float xtanh(float x) { return 1.0f - 2.0f / (1.0f + xexp(2.0f * x)); }

inline float sqrelu(float x) {
  const float z = x > 0.0f ? x : 0.0f;
  return z * z;
}

// Activations as types, so that map_inplace inlines and vectorises them.
struct Tanh {
  float operator()(float x) const { return xtanh(x); }
};
struct Sigmoid {
  float operator()(float x) const { return xsigmoid(x); }
};
struct SqRelu {
  float operator()(float x) const { return sqrelu(x); }
};
// mean and 1/sqrt(var + eps) of x[0, n), two passes (as accurate as torch's layer_norm).
inline void moments(const float* __restrict__ x, int64_t n, float eps, float& mean, float& rstd) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < n; ++c) s += x[c];
  mean = s / n;
  float q = 0;
#pragma omp simd reduction(+ : q)
  for (int64_t c = 0; c < n; ++c) q += (x[c] - mean) * (x[c] - mean);
  rstd = 1.0f / std::sqrt(q / n + eps);
}


// out = (LayerNorm(x) * w + b) * keep[row] over rows of n (keep null: 1; out may be x).
inline void layer_norm_rows(int64_t rows, int64_t n, const float* x, const float* w, const float* b, float eps,
                            float* out, int threads, const float* keep = nullptr) {
  parallel_rows(rows, n, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * n;
      float* o = out + r * n;
      float mean, rstd;
      moments(xr, n, eps, mean, rstd);
      const float k = keep ? keep[r] : 1.0f;
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) o[c] = ((xr[c] - mean) * rstd * w[c] + b[c]) * k;
    }
  });
}

// out = acc * out + sigmoid(r) * v over n floats (acc 0: a gate; 1: a gated residual add). out may
// be v.
inline void sigmoid_gate(int64_t n, const float* r, const float* v, float* out, bool accumulate, int threads) {
  parallel_rows(n, 1, threads, [&](int64_t i0, int64_t i1) {
    if (accumulate) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) out[i] += xsigmoid(r[i]) * v[i];
    } else {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) out[i] = xsigmoid(r[i]) * v[i];
    }
  });
}

struct NoAct {};

// y[rows, C] = act(x[rows, C] A) B, a low-rank projection (A [C, d], B [d, C]) with `act`
// applied in place to the [rows, d] middle, kept in `mid`.
template <typename Act>
void lora(int64_t rows, int64_t C, int64_t d, const float* x, const float* A, const float* B, float* mid, float* y,
          Act act, int threads) {
  matmul(rows, C, d, x, C, A, mid);
  if constexpr (!std::is_same_v<Act, NoAct>) map_inplace(rows * d, mid, threads, act);
  matmul(rows, d, C, mid, d, B, y);
}

// RWKV-6's data-dependent mixing (ddlerp) of the five mixer inputs, in place on mix [5, rows, C]
// whose first slot holds x + dx * maa_x on entry:
//   l = tanh(mix_0 W1);  mix_i = x + dx * (maa_i + l_i W2_i),  i = w, k, v, r, g (BlinkDL's order)
// W1 [C, 5 dm]: the five offsets share one down-projection; W2 [5, dm, C]; l5: [rows, 5 dm] scratch.
inline void ddlerp(int64_t rows, int64_t C, int64_t dm, const float* x, const float* dx, const float* W1,
                   const float* W2, const float* const* maa, float* mix, float* l5, int threads) {
  matmul(rows, C, 5 * dm, mix, C, W1, l5);
  map_inplace(rows * 5 * dm, l5, threads, Tanh());
  for (int64_t i = 0; i < 5; ++i) matmul(rows, dm, C, l5 + i * dm, 5 * dm, W2 + i * dm * C, mix + i * rows * C);
  parallel_rows(rows, 5 * C, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t i = 0; i < 5; ++i) {
      const float* __restrict__ mi = maa[i];
      for (int64_t row = r0; row < r1; ++row) {
        const float* __restrict__ xr = x + row * C;
        const float* __restrict__ e = dx + row * C;
        float* __restrict__ o = mix + (i * rows + row) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = xr[c] + e[c] * (mi[c] + o[c]);
      }
    }
  });
}

// RWKV-6's per-token decay factor into ew [rows, C]: exp(-exp(decay + tanh(xw D1) D2)) (the
// log-decay is -exp(.)); D1 [C, dd], D2 [dd, C]; mid: [rows, dd] scratch.
inline void v6_decay(int64_t rows, int64_t C, int64_t dd, const float* xw, const float* decay, const float* D1,
                     const float* D2, float* mid, float* ew, int threads) {
  lora(rows, C, dd, xw, D1, D2, mid, ew, Tanh(), threads);
  parallel_rows(rows, C, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      float* __restrict__ o = ew + row * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = xexp(-xexp(decay[c] + o[c]));
    }
  });
}

// RWKV-6's mixer inputs (the LM's and VRWKV6's blocks): ddlerp of x and dx = shift - x (mix, with
// mix_0 = x + dx * maa_x on entry), then r, k, v, g and the decay factor ew, each [rows, C].
// q: maa_w1, maa_w2, maa_w, maa_k, maa_v, maa_r, maa_g, Wr, Wk, Wv, Wg, time_decay, decay_w1,
// decay_w2; l5 [rows, 5 dm] and ld [rows, dd] scratch.
inline void v6_inputs(int64_t rows, int64_t C, int64_t dm, int64_t dd, const float* x, const float* dx,
                      const float* const* q, float* mix, float* l5, float* ld, float* r, float* k, float* v,
                      float* g, float* ew, int threads) {
  ddlerp(rows, C, dm, x, dx, q[0], q[1], q + 2, mix, l5, threads);
  const float *mw = mix, *mk = mix + rows * C, *mv = mix + 2 * rows * C, *mr = mix + 3 * rows * C,
              *mg = mix + 4 * rows * C;
  linear(rows, C, C, mr, q[7], r, false);
  linear(rows, C, C, mk, q[8], k, false);
  linear(rows, C, C, mv, q[9], v, false);
  linear(rows, C, C, mg, q[10], g, false);
  v6_decay(rows, C, dd, mw, q[11], q[12], q[13], ld, ew, threads);
}

// After the WKV of RWKV-5/6/7, per row and head, in place on y:
//   y <- GroupNorm_H(y) * gn_w + gn_b                   (one group per head)
//   RWKV-7 (r non-null): y <- (y + (sum_n r k r_k) v) * g;  RWKV-5/6: y <- y * silu(g)
inline void group_norm_gate(int64_t rows, int64_t H, int64_t N, float* y, const float* gn_w, const float* gn_b, float eps,
                     const float* g, const float* r, const float* k, const float* v, const float* r_k, int threads) {
  const int64_t C = H * N;
  parallel_rows(rows, 4 * C, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t o = row * C + h * N;
        float* __restrict__ yh = y + o;
        const float* __restrict__ wh = gn_w + h * N;
        const float* __restrict__ bh = gn_b + h * N;
        const float* __restrict__ gh = g + o;
        float mean, rstd;
        moments(yh, N, eps, mean, rstd);
        if (r) {
          const float* __restrict__ rh = r + o;
          const float* __restrict__ kh = k + o;
          const float* __restrict__ vh = v + o;
          const float* __restrict__ rkh = r_k + h * N;
          float bonus = 0;
#pragma omp simd reduction(+ : bonus)
          for (int64_t n = 0; n < N; ++n) bonus += rh[n] * kh[n] * rkh[n];
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) yh[n] = ((yh[n] - mean) * rstd * wh[n] + bh[n] + bonus * vh[n]) * gh[n];
        } else {
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) yh[n] = ((yh[n] - mean) * rstd * wh[n] + bh[n]) * gh[n] * xsigmoid(gh[n]);
        }
      }
    }
  });
}

}  // namespace rwkv_hf_cpu
