// Vision-RWKV for CPU inference in float32: the quad-directional token shift (Q-Shift) with the
// lerps that read it in one pass, and whole VRWKV (v4) and VRWKV6 blocks as one call each.
// rwkv_hf/vision/cpu_fused.py calls them (ctypes, built into one library with wkv_cpu.cpp and
// lm_cpu.cpp); modeling_vrwkv.py is the definition and the oracle. Eagerly the shift is a zero
// fill and five strided copies, each lerp another pass, and a block twenty to forty ops, each
// paying for the caches its matmul evicted; here the matmuls run on torch's sgemm
// (cpu_common.h) and the recurrences on wkv_cpu.cpp's kernels.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_common.h"

extern "C" int rwkv_hf_bi_wkv4_forward_f32(int64_t B, int64_t T, int64_t C, const float* k, const float* v,
                                           const float* w, const float* u, float* state, float* y, int threads);
extern "C" int rwkv_hf_wkv6_forward_f32(int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, int64_t ew_sb,
                                        int64_t ew_st, int64_t ew_sh, int reverse, const float* r, const float* k,
                                        const float* v, const float* ew, const float* u, const float* state_in,
                                        float* state, float* y, float* snaps, int threads);

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

// One residual branch of a block, in place on x [R, C]:
//   pre-norm:  x += gamma * mixer(LayerNorm(x));   post-norm: x += gamma * LayerNorm(mixer(x))
// mixer(in, out) writes its [R, C] result to `out`; z is scratch for the normalised input.
template <typename Mixer>
void residual(int64_t R, int64_t C, float* x, const float* ln_w, const float* ln_b, float eps, int post_norm,
              const float* gamma, float* z, float* out, int threads, Mixer mixer) {
  const float* in = x;
  if (!post_norm) layer_norm_rows(R, C, x, ln_w, ln_b, eps, z, threads), in = z;
  mixer(in, out);
  if (post_norm) layer_norm_rows(R, C, out, ln_w, ln_b, eps, out, threads);
  add_scaled(R, C, x, out, gamma, threads);
}

// The channel mix of both versions into out [R, C]: sigmoid(Wr zr) * Wv kn(relu(Wk zk)^2), z* the
// Q-Shift lerps of z. p: mix_k, mix_r, Wk [F, C], key_norm_w, key_norm_b (F; null: none),
// Wr, Wv [C, F]. Scratch: mix (2 R C), r (R C), kf (R F).
void channel_mix(int64_t B, int64_t H, int64_t W, int64_t C, int64_t F, int64_t group, int64_t s, const int64_t* e,
                 const float* const* p, float eps, const float* z, float* mix, float* r, float* kf, float* out,
                 int threads) {
  const int64_t R = B * H * W;
  const float* mu[2] = {p[0], p[1]};
  q_shift_lerp(B, H, W, C, group, s, e, z, 2, mu, mix, threads);
  linear(R, C, F, mix, p[2], kf, false);
  map_inplace(R * F, kf, threads, SqRelu());
  if (p[3]) layer_norm_rows(R, F, kf, p[3], p[4], eps, kf, threads);
  linear(R, C, C, mix + R * C, p[5], r, false);
  linear(R, F, C, kf, p[6], out, false);
  sigmoid_gate(R * C, r, out, out, false, threads);
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
  residual(R, C, x, p[0], p[1], eps, post_norm, p[22], z, k, threads, [&](const float* in, float* out) {
    const float* mu[3] = {p[4], p[5], p[6]};
    q_shift_lerp(B, H, W, C, group, s, e, in, 3, mu, mix, threads);
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
    linear(R, C, C, y, p[14], out, false);  // out = k: read before, written last
  });
  residual(R, C, x, p[2], p[3], eps, post_norm, p[23], z, v, threads, [&](const float* in, float* out) {
    channel_mix(B, H, W, C, F, group, s, e, p + 15, eps, in, mix, r, kf, out, threads);
  });
}

// Scratch floats rwkv_hf_vision_v6_block needs (hs: head size, dm / dd: the LoRA widths).
int64_t rwkv_hf_vision_v6_scratch_floats(int64_t B, int64_t N, int64_t C, int64_t F, int64_t hs, int64_t dm,
                                         int64_t dd) {
  const int64_t R = B * N;
  return R * (14 * C + 5 * dm + dd + F) + B * C * hs;
}

// One VRWKV6 block, in place on x [B, H * W, C], as v4_block with the VRWKV6 spatial mix:
//   dz = qshift(z) - z;  l = tanh((z + dz * maa_x) W1);  z_i = z + dz * (maa_i + l_i W2_i), i = w, k, v, r, g
//   att(z) = Wo(GroupNorm_heads(kn(BiWKV6(Wr z_r, Wk z_k, Wv z_v, -exp(decay + tanh(z_w D1) D2), u)))
//               * silu(Wg z_g))
// BiWKV6 = the left-to-right scan with the bonus u plus the right-to-left one without it, each
// from a zero state. p: ln1_w, ln1_b, ln2_w, ln2_b, maa_x, maa_w1 [C, 5 dm], maa_w2 [5, dm, C],
// maa_w, maa_k, maa_v, maa_r, maa_g, Wr, Wk, Wv, Wg, time_decay [C], decay_w1 [C, dd], decay_w2
// [dd, C], time_faaaa [C], key_norm_w, key_norm_b (null: none), ln_x_w, ln_x_b, Wo, then the
// channel mix as v4_block's (mix_k, mix_r, Wk, key_norm_w, key_norm_b, Wr, Wv), gamma1, gamma2
// (null: none). dims: F, hs, dm, dd. eps: LayerNorm, GroupNorm.
static void v6_block(int64_t B, int64_t H, int64_t W, int64_t C, const int64_t* dims, const int64_t* shift,
                     int post_norm, const float* const* p, float eps, float gn_eps, float* x, float* scratch,
                     int threads) {
  const int64_t N = H * W, R = B * N, F = dims[0], hs = dims[1], dm = dims[2], dd = dims[3], nh = C / hs;
  const int64_t group = shift[0], s = shift[1];
  const int64_t* e = shift + 2;
  float *z = scratch, *dz = z + R * C, *mix = dz + R * C, *r = mix + 5 * R * C, *k = r + R * C, *v = k + R * C,
        *g = v + R * C, *ew = g + R * C, *y = ew + R * C, *y2 = y + R * C, *l5 = y2 + R * C, *ld = l5 + R * 5 * dm,
        *kf = ld + R * dd, *state = kf + R * F;
  residual(R, C, x, p[0], p[1], eps, post_norm, p[32], z, k, threads, [&](const float* in, float* out) {
    const float* none[1] = {nullptr};
    q_shift_lerp(B, H, W, C, group, s, e, in, 1, none, dz, threads);  // the shift itself
    parallel_rows(R, 2 * C, threads, [&](int64_t r0, int64_t r1) {  // dz = shift - z; ddlerp's input
      for (int64_t row = r0; row < r1; ++row) {
        const float* __restrict__ zr = in + row * C;
        float* __restrict__ d = dz + row * C;
        float* __restrict__ o = mix + row * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          d[c] -= zr[c];
          o[c] = zr[c] + d[c] * p[4][c];
        }
      }
    });
    v6_inputs(R, C, dm, dd, in, dz, p + 5, mix, l5, ld, r, k, v, g, ew, threads);
    for (int dir = 0; dir < 2; ++dir) {  // left to right with the bonus, right to left without
      std::fill(state, state + B * C * hs, 0.0f);
      check(rwkv_hf_wkv6_forward_f32(B, N, nh, hs, hs, N * C, C, hs, dir, r, k, v, ew, dir ? nullptr : p[19], state,
                                     state, dir ? y2 : y, nullptr, threads));
    }
    parallel_rows(R, C, threads, [&](int64_t r0, int64_t r1) {
#pragma omp simd
      for (int64_t i = r0 * C; i < r1 * C; ++i) y[i] += y2[i];
    });
    if (p[20]) layer_norm_rows(R, C, y, p[20], p[21], eps, y, threads);
    group_norm_gate(R, nh, hs, y, p[22], p[23], gn_eps, g, nullptr, nullptr, nullptr, nullptr, threads);
    linear(R, C, C, y, p[24], out, false);  // out = k: read before, written last
  });
  residual(R, C, x, p[2], p[3], eps, post_norm, p[33], z, v, threads, [&](const float* in, float* out) {
    channel_mix(B, H, W, C, F, group, s, e, p + 25, eps, in, mix, r, kf, out, threads);
  });
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

// As rwkv_hf_vision_v4_block, for v6_block.
int rwkv_hf_vision_v6_block(int64_t B, int64_t H, int64_t W, int64_t C, const int64_t* dims, const int64_t* shift,
                            int post_norm, const float* const* p, float eps, float gn_eps, float* x, float* scratch,
                            int threads) {
  if (!g_sgemm) return 1;
  try {
    v6_block(B, H, W, C, dims, shift, post_norm, p, eps, gn_eps, x, scratch, threads);
  } catch (...) {
    return 3;
  }
  return 0;
}

}  // extern "C"
