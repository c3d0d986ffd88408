// Vision-RWKV for CPU inference in float32: the quad-directional token shift (Q-Shift) with the
// lerps that read it in one pass, and the whole VRWKV (v4) block as one call. rwkv_hf/vision/
// cpu_fused.py calls them (ctypes, built into one library with wkv_cpu.cpp and lm_cpu.cpp);
// modeling_vrwkv.py is the definition and the oracle. Eagerly the shift is a zero fill and five
// strided copies, each lerp another pass, and a block some twenty ops, each paying for the
// caches its matmul evicted; here the matmuls run on torch's sgemm (cpu_common.h) and the
// recurrence on wkv_cpu.cpp's bidirectional kernel.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_common.h"

extern "C" int rwkv_hf_bi_wkv4_forward_f32(int64_t B, int64_t T, int64_t C, const float* k, const float* v,
                                           const float* w, const float* u, float* state, float* y, int threads);

namespace {

using namespace rwkv_hf_cpu;

constexpr float kV4EmptyLogscale = -1e38f;  // rwkv_hf.ops.V4_EMPTY_LOGSCALE: an empty accumulator

// out_i = xx + (x - xx) * mu_i (torch.lerp(xx, x, mu_i)), or xx itself where mu_i is null, for
// xx = q_shift(x): x [B, H * W, C] on the grid (H, W) row-major; channels in groups of `group`,
// within each group [e0, e1) from `s` patches to the left, [e1, e2) from the right, [e2, e3) from
// above, [e3, e4) from below (zero past the border), [e4, group) unshifted. out_i lives at
// out + i * B * H * W * C.
void q_shift_lerp(int64_t B, int64_t H, int64_t W, int64_t C, int64_t group, int64_t s, const int64_t* e,
                  const float* x, int64_t n_out, const float* const* mu, float* out, int threads) {
  const int64_t rows = B * H * W;
  const int nt = rows * C * (n_out + 1) < kParallelWork ? 1 : threads;
  std::vector<std::vector<float>> bufs(std::max(nt, 1), std::vector<float>(C));
  parallel_blocks(rows, nt, [&](int th, int64_t r0, int64_t r1) {
    float* __restrict__ xx = bufs[th].data();
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r % (H * W), i = p / W, j = p % W;
      const float* __restrict__ xr = x + r * C;
      const float* src[5] = {j >= s ? xr - s * C : nullptr, j + s < W ? xr + s * C : nullptr,
                             i >= s ? xr - s * W * C : nullptr, i + s < H ? xr + s * W * C : nullptr, xr};
      for (int64_t g0 = 0; g0 < C; g0 += group) {
        for (int k = 0; k < 5; ++k) {
          const int64_t a = g0 + e[k], b = g0 + (k < 4 ? e[k + 1] : group);
          if (src[k]) std::copy(src[k] + a, src[k] + b, xx + a);
          else std::fill(xx + a, xx + b, 0.0f);
        }
      }
      for (int64_t k = 0; k < n_out; ++k) {
        float* __restrict__ o = out + (k * rows + r) * C;
        const float* __restrict__ m = mu[k];
        if (m) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = xx[c] + (xr[c] - xx[c]) * m[c];
        } else {
          std::copy(xx, xx + C, o);
        }
      }
    }
  });
}

// x += gamma * o (gamma null: 1), over rows of C.
void add_scaled(int64_t rows, int64_t C, float* x, const float* o, const float* gamma, int threads) {
  parallel_rows(rows, C, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict__ xr = x + r * C;
      const float* __restrict__ orow = o + r * C;
      if (gamma) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) xr[c] += gamma[c] * orow[c];
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) xr[c] += orow[c];
      }
    }
  });
}

}  // namespace

extern "C" {

int rwkv_hf_vision_q_shift_lerp(int64_t B, int64_t H, int64_t W, int64_t C, int64_t group, int64_t s, const int64_t* e,
                                const float* x, int64_t n_out, const float* const* mu, float* out, int threads) {
  try {
    q_shift_lerp(B, H, W, C, group, s, e, x, n_out, mu, out, threads);
  } catch (...) {  // an allocation failed
    return 3;
  }
  return 0;
}

// Scratch floats rwkv_hf_vision_v4_block needs.
int64_t rwkv_hf_vision_v4_scratch_floats(int64_t B, int64_t N, int64_t C, int64_t F) {
  return B * N * (8 * C + F) + B * 6 * C + 2 * C;
}

// One VRWKV block (the v4 spatial mix and the channel mix), in place on x [B, H * W, C]:
//   pre-norm:  x += g1 * att(ln1(x));  x += g2 * ffn(ln2(x))
//   post-norm: x += g1 * ln1(att(x));  x += g2 * ln2(ffn(x))
//   att(z) = Wo(sigmoid(Wr zr) * kn(BiWKV4(Wk zk, Wv zv, -decay / T, first / T)))
//   ffn(z) = sigmoid(Wr zr) * Wv kn(relu(Wk zk)^2)
// with z* the Q-Shift lerps of z, kn the optional key_norm LayerNorms, g the optional layer
// scales. p: ln1_w, ln1_b, ln2_w, ln2_b, att mix_k, mix_v, mix_r, Wk, Wv, Wr, decay, first,
// key_norm_w, key_norm_b (null: none), Wo, ffn mix_k, mix_r, Wk [F, C], key_norm_w, key_norm_b
// (F; null: none), Wr, Wv [C, F], gamma1, gamma2 (null: none). shift: group, s, e0..e4.
static void v4_block(int64_t B, int64_t H, int64_t W, int64_t C, int64_t F, const int64_t* shift, int post_norm,
                     const float* const* p, float eps, float* x, float* scratch, int threads) {
  const int64_t N = H * W, R = B * N, group = shift[0], s = shift[1];
  const int64_t* e = shift + 2;
  float* z = scratch;  // the mixer's input
  float* mix = z + R * C;
  float *k = mix + 3 * R * C, *v = k + R * C, *r = v + R * C, *y = r + R * C, *kf = y + R * C;
  float *state = kf + R * F, *w = state + B * 6 * C, *u = w + C;
  // Spatial mix.
  const float* zin = x;
  if (!post_norm) layer_norm_rows(R, C, x, p[0], p[1], eps, z, threads), zin = z;
  const float* amu[3] = {p[4], p[5], p[6]};
  q_shift_lerp(B, H, W, C, group, s, e, zin, 3, amu, mix, threads);
  linear(R, C, C, mix, p[7], k, false);
  linear(R, C, C, mix + R * C, p[8], v, false);
  linear(R, C, C, mix + 2 * R * C, p[9], r, false);
  for (int64_t c = 0; c < C; ++c) w[c] = -p[10][c] / N, u[c] = p[11][c] / N;  // as the official code
  for (int64_t b = 0; b < 2 * B; ++b) {  // both directions start empty: (0, 0, -inf)
    std::fill(state + b * 3 * C, state + b * 3 * C + 2 * C, 0.0f);
    std::fill(state + b * 3 * C + 2 * C, state + (b + 1) * 3 * C, kV4EmptyLogscale);
  }
  check(rwkv_hf_bi_wkv4_forward_f32(B, N, C, k, v, w, u, state, y, threads));
  if (p[12]) layer_norm_rows(R, C, y, p[12], p[13], eps, y, threads);
  sigmoid_gate(R * C, r, y, y, false, threads);
  linear(R, C, C, y, p[14], k, false);  // k: the mixer's output
  if (post_norm) layer_norm_rows(R, C, k, p[0], p[1], eps, k, threads);
  add_scaled(R, C, x, k, p[22], threads);
  // Channel mix.
  zin = x;
  if (!post_norm) layer_norm_rows(R, C, x, p[2], p[3], eps, z, threads), zin = z;
  const float* fmu[2] = {p[15], p[16]};
  q_shift_lerp(B, H, W, C, group, s, e, zin, 2, fmu, mix, threads);
  linear(R, C, F, mix, p[17], kf, false);
  map_inplace(R * F, kf, threads, SqRelu());
  if (p[18]) layer_norm_rows(R, F, kf, p[18], p[19], eps, kf, threads);
  linear(R, C, C, mix + R * C, p[20], r, false);
  linear(R, F, C, kf, p[21], v, false);
  sigmoid_gate(R * C, r, v, v, false, threads);
  if (post_norm) layer_norm_rows(R, C, v, p[2], p[3], eps, v, threads);
  add_scaled(R, C, x, v, p[23], threads);
}

// Returns 0, or 1 when no sgemm was set, 3 when an allocation failed.
int rwkv_hf_vision_v4_block(int64_t B, int64_t H, int64_t W, int64_t C, int64_t F, const int64_t* shift,
                            int post_norm, const float* const* p, float eps, float* x, float* scratch, int threads) {
  if (!g_sgemm) return 1;
  try {
    v4_block(B, H, W, C, F, shift, post_norm, p, eps, x, scratch, threads);
  } catch (...) {
    return 3;
  }
  return 0;
}

}  // extern "C"
