// Vision-RWKV's quad-directional token shift (Q-Shift) and the lerps that read it, in one pass,
// for CPU inference in float32. rwkv_hf/vision/cpu_fused.py calls it (ctypes, built into one
// library with wkv_cpu.cpp); modeling_vrwkv.q_shift and torch.lerp are the definition and the
// oracle. Eagerly the shift is a zero fill and five strided copies, and each lerp another pass.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_common.h"

extern "C" {

// out_i = xx + (x - xx) * mu_i (torch.lerp(xx, x, mu_i)), or xx itself where mu_i is null, for
// xx = q_shift(x): x [B, H * W, C] on the grid (H, W) row-major; channels in groups of `group`,
// within each group [e0, e1) from `s` patches to the left, [e1, e2) from the right, [e2, e3) from
// above, [e3, e4) from below (zero past the border), [e4, group) unshifted. out_i lives at
// out + i * B * H * W * C.
int rwkv_hf_vision_q_shift_lerp(int64_t B, int64_t H, int64_t W, int64_t C, int64_t group, int64_t s, const int64_t* e,
                                const float* x, int64_t n_out, const float* const* mu, float* out, int threads) {
  const int64_t rows = B * H * W;
  const int nt = rows * C * (n_out + 1) < (1 << 15) ? 1 : threads;
  std::vector<std::vector<float>> bufs(std::max(nt, 1), std::vector<float>(C));
  rwkv_hf_cpu::parallel_blocks(rows, nt, [&](int th, int64_t r0, int64_t r1) {
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
  return 0;
}

}  // extern "C"
