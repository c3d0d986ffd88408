// The kernel launchers of the rwkv_hf WKV extension: what the device translation units
// (wkv4.cu, wkv5.cu, wkv6.cu, wkv7.cu, point_wkv.cu, fps.cu) export to the host code (wkv_host.cpp, which checks the
// tensors, allocates the outputs and scratch, and fills these argument structs).
//
// Raw pointers and sizes only, no ATen: parsing ATen's headers costs nvcc about 20 s per
// translation unit and architecture, more than compiling the kernels themselves, so the .cu
// files never include them. Each launcher runs its op's kernels in order on `stream` and returns
// cudaGetLastError(). Layouts and the meaning of every buffer: the kernels' comments.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace rwkv_hf {

// Matrix-state ops keep a state snapshot every kSnap tokens (forward) and re-anchor the
// gradient of the decay every kSnap tokens (backward), see wkv6.cuh.
constexpr int kSnap = 64;

// A per-token output of the matrix-state kernels (y, gr, gk, gv; RWKV-5/6's gw): rounded once to
// F into `out`, or kept in float32 in `out32` for a sum still to come; `add` (float32, optional)
// is added first. The two halves of bi_wkv6 run as (out32) then (add, out), so their sum is
// rounded once (or, run at once, both as out32, summed by the host).
template <typename F>
struct OutVec {
  F* out = nullptr;
  float* out32 = nullptr;
  const float* add = nullptr;
};

// RWKV-4 and bidirectional v4 (wkv4.cu): sizes, chunking and the per-token inputs.
template <typename F>
struct V4Args {
  int B, T, C, L, NC;
  const F* k;
  const F* v;
  const float* w;
  const float* u;
};

// loc, fbuf: scratch (loc when NC > 1, fbuf for bi_wkv4); enter: the states entering each chunk.
template <typename F>
struct V4Fwd {
  V4Args<F> a;
  const float* s0;
  float *loc, *enter, *fbuf;
  F* y;
  float* sT;
};

// buf, best, loc, gin: scratch (loc when NC > 1).
template <typename F>
struct V4Bwd {
  V4Args<F> a;
  const float *enter, *sT, *gsT;
  const F* gy;
  float *buf, *loc, *gin;
  int* best;
  float *gk, *gv, *gw, *gu, *gs0;
};

template <bool BI, typename F>
cudaError_t v4_forward_launch(const V4Fwd<F>& p, cudaStream_t stream);
template <bool BI, typename F>
cudaError_t v4_backward_launch(const V4Bwd<F>& p, cudaStream_t stream);

// The matrix-state ops (wkv6.cuh, wkv7.cu): N the head size, L the chunk length and NCL the
// number of chunks (1: the sequential form). With NCL > 1, `local` and `starts` are scratch of
// [B, H, NCL, N, N] floats (pass 1's results; the chunks' start states, or the gradients at
// their ends) and `trans` holds the chunks' transitions.
struct MatSizes {
  int B, T, H, N, L, NCL;
};

// RWKV-5/6. rev: the scan runs from the last token to the first. FW: w's type, float or F
// (its gradient comes back in it). u null: no bonus (bi_wkv6's right-to-left half). sb: the batch
// stride, in floats, of the boundary states s0, sT, gsT, gs0 (each (b, h) at b sb + h N N): H N N,
// or 2 H N N for bi_wkv6's halves, which read and write their slices of [B, 2, H, N, N].
template <typename F, typename FW>
struct V6In {
  MatSizes s;
  bool rev;
  const F *r, *k, *v;
  const FW* w;
  const float* u;
  int64_t sb;
};

template <typename F, typename FW>
struct V6Fwd {
  V6In<F, FW> in;
  const float* s0;
  float *local, *starts, *trans;
  OutVec<F> y;
  float *sT, *snap;  // snap: null without gradients
};

template <typename F, typename FW>
struct V6Bwd {
  V6In<F, FW> in;
  const float *snap, *trans, *gsT;
  const F* gy;
  float *local, *gend, *e, *anchor;  // scratch
  OutVec<F> gr, gk, gv;
  OutVec<FW> gw;
  float *gu_part, *gs0;
};

// WC: w is [H, N], one decay for every token (RWKV-5, wkv5.cu); else [B, T, H, N] (wkv6.cu).
template <typename F, typename FW, bool WC>
cudaError_t wkv6_forward_launch(const V6Fwd<F, FW>& p, cudaStream_t stream);
template <typename F, typename FW, bool WC>
cudaError_t wkv6_backward_launch(const V6Bwd<F, FW>& p, cudaStream_t stream);

// RWKV-7. FW: w's type, float or F (gw comes back in it).
template <typename F, typename FW>
struct V7In {
  MatSizes s;
  const F *r, *k, *v, *a, *b;
  const FW* w;
};

template <typename F, typename FW>
struct V7Fwd {
  V7In<F, FW> in;
  const float* s0;
  float *local, *starts, *trans;
  F* y;
  float *sT, *snap, *sa;  // snap, sa: null without gradients
};

template <typename F, typename FW>
struct V7Bwd {
  V7In<F, FW> in;
  const float *snap, *sa, *trans, *gsT;
  const F* gy;
  float *local, *gend, *e, *cvec, *anchor;  // scratch
  F *gr, *gk, *gv, *ga, *gb;
  FW* gw;
  float* gs0;
};

template <typename F, typename FW>
cudaError_t wkv7_forward_launch(const V7Fwd<F, FW>& p, cudaStream_t stream);
template <typename F, typename FW>
cudaError_t wkv7_backward_launch(const V7Bwd<F, FW>& p, cudaStream_t stream);

// PointRWKV's two scans (point_wkv.cu), both directions in one launch. FW: w's type, float or F
// (gw comes back in it). N the head size (K = V).
template <typename F, typename FW>
struct PointIn {
  int B, T, H, N;
  const F *k, *v;
  const FW* w;
};

// s0 (null: zero), sT: [B, 2, H, N, N]; A: [2, B, T, H, N]; snap: [2, B, H, ceil(T / kSnap), N, N]
// (the state before every kSnap-th token of each scan), null without gradients.
template <typename F, typename FW>
struct PointFwd {
  PointIn<F, FW> in;
  const float* s0;
  float *A, *sT, *snap;
};

// gA (null: zero) [2, B, T, H, N]; gsT (null: zero), gs0 [B, 2, H, N, N]; gk, gv, gw: each
// direction's gradients in float32, [2, B, T, H, N] (the host sums them).
template <typename F, typename FW>
struct PointBwd {
  PointIn<F, FW> in;
  const float *snap, *gA, *gsT;
  float *gk, *gv, *gw, *gs0;
};

template <typename F, typename FW>
cudaError_t point_forward_launch(const PointFwd<F, FW>& p, cudaStream_t stream);
template <typename F, typename FW>
cudaError_t point_backward_launch(const PointBwd<F, FW>& p, cudaStream_t stream);

// Farthest point sampling (fps.cu), one block per cloud: points [B, N, 3] -> idx [B, n];
// nearest [B, N] scratch. T: float or double.
template <typename T>
struct FpsArgs {
  int B, N, n;
  const T* points;
  T* nearest;
  int64_t* idx;
};

template <typename T>
cudaError_t fps_launch(const FpsArgs<T>& a, cudaStream_t stream);

}  // namespace rwkv_hf
