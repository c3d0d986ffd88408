// Whole RWKV language-model blocks (v4, v5.2, v6, v7) for CPU inference in float32, one C call
// per block. rwkv_hf/lm/cpu_fused.py calls them (ctypes, built into one library with
// wkv_cpu.cpp) for float32 CPU inference without gradients; the eager blocks in
// modeling_rwkv_lm.py stay the definition of the math and the oracle these are tested against.
//
// Why whole blocks: a generation step is bound by reading the weights from memory, and in eager
// PyTorch each of a block's 20-30 small ops after a matmul costs 20-40 us more than it does
// hot (the matmul has evicted the interpreter's and dispatcher's working set), which is a third
// of a step. Here the matmuls run on the BLAS torch itself links (its exported Fortran `sgemm_`,
// whose address rwkv_hf_cpu_set_sgemm receives), the recurrences on the operator layer's kernels
// (rwkv_hf_wkv*_forward_f32 of wkv_cpu.cpp), and everything between them in a few fused passes.
//
// Layout: activations are rows of C = H * N floats, [rows, C] contiguous, rows = B * T in
// (batch, token) order; parameters as the modeling file holds them (nn.Linear weights
// [out, in]; LoRA factors [in, out]; vectors [C]); states as the cache holds them
// ([B, C] shifts, [B, 3, C] or [B, H, N, N] WKV states), updated in place when in == out.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu_common.h"

extern "C" {
int rwkv_hf_wkv4_forward_f32(int64_t B, int64_t T, int64_t C, const float* k, const float* v, const float* w,
                             const float* u, float* state, float* y, int threads);
int rwkv_hf_wkv6_forward_f32(int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, int64_t ew_sb, int64_t ew_st,
                             int64_t ew_sh, int reverse, const float* r, const float* k, const float* v,
                             const float* ew, const float* u, const float* state_in, float* state, float* y,
                             float* snaps, int threads);
int rwkv_hf_wkv7_forward_f32(int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, int64_t ew_sb, int64_t ew_st,
                             int64_t ew_sh, const float* r, const float* k, const float* v, const float* ew,
                             const float* a, const float* bb, const float* state_in, float* state, float* y,
                             float* snaps, int threads);
}

namespace {

using namespace rwkv_hf_cpu;

// The recurrences' own threshold (cpu_backend._PARALLEL_WORK), in state-update flops.
constexpr int64_t kWkvParallelWork = 1 << 18;
constexpr float kV4MaskedKey = -1e30f;  // modeling_rwkv_lm.V4_MASKED_KEY: exp(k) of a padded token is 0

// The front of every mixer: xn = (LayerNorm(h) * ln_w + ln_b) * mask (mask: 1 for real tokens, 0
// for padding; null: all real); prev = xn of the previous token
// (shift_in[b], or zeros when null, before each sequence);
//   mix_i = xn + (prev - xn) * mu_i      (form 0: v6/v7's x + (prev - x) * m)
//   mix_i = prev + (xn - prev) * mu_i    (form 1: v4/v5's lerp(prev, x, m))
// dx = prev - xn (when dx); shift_out[b] = xn of each sequence's last token (may alias shift_in).
// mix_i lives at mix + i * rows * C.
void ln_shift_mix(int64_t B, int64_t T, int64_t C, const float* h, const float* ln_w, const float* ln_b, float eps,
                  float* xn, const float* shift_in, float* shift_out, int64_t n_mix, const float* const* mu,
                  int form, float* mix, float* dx, int threads, const float* mask) {
  const int64_t rows = B * T;
  const std::vector<float> zeros(shift_in ? 0 : C, 0.0f);
  layer_norm_rows(rows, C, h, ln_w, ln_b, eps, xn, threads, mask);  // a padded position's input is zero
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
  for (int64_t b = 0; b < B; ++b) std::copy(xn + (b * T + T - 1) * C, xn + (b * T + T) * C, shift_out + b * C);
}

// The channel mix of v4, v5.2 and v6, added to h: sigmoid(Wr xr) * Wv(relu(Wk xk)^2).
// p: ln_w, ln_b, mix_k, mix_r, Wk [F, C], Wv [C, F], Wr [C, C].
void ffn_rkv(int64_t B, int64_t T, int64_t C, int64_t F, const float* const* p, int form, float eps, float* h,
             const float* shift_in, float* shift_out, float* xn, float* mix, float* kf, float* vv, float* rr,
             int threads, const float* mask) {
  const int64_t R = B * T;
  const float* mus[2] = {p[2], p[3]};
  ln_shift_mix(B, T, C, h, p[0], p[1], eps, xn, shift_in, shift_out, 2, mus, form, mix, nullptr, threads, mask);
  linear(R, C, F, mix, p[4], kf, false);
  map_inplace(R * F, kf, threads, SqRelu());
  linear(R, F, C, kf, p[5], vv, false);
  linear(R, C, C, mix + R * C, p[6], rr, false);
  sigmoid_gate(R * C, rr, vv, h, true, threads);
}

int wkv_threads(int64_t work, int threads) { return work >= kWkvParallelWork ? threads : 1; }

struct Dims {
  int64_t B, T, C, H, N, F, d[4];
  int64_t rows() const { return B * T; }
};

// Bump allocation from the caller's scratch (rwkv_hf_lm_scratch_floats floats).
struct Scratch {
  float* p;
  float* take(int64_t n) {
    float* r = p;
    p += n;
    return r;
  }
};

struct State {
  const float *att_in, *ffn_in, *wkv_in;
  float *att_out, *ffn_out, *wkv_out;
  const float* mask;  // [B * T]: 1 for real tokens, 0 for (left) padding; null: no padding
};

// ------------------------------------------------------------------------------------ blocks

// p: ln1_w, ln1_b, mix_k, mix_v, mix_r, Wk, Wv, Wr, time_decay, time_first, Wo,
//    then the channel mix (ln2_w, ln2_b, mix_k, mix_r, Wk, Wv, Wr).
void v4_block(const Dims& d, const float* const* p, float eps, float* h, const State& s, Scratch sc, int threads) {
  const int64_t R = d.rows(), C = d.C;
  float *xn = sc.take(R * C), *mix = sc.take(3 * R * C), *k = sc.take(R * C), *v = sc.take(R * C),
        *r = sc.take(R * C), *y = sc.take(R * C), *w = sc.take(C), *kf = sc.take(R * d.F);
  const float* mus[3] = {p[2], p[3], p[4]};
  ln_shift_mix(d.B, d.T, C, h, p[0], p[1], eps, xn, s.att_in, s.att_out, 3, mus, 1, mix, nullptr, threads, s.mask);
  linear(R, C, C, mix, p[5], k, false);
  linear(R, C, C, mix + R * C, p[6], v, false);
  linear(R, C, C, mix + 2 * R * C, p[7], r, false);
  if (s.mask) {  // a zero input alone would still count exp(0) in the denominator
    for (int64_t row = 0; row < R; ++row)
      if (s.mask[row] == 0.0f) std::fill(k + row * C, k + (row + 1) * C, kV4MaskedKey);
  }
  for (int64_t c = 0; c < C; ++c) w[c] = -xexp(p[8][c]);
  if (s.wkv_out != s.wkv_in) std::copy(s.wkv_in, s.wkv_in + d.B * 3 * C, s.wkv_out);  // updated in place
  check(rwkv_hf_wkv4_forward_f32(d.B, d.T, C, k, v, w, p[9], s.wkv_out, y, wkv_threads(R * C * 64, threads)));
  sigmoid_gate(R * C, r, y, y, false, threads);
  linear(R, C, C, y, p[10], h, true);
  ffn_rkv(d.B, d.T, C, d.F, p + 11, 1, eps, h, s.ffn_in, s.ffn_out, xn, mix, kf, k, v, threads, s.mask);
}

// p: ln1_w, ln1_b, mix_r, mix_k, mix_v, mix_g, Wr, Wk, Wv, Wg, time_decay [H, N], time_faaaa,
//    ln_x_w, ln_x_b, Wo, then the channel mix.
void v5_block(const Dims& d, const float* const* p, float eps, float gn_eps, float* h, const State& s, Scratch sc,
              int threads) {
  const int64_t R = d.rows(), C = d.C, H = d.H, N = d.N;
  float *xn = sc.take(R * C), *mix = sc.take(4 * R * C), *r = sc.take(R * C), *k = sc.take(R * C),
        *v = sc.take(R * C), *g = sc.take(R * C), *y = sc.take(R * C), *ew = sc.take(C), *kf = sc.take(R * d.F);
  const float* mus[4] = {p[2], p[3], p[4], p[5]};
  ln_shift_mix(d.B, d.T, C, h, p[0], p[1], eps, xn, s.att_in, s.att_out, 4, mus, 1, mix, nullptr, threads, s.mask);
  float* outs[4] = {r, k, v, g};
  for (int i = 0; i < 4; ++i) linear(R, C, C, mix + i * R * C, p[6 + i], outs[i], false);
  for (int64_t c = 0; c < C; ++c) ew[c] = xexp(-xexp(p[10][c]));  // constant in time: stride-0 decay
  check(rwkv_hf_wkv6_forward_f32(d.B, d.T, H, N, N, 0, 0, N, 0, r, k, v, ew, p[11], s.wkv_in, s.wkv_out, y, nullptr,
                           wkv_threads(R * C * N, threads)));
  group_norm_gate(R, H, N, y, p[12], p[13], gn_eps, g, nullptr, nullptr, nullptr, nullptr, threads);
  linear(R, C, C, y, p[14], h, true);
  ffn_rkv(d.B, d.T, C, d.F, p + 15, 1, eps, h, s.ffn_in, s.ffn_out, xn, mix, kf, k, v, threads, s.mask);
}

// p: ln1_w, ln1_b, maa_x, maa_w1 [C, 5 dm], maa_w2 [5, dm, C], maa_w, maa_k, maa_v, maa_r, maa_g,
//    Wr, Wk, Wv, Wg, time_decay [C], decay_w1 [C, dd], decay_w2 [dd, C], time_faaaa, ln_x_w,
//    ln_x_b, Wo, then the channel mix. d.d = {dm, dd}.
void v6_block(const Dims& d, const float* const* p, float eps, float gn_eps, float* h, const State& s, Scratch sc,
              int threads) {
  const int64_t R = d.rows(), C = d.C, H = d.H, N = d.N, dm = d.d[0], dd = d.d[1];
  float *xn = sc.take(R * C), *dx = sc.take(R * C), *mix = sc.take(5 * R * C), *r = sc.take(R * C),
        *k = sc.take(R * C), *v = sc.take(R * C), *g = sc.take(R * C), *w = sc.take(R * C), *y = sc.take(R * C),
        *l5 = sc.take(R * 5 * dm), *ld = sc.take(R * dd), *kf = sc.take(R * d.F);
  const float* mus[1] = {p[2]};
  ln_shift_mix(d.B, d.T, C, h, p[0], p[1], eps, xn, s.att_in, s.att_out, 1, mus, 0, mix, dx, threads, s.mask);
  v6_inputs(R, C, dm, dd, xn, dx, p + 3, mix, l5, ld, r, k, v, g, w, threads);  // w: the factor exp(-exp(.))
  check(rwkv_hf_wkv6_forward_f32(d.B, d.T, H, N, N, d.T * C, C, N, 0, r, k, v, w, p[17], s.wkv_in, s.wkv_out, y, nullptr,
                           wkv_threads(R * C * N, threads)));
  group_norm_gate(R, H, N, y, p[18], p[19], gn_eps, g, nullptr, nullptr, nullptr, nullptr, threads);
  linear(R, C, C, y, p[20], h, true);
  ffn_rkv(d.B, d.T, C, d.F, p + 21, 0, eps, h, s.ffn_in, s.ffn_out, xn, mix, kf, k, v, threads, s.mask);
}

// p: ln1_w, ln1_b, x_r, x_w, x_k, x_v, x_a, x_g, Wr, Wk, Wv, w0, w1, w2, a0, a1, a2, v0, v1, v2
//    (null in layer 0), g1, g2, k_k, k_a, r_k, ln_x_w, ln_x_b, Wo, ln2_w, ln2_b, ffn x_k, Wk, Wv.
//    d.d = {dw, da, dv, dg}. v_first: layer 0 writes its values there, later layers mix them in.
void v7_block(const Dims& d, const float* const* p, float eps, float gn_eps, float* h, const State& s,
              float* v_first, bool layer0, float w_scale, Scratch sc, int threads) {
  const int64_t R = d.rows(), C = d.C, H = d.H, N = d.N, dw = d.d[0], da = d.d[1], dv = d.d[2], dg = d.d[3];
  float *xn = sc.take(R * C), *mix = sc.take(6 * R * C), *r = sc.take(R * C), *k = sc.take(R * C),
        *v = sc.take(R * C), *w = sc.take(R * C), *a = sc.take(R * C), *g = sc.take(R * C), *vl = sc.take(R * C),
        *nkk = sc.take(R * C), *y = sc.take(R * C), *lw = sc.take(R * dw), *la = sc.take(R * da),
        *lv = sc.take(R * dv), *lg = sc.take(R * dg), *kf = sc.take(R * d.F);
  const float* mus[6] = {p[2], p[3], p[4], p[5], p[6], p[7]};
  ln_shift_mix(d.B, d.T, C, h, p[0], p[1], eps, xn, s.att_in, s.att_out, 6, mus, 0, mix, nullptr, threads, s.mask);
  const float *xr = mix, *xw = mix + R * C, *xk = mix + 2 * R * C, *xv = mix + 3 * R * C, *xa = mix + 4 * R * C,
              *xg = mix + 5 * R * C;
  linear(R, C, C, xr, p[8], r, false);
  linear(R, C, C, xk, p[9], k, false);
  linear(R, C, C, xv, p[10], v, false);
  lora(R, C, dw, xw, p[12], p[13], lw, w, Tanh(), threads);
  lora(R, C, da, xa, p[15], p[16], la, a, NoAct(), threads);
  lora(R, C, dg, xg, p[20], p[21], lg, g, Sigmoid(), threads);
  if (!layer0) lora(R, C, dv, xv, p[18], p[19], lv, vl, NoAct(), threads);
  const float *w0 = p[11], *a0 = p[14], *v0 = p[17], *k_k = p[22], *k_a = p[23];
  // Per row and head: w <- exp(w_scale * sigmoid(w0 + w)) (the decay factor); a <- sigmoid(a0 + a);
  // kk = normalize(k * k_k), nkk = -kk (the op's a), a <- kk * a (its b); k <- k * (1 + (a - 1) k_a);
  // v <- v + (v_first - v) * sigmoid(v0 + vl) after layer 0.
  parallel_rows(R, 8 * C, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      float* __restrict__ wr = w + row * C;
      float* __restrict__ ar = a + row * C;
      float* __restrict__ kr = k + row * C;
      float* __restrict__ nk = nkk + row * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        wr[c] = xexp(w_scale * xsigmoid(w0[c] + wr[c]));
        ar[c] = xsigmoid(a0[c] + ar[c]);
        nk[c] = kr[c] * k_k[c];
      }
      for (int64_t hh = 0; hh < H; ++hh) {
        float* __restrict__ q = nk + hh * N;
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
      float* __restrict__ vr = v + row * C;
      if (layer0) {
        std::copy(vr, vr + C, v_first + row * C);
      } else {
        const float* __restrict__ lr = vl + row * C;
        const float* __restrict__ fr = v_first + row * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) vr[c] += (fr[c] - vr[c]) * xsigmoid(v0[c] + lr[c]);
      }
    }
  });
  check(rwkv_hf_wkv7_forward_f32(d.B, d.T, H, N, N, d.T * C, C, N, r, k, v, w, nkk, a, s.wkv_in, s.wkv_out, y, nullptr,
                           wkv_threads(2 * R * C * N, threads)));
  group_norm_gate(R, H, N, y, p[25], p[26], gn_eps, g, r, k, v, p[24], threads);
  linear(R, C, C, y, p[27], h, true);
  const float* fmu[1] = {p[30]};
  ln_shift_mix(d.B, d.T, C, h, p[28], p[29], eps, xn, s.ffn_in, s.ffn_out, 1, fmu, 0, mix, nullptr, threads, s.mask);
  linear(R, C, d.F, mix, p[31], kf, false);
  map_inplace(R * d.F, kf, threads, SqRelu());
  linear(R, d.F, C, kf, p[32], h, true);
}

}  // namespace

extern "C" {

// The BLAS sgemm (Fortran ABI, 32-bit integers) the fused blocks' matmuls call: torch's own.
void rwkv_hf_cpu_set_sgemm(void* f) { g_sgemm = reinterpret_cast<Sgemm>(f); }

// y[rows, out] = x[rows, in] W^T through that sgemm (the loader's check of the symbol).
int rwkv_hf_cpu_linear(int64_t rows, int64_t in, int64_t out, const float* x, const float* W, float* y) {
  if (!g_sgemm) return 1;
  linear(rows, in, out, x, W, y, false);
  return 0;
}

// Scratch floats a block of `version` needs for dims (B, T, C, H, N, F, d0..d3).
int64_t rwkv_hf_lm_scratch_floats(int version, const int64_t* dims) {
  const int64_t R = dims[0] * dims[1], C = dims[2], F = dims[5];
  const int64_t low = version == 6 ? 5 * dims[6] + dims[7] : version == 7 ? dims[6] + dims[7] + dims[8] + dims[9] : 0;
  return R * (17 * C + F + low) + C;
}

// One block of `version` on hidden h [B*T, C] (updated in place). dims: B, T, C, H, N, F, d0..d3;
// p: the parameters in the order of the block function above; eps: LayerNorm, GroupNorm;
// shifts [B, C] and WKV states: *_in may be null for the shifts (zeros) and may equal *_out (in
// place); mask [B * T] (null: no padding) zeroes padded positions' mixer inputs and, for v4, sends
// their keys to -1e30, as the eager blocks do. Returns 0, or 1 when no sgemm was set, 2 for an
// unknown version, 3 when an allocation failed.
int rwkv_hf_lm_block(int version, const int64_t* dims, const float* const* p, float eps, float gn_eps, float* h,
                     const float* att_in, float* att_out, const float* wkv_in, float* wkv_out, const float* ffn_in,
                     float* ffn_out, float* v_first, int layer0, float w_scale, float* scratch, int threads,
                     const float* mask) {
  if (!g_sgemm) return 1;
  const Dims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], {dims[6], dims[7], dims[8], dims[9]}};
  const State s{att_in, ffn_in, wkv_in, att_out, ffn_out, wkv_out, mask};
  Scratch sc{scratch};
  try {
    switch (version) {
      case 4: v4_block(d, p, eps, h, s, sc, threads); break;
      case 5: v5_block(d, p, eps, gn_eps, h, s, sc, threads); break;
      case 6: v6_block(d, p, eps, gn_eps, h, s, sc, threads); break;
      case 7: v7_block(d, p, eps, gn_eps, h, s, v_first, layer0 != 0, w_scale, sc, threads); break;
      default: return 2;
    }
  } catch (...) {  // an allocation failed
    return 3;
  }
  return 0;
}

}  // extern "C"
