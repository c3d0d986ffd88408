// Fused elementwise kernels of the RWKV language-model blocks, for CPU inference in float32.
// rwkv_hf/lm/cpu_fused.py calls them (through ctypes, like wkv_cpu.cpp, and built into the same
// library) between the matmuls, which stay with torch, and the WKV recurrences, which stay with
// the operator layer. Each kernel replaces a run of eager elementwise ops with one pass over the
// rows: a [512, 768] eager op costs about 0.1 ms on 2 cores, a generation step's one-row op
// about 5 us of dispatch, and a block has 20 to 30 of them.
//
// Layout: activations are rows of C = H * N floats, [rows, C] contiguous, rows = B * T in
// (batch, token) order. No gradients: the model's torch path is the training path and the
// oracle these kernels are tested against.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "cpu_common.h"

namespace {

using rwkv_hf_cpu::xexp;
using rwkv_hf_cpu::xsigmoid;

// Below this many floats one thread is faster than starting another (generation steps).
constexpr int64_t kParallelWork = 1 << 15;

// f(r0, r1) over [0, rows) in contiguous blocks on up to `threads` threads.
template <typename F>
void parallel_rows(int64_t rows, int64_t row_work, int threads, F f) {
  rwkv_hf_cpu::parallel_blocks(rows, rows * row_work < kParallelWork ? 1 : threads,
                               [&](int, int64_t r0, int64_t r1) { f(r0, r1); });
}

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

}  // namespace

extern "C" {

// The front of every mixer: optional residual add, LayerNorm, token shift and the lerps.
//   h += add (when add);  xn = LayerNorm(h) * ln_w + ln_b
//   prev = xn of the previous token (shift_in[b], or zeros when null, before each sequence)
//   mix_i = xn + (prev - xn) * mu_i      (form 0: v6/v7's x + (prev - x) * m)
//   mix_i = prev + (xn - prev) * mu_i    (form 1: v4/v5's lerp(prev, x, m))
//   dx = prev - xn (when dx);  shift_out[b] = xn of each sequence's last token (when shift_out)
// mu holds n_mix pointers to C floats; mix_i lives at mix + i * rows * C. shift_out may alias
// shift_in.
int rwkv_hf_lm_ln_shift_mix(int64_t B, int64_t T, int64_t C, float* h, const float* add, const float* ln_w,
                            const float* ln_b, float eps, float* xn, const float* shift_in, float* shift_out,
                            int64_t n_mix, const float* const* mu, int form, float* mix, float* dx, int threads) {
  const int64_t rows = B * T;
  const std::vector<float> zeros(shift_in ? 0 : C, 0.0f);
  parallel_rows(rows, C, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict__ hr = h + r * C;
      if (add) {
        const float* __restrict__ ar = add + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) hr[c] += ar[c];
      }
      float mean, rstd;
      moments(hr, C, eps, mean, rstd);
      float* __restrict__ o = xn + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = (hr[c] - mean) * rstd * ln_w[c] + ln_b[c];
    }
  });
  parallel_rows(rows, C * (n_mix + 1), threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, t = r % T;
      const float* __restrict__ x = xn + r * C;
      const float* __restrict__ p = t > 0 ? x - C : (shift_in ? shift_in + b * C : zeros.data());
      for (int64_t i = 0; i < n_mix; ++i) {
        const float* __restrict__ m = mu[i];
        float* __restrict__ o = mix + (i * rows + r) * C;
        if (form == 0) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = x[c] + (p[c] - x[c]) * m[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = p[c] + (x[c] - p[c]) * m[c];
        }
      }
      if (dx) {
        float* __restrict__ o = dx + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = p[c] - x[c];
      }
    }
  });
  if (shift_out) {
    for (int64_t b = 0; b < B; ++b) std::copy(xn + (b * T + T - 1) * C, xn + (b * T + T) * C, shift_out + b * C);
  }
  return 0;
}

// RWKV-6's data-dependent mixes, in place on the LoRA offsets m [n_mix, rows, C] (maa: n_mix
// pointers to C floats):
//   m_i = xn + dx * (maa_i + m_i)
int rwkv_hf_lm_v6_mix(int64_t rows, int64_t C, int64_t n_mix, const float* xn, const float* dx,
                      const float* const* maa, float* m, int threads) {
  parallel_rows(rows, C * n_mix, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t i = 0; i < n_mix; ++i) {
      const float* __restrict__ mi = maa[i];
      for (int64_t r = r0; r < r1; ++r) {
        const float* __restrict__ x = xn + r * C;
        const float* __restrict__ d = dx + r * C;
        float* __restrict__ o = m + (i * rows + r) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = x[c] + d[c] * (mi[c] + o[c]);
      }
    }
  });
  return 0;
}

// x = -exp(bias + x) in place, rows of C (RWKV-6's log decay).
int rwkv_hf_lm_neg_exp_bias(int64_t rows, int64_t C, float* x, const float* bias, int threads) {
  parallel_rows(rows, C, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict__ o = x + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = -xexp(bias[c] + o[c]);
    }
  });
  return 0;
}

// RWKV-7 between the projections and the WKV, per row and head (C = H * N), in place:
//   w  <- w_scale * sigmoid(w0 + w)                      (the log decay; w in: the w-LoRA output)
//   a  <- sigmoid(a0 + a)  then  b = kk * a, stored in a (the op's b)
//   kk  = normalize_per_head(k * k_k);  neg_kk = -kk      (the op's a)
//   k  <- k * (1 + (a - 1) * k_a)
//   v  <- v + (v_first - v) * sigmoid(v0 + vl)           (layers after the first: vl non-null)
int rwkv_hf_lm_v7_pre(int64_t rows, int64_t H, int64_t N, float w_scale, float* w, float* a, float* k, float* v,
                      const float* vl, const float* v_first, float* neg_kk, const float* w0, const float* a0,
                      const float* v0, const float* k_k, const float* k_a, int threads) {
  const int64_t C = H * N;
  parallel_rows(rows, 6 * C, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict__ wr = w + r * C;
      float* __restrict__ ar = a + r * C;
      float* __restrict__ kr = k + r * C;
      float* __restrict__ nk = neg_kk + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        wr[c] = w_scale * xsigmoid(w0[c] + wr[c]);
        ar[c] = xsigmoid(a0[c] + ar[c]);
        nk[c] = kr[c] * k_k[c];
      }
      for (int64_t h = 0; h < H; ++h) {
        float* __restrict__ q = nk + h * N;
        float ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int64_t n = 0; n < N; ++n) ss += q[n] * q[n];
        const float inv = -1.0f / std::max(std::sqrt(ss), 1e-12f);  // F.normalize's eps
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) q[n] *= inv;
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        kr[c] *= 1.0f + (ar[c] - 1.0f) * k_a[c];
        ar[c] *= -nk[c];
      }
      if (vl) {
        const float* __restrict__ lr = vl + r * C;
        const float* __restrict__ fr = v_first + r * C;
        float* __restrict__ vr = v + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) vr[c] += (fr[c] - vr[c]) * xsigmoid(v0[c] + lr[c]);
      }
    }
  });
  return 0;
}

// After the WKV of RWKV-5/6/7, per row and head, in place on y:
//   y <- GroupNorm_H(y) * gn_w + gn_b                   (one group per head)
//   RWKV-7 (r non-null): y <- (y + (sum_n r k r_k) v) * g;  RWKV-5/6: y <- y * silu(g)
int rwkv_hf_lm_group_norm_gate(int64_t rows, int64_t H, int64_t N, float* y, const float* gn_w, const float* gn_b,
                               float eps, const float* g, const float* r, const float* k, const float* v,
                               const float* r_k, int threads) {
  const int64_t C = H * N;
  parallel_rows(rows, 4 * C, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const float* __restrict__ gr = g + row * C;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t o = row * C + h * N;
        float* __restrict__ yh = y + o;
        const float* __restrict__ wh = gn_w + h * N;
        const float* __restrict__ bh = gn_b + h * N;
        const float* __restrict__ gh = gr + h * N;
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
  return 0;
}

// out = sigmoid(r) * v (accumulate = 0) or out += sigmoid(r) * v (accumulate = 1); n floats.
// out may alias v.
int rwkv_hf_lm_sigmoid_gate(int64_t n, const float* r, const float* v, float* out, int accumulate, int threads) {
  parallel_rows(n, 1, threads, [&](int64_t i0, int64_t i1) {
    if (accumulate) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) out[i] += xsigmoid(r[i]) * v[i];
    } else {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) out[i] = xsigmoid(r[i]) * v[i];
    }
  });
  return 0;
}

// x <- relu(x)^2 in place; n floats.
int rwkv_hf_lm_sqrelu(int64_t n, float* x, int threads) {
  parallel_rows(n, 1, threads, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      const float z = x[i] > 0.0f ? x[i] : 0.0f;
      x[i] = z * z;
    }
  });
  return 0;
}

}  // extern "C"
