// The host API of the rwkv_hf WKV extension (at::Tensor in and out), implemented in
// wkv_host.cpp and bound to Python in wkv.cpp. The kernels and their launchers are in the .cu
// files (wkv_launch.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace rwkv_hf {

// RWKV-4 and bidirectional v4. `chunk`: tokens per chunk of the scans over time (0:
// one chunk); the forward returns the states entering each chunk, which the backward of the
// same chunking takes with the final state. Gradients come back in float32; gw, gu as partial
// sums per (batch, chunk).
std::vector<at::Tensor> wkv4_forward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                     at::Tensor s0, int64_t chunk);
std::vector<at::Tensor> wkv4_backward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                      at::Tensor enter, at::Tensor sT, at::Tensor gy,
                                      at::Tensor gsT, int64_t chunk);
std::vector<at::Tensor> bi_wkv4_forward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                        at::Tensor s0, int64_t chunk);
std::vector<at::Tensor> bi_wkv4_backward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                         at::Tensor enter, at::Tensor sT, at::Tensor gy,
                                         at::Tensor gsT, int64_t chunk);

// RWKV-5/6. w: [B, T, H, K] in float32 or r's dtype (gw comes back in it), or RWKV-5's [H, K]
// in float32. `chunk`: tokens per chunk of the chunk-parallel form (see chunk_length); the
// forward returns the chunks' transitions, which the backward of the same chunking takes.
// `reverse`: the scan runs from the last token to the first (as the right-to-left half of
// bi_wkv6), without copies. `out_f32`: y (forward) or gr, gk, gv (backward) come back in
// float32 instead of the inputs' dtype; `add`: float32 tensors of their shapes added before the
// rounding (none, or y / gr, gk, gv): a sum of scans rounded once. The matrix-state ops (wkv6,
// bi_wkv6, wkv7) take an empty state for no initial state, and their backwards an empty gsT for a
// final state that did not reach the loss: zero, which the kernels then neither read nor need in
// memory.
std::vector<at::Tensor> wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                     at::Tensor u, at::Tensor s0, bool save, int64_t chunk,
                                     bool reverse, bool out_f32, std::vector<at::Tensor> add);
std::vector<at::Tensor> wkv6_backward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                      at::Tensor u, at::Tensor snaps, at::Tensor trans,
                                      at::Tensor gy, at::Tensor gsT, int64_t chunk, bool reverse,
                                      bool out_f32, std::vector<at::Tensor> add);

// Bidirectional v6: the left-to-right scan with the bonus u plus the right-to-left scan without
// it, in one call; state and gsT [B, 2, H, K, V] (left-to-right, right-to-left), each half
// reading and writing its slice of them and of the results in place (no copies). y, gr, gk, gv
// and gw are the float32 sums of the halves rounded once; gu (the first half's) comes back as
// partial sums [B, T / kSnap, H, K]. `concurrent`: the halves run at once, the second on
// another stream.
std::vector<at::Tensor> bi_wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                        at::Tensor u, at::Tensor s0, bool save, int64_t chunk,
                                        bool concurrent);
std::vector<at::Tensor> bi_wkv6_backward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                         at::Tensor u, at::Tensor snap_f, at::Tensor trans_f,
                                         at::Tensor snap_b, at::Tensor trans_b, at::Tensor gy,
                                         at::Tensor gsT, int64_t chunk, bool concurrent);

// RWKV-7.
std::vector<at::Tensor> wkv7_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                     at::Tensor a, at::Tensor b, at::Tensor s0, bool save,
                                     int64_t chunk);
std::vector<at::Tensor> wkv7_backward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                      at::Tensor a, at::Tensor b, at::Tensor snaps, at::Tensor sa,
                                      at::Tensor trans, at::Tensor gy, at::Tensor gsT,
                                      int64_t chunk);

// PointRWKV's two scans (point_wkv): k, v, w [B, T, H, K] (w in float32 or k's dtype), state
// [B, 2, H, K, K] float32 or empty (zero). The forward returns A [2, B, T, H, K] (float32; [0]
// left to right, [1] right to left), the final states [B, 2, H, K, K] and, with `save`, the
// snapshots the backward takes (else empty). The backward takes gA [2, B, T, H, K] and gsT
// [B, 2, H, K, K] (float32, each empty for zero) and returns gk, gv (k's dtype), gw (w's dtype),
// each the float32 sum of the directions rounded once, and the initial states' gradient.
std::vector<at::Tensor> point_forward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor s0,
                                      bool save);
std::vector<at::Tensor> point_backward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor snaps,
                                       at::Tensor gA, at::Tensor gsT);

// PointRWKV's farthest point sampling: points [B, N, 3] float32 or float64, 1 <= n <= N ->
// indices [B, n] (int64): point 0, then each time the point farthest from those taken.
at::Tensor farthest_point_sample(at::Tensor points, int64_t n);

}  // namespace rwkv_hf
