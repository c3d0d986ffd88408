// CPU kernels of the rwkv_hf WKV extension: the matrix-state recurrences (RWKV-5/6, their
// right-to-left half for the bidirectional v6 op, RWKV-7, PointRWKV's two-way scan) and the
// per-channel ones (RWKV-4, bidirectional v4), forward and backward; float32 and float64. Plain
// C++17 with a C ABI (no torch headers): rwkv_hf/ops/cpu_backend.py compiles this file with the
// system compiler in a few seconds and calls it through ctypes on tensors' data pointers. The autograd
// Functions, dtype handling and validation live there.
//
// Layouts (rwkv_hf.ops): per-token tensors [B, T, H, K] (v, y: [B, T, H, V]) contiguous, except
// the decay factor ew = exp(w), which has its own strides over (b, t, h) so that RWKV-5's
// constant decay is passed as an expanded view; states [B, H, K, V] (key-major).
//
// Design: one work item per (batch, head) (per (batch, channel block) for wkv4), split over
// std::threads; the token loop is sequential and the K x V state stays in L1/L2. Every inner
// loop runs over the value index j, which is contiguous in the state, the inputs and the
// outputs, so the compiler vectorises it without reassociating anything except the explicit
// `omp simd reduction` dot products. At V = 64 the steps are written on vector registers
// (Cols), their dot products summed across lanes in trees.
//
// Math per head (S the state, e = exp(w_t), x^T a row vector):
//   wkv6: y_t = r_t^T (S_{t-1} + diag(u) k_t v_t^T),  S_t = diag(e) S_{t-1} + k_t v_t^T
//   wkv7: sa_t = a_t^T S_{t-1},  S_t = diag(e) S_{t-1} + b_t sa_t + k_t v_t^T,  y_t = S_t^T r_t
// Backward (G = dL/dS_t, running from the end; gy = dL/dy_t):
//   wkv6: dr_i = S_{t-1}[i].gy + u_i k_i (v.gy);  dk_i = G[i].v + r_i u_i (v.gy);
//         dv_j = sum_i k_i G[i][j] + gy_j sum_i r_i u_i k_i;  du_i += r_i k_i (v.gy);
//         dw_i = e_i G[i].S_{t-1}[i];  G_{t-1} = diag(e) G + r gy^T
//   wkv7: G += r gy^T first (y_t reads S_t); dr_i = S_t[i].gy; dk_i = G[i].v; dv_j = sum_i k_i G[i][j];
//         db_i = G[i].sa; dsa_j = sum_i b_i G[i][j]; dw_i = e_i G[i].S_{t-1}[i];
//         da_i = S_{t-1}[i].dsa;  G_{t-1} = diag(e) G + a dsa^T
// The forward with gradients stores the state before every kChunk-th token; the backward
// recomputes each chunk's states from its snapshot into a per-thread buffer, then runs backwards
// through the chunk. No division by the decay, no limit on T.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu_common.h"

namespace {

using rwkv_hf_cpu::parallel_items;
using rwkv_hf_cpu::xexp;

constexpr int64_t kChunk = 64;

template <typename T, int VN>
inline T dot(const T* __restrict__ x, const T* __restrict__ y, int64_t V) {
  const int64_t n = VN ? VN : V;
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += x[j] * y[j];
  return acc;
}

struct Geo {
  int64_t B, T, H, K, V;
  int64_t ew_sb, ew_st, ew_sh;  // strides of ew over (b, t, h); its last dim is contiguous
  int reverse;                  // scan t = T-1 .. 0 (the right-to-left half of bi_wkv6)
  int64_t tok(int64_t b, int64_t t, int64_t h, int64_t n) const { return ((b * T + t) * H + h) * n; }
  int64_t ew(int64_t b, int64_t t, int64_t h) const { return b * ew_sb + t * ew_st + h * ew_sh; }
  int64_t time(int64_t s) const { return reverse ? T - 1 - s : s; }
  int64_t chunks() const { return (T + kChunk - 1) / kChunk; }
};

// Per-token rows of one head are H*K apart: with every head scanned separately, each token's rows
// sit in new pages, where the hardware prefetchers do not follow. Fetch a few tokens ahead.
constexpr int64_t kPrefetch = 4;

template <typename T>
inline void prefetch(const T* p, int64_t n) {
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(T)); off += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(p) + off);
}

// The steps for V = 64 (the RWKV head size) work on blocks of columns held in GCC/clang
// vector-extension registers, and keep their accumulators there across the loop over i: written
// with plain arrays, the compiler keeps them in memory and each i waits on a store-to-load round
// trip. With AVX-512 (32 registers of 64 bytes) a block is a whole row: 64 values in 64-byte
// vectors. Elsewhere it is 4 vectors of 32 bytes (32 floats or 16 doubles), so that a block of
// the rows a step reads and its accumulators fit AVX2's sixteen 32-byte registers: whole rows
// spilled there, and on an EPYC (znver3) they ran 4-7x slower than plain loops.
// -DRWKV_HF_ROW64 forces whole rows (their tests on machines without AVX-512).
#if defined(__AVX512F__) || defined(RWKV_HF_ROW64)
constexpr bool kWholeRows = true;
#else
constexpr bool kWholeRows = false;
#endif

template <typename T>
struct Cols {
  static constexpr int kBytes = kWholeRows ? 64 : 32;  // per vector
  typedef T vec __attribute__((vector_size(kBytes), aligned(alignof(T))));
  static constexpr int kLanes = kBytes / sizeof(T), kVecs = kWholeRows ? 64 / kLanes : 4;
  static constexpr int kWidth = kLanes * kVecs;  // columns per block; divides 64
  vec x[kVecs];
  static Cols load(const T* p) {
    Cols r;
#pragma GCC unroll 8
    for (int n = 0; n < kVecs; ++n) r.x[n] = *reinterpret_cast<const vec*>(p + n * kLanes);
    return r;
  }
  static Cols fill(T value) {
    Cols r;
#pragma GCC unroll 8
    for (int n = 0; n < kVecs; ++n) r.x[n] = vec{} + value;
    return r;
  }
  void store(T* p) const {
#pragma GCC unroll 8
    for (int n = 0; n < kVecs; ++n) *reinterpret_cast<vec*>(p + n * kLanes) = x[n];
  }
  static vec& at(T* p, int n) { return *reinterpret_cast<vec*>(p + n * kLanes); }
  static const vec& at(const T* p, int n) { return *reinterpret_cast<const vec*>(p + n * kLanes); }
  // Sum of the lanes as a tree of half-width adds (a lane-by-lane sum is a serial chain).
  static T hsum(vec a) { return fold<kBytes>(&a); }
  // out[i] = hsum(x[i]) for i < n. Whole groups of kLanes vectors are summed together: lane l of
  // the result gathers x[l]'s sum through log2(kLanes) levels of pairwise shuffles and adds, about
  // 3 instructions per vector instead of the 6-8 of a lone hsum (AVX2, AVX-512).
  static void hsums(const vec* x, int64_t n, T* out) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      vec level[kLanes];
      for (int l = 0; l < kLanes; ++l) level[l] = x[i + l];
      const vec sums = fold_rows<kLanes>(level);
      std::memcpy(out + i, &sums, sizeof(vec));
    }
    for (; i < n; ++i) out[i] = hsum(x[i]);
  }
  // M vectors holding kLanes / M rows each, in segments of M lanes (one row per segment), halved
  // into M / 2 vectors of half-length segments: segment q of a pair's output is the sum of the
  // two halves of segment q of the pair (a b). Ends with lane l = the sum of row l.
  template <int M>
  static vec fold_rows(vec* v) {
    if constexpr (M == 1) {
      return v[0];
    } else {
      for (int p = 0; p < M / 2; ++p) v[p] = pair_halves<M>(v[2 * p], v[2 * p + 1], std::make_index_sequence<kLanes>());
      return fold_rows<M / 2>(v);
    }
  }
  template <int Seg, size_t... O>
  static vec pair_halves(vec a, vec b, std::index_sequence<O...>) {
    return __builtin_shufflevector(a, b, static_cast<int>((O / (Seg / 2)) * Seg + O % (Seg / 2))...) +
           __builtin_shufflevector(a, b, static_cast<int>((O / (Seg / 2)) * Seg + O % (Seg / 2) + Seg / 2)...);
  }
  template <int Bytes>
  static T fold(const void* p) {
    if constexpr (Bytes == 2 * sizeof(T)) {
      T lo, hi;
      std::memcpy(&lo, p, sizeof(T));
      std::memcpy(&hi, static_cast<const char*>(p) + sizeof(T), sizeof(T));
      return lo + hi;
    } else {
      typedef T half __attribute__((vector_size(Bytes / 2)));
      half lo, hi;
      std::memcpy(&lo, p, Bytes / 2);
      std::memcpy(&hi, static_cast<const char*>(p) + Bytes / 2, Bytes / 2);
      const half sum = lo + hi;
      return fold<Bytes / 2>(&sum);
    }
  }
};

// The backwards run column blocks only when a row is at most two of them: with 16-column blocks
// (float64 without AVX-512) each block's round trips of the rows' partial dot products and
// reloads of the token's rows cost more than the registers save, and the plain loops were 1.15x
// faster on an EPYC (znver3).
template <typename T>
constexpr bool kBlockedBackward = Cols<T>::kWidth >= 32;

// ------------------------------------------------------------------------------------ wkv6

// One step of wkv6 for one head: y (if not null) from S_{t-1} = Sin, then S <- S_t (Sin may be S).
template <typename T, int VN>
inline void wkv6_step(const Geo& g, const T* Sin, T* S, const T* r, const T* k, const T* v,
                      const T* e, const T* u, T* __restrict__ y, T* __restrict__ acc_mem) {
  const int64_t K = g.K, V = VN ? VN : g.V;
  if constexpr (VN == 64) {
    using R = Cols<T>;
    using vec = typename R::vec;
    T bonus = 0;
    if (u && y) {
#pragma omp simd reduction(+ : bonus)
      for (int64_t i = 0; i < K; ++i) bonus += r[i] * u[i] * k[i];
    }
    for (int j0 = 0; j0 < 64; j0 += R::kWidth) {
      const R vr = R::load(v + j0);
      R acc = R::fill(0);
      for (int64_t i = 0; i < K; ++i) {
        const T ri = r[i], ki = k[i], ei = e[i];
#pragma GCC unroll 8
        for (int n = 0; n < R::kVecs; ++n) {
          const vec s = R::at(Sin + i * 64 + j0, n);
          acc.x[n] += ri * s;
          R::at(S + i * 64 + j0, n) = s * ei + ki * vr.x[n];
        }
      }
      if (y) {
#pragma GCC unroll 8
        for (int n = 0; n < R::kVecs; ++n) acc.x[n] += bonus * vr.x[n];
        acc.store(y + j0);
      }
    }
    return;
  }
  T* __restrict__ acc = acc_mem;
  if (y) {
    T bonus = 0;
    if (u) {
#pragma omp simd reduction(+ : bonus)
      for (int64_t i = 0; i < K; ++i) bonus += r[i] * u[i] * k[i];
    }
    for (int64_t j = 0; j < V; ++j) acc[j] = bonus * v[j];
  }
  for (int64_t i = 0; i < K; ++i) {
    const T* Sii = Sin + i * V;
    T* Si = S + i * V;
    const T ri = r[i], ki = k[i], ei = e[i];
    if (y) {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        const T s = Sii[j];
        acc[j] += ri * s;
        Si[j] = s * ei + ki * v[j];
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) Si[j] = Sii[j] * ei + ki * v[j];
    }
  }
  if (y)
    for (int64_t j = 0; j < V; ++j) y[j] = acc[j];
}

template <typename T, int VN>
void wkv6_forward(const Geo g, const T* r, const T* k, const T* v, const T* ew, const T* u,
                  const T* state_in, T* state, T* y, T* snaps, int threads) {
  const int64_t K = g.K, V = VN ? VN : g.V, KV = K * V, nch = g.chunks();
  parallel_items<T>(g.B * g.H, threads, V, [&](int64_t bh, T* acc) {
    const int64_t b = bh / g.H, h = bh % g.H;
    T* S = state + bh * KV;
    for (int64_t s = 0; s < g.T; ++s) {
      const int64_t t = g.time(s);
      const T* Sin = s == 0 ? state_in + bh * KV : S;  // the first step reads the initial state
      if (snaps && s % kChunk == 0) std::memcpy(snaps + (bh * nch + s / kChunk) * KV, Sin, KV * sizeof(T));
      const int64_t o = g.tok(b, t, h, K), ov = g.tok(b, t, h, V);
      if (s + kPrefetch < g.T) {
        const int64_t tp = g.time(s + kPrefetch), op = g.tok(b, tp, h, K), ovp = g.tok(b, tp, h, V);
        prefetch(r + op, K), prefetch(k + op, K), prefetch(v + ovp, V), prefetch(y + ovp, V);
        prefetch(ew + g.ew(b, tp, h), K);
      }
      wkv6_step<T, VN>(g, Sin, S, r + o, k + o, v + ov, ew + g.ew(b, t, h), u ? u + h * K : nullptr,
                       y + ov, acc);
    }
  });
}

template <typename T, int VN>
void wkv6_backward(const Geo g, const T* r, const T* k, const T* v, const T* ew, const T* u,
                   const T* snaps, const T* gy, const T* gstate, T* gr, T* gk, T* gv, T* gw,
                   T* gu, T* gs0, int threads) {
  const int64_t K = g.K, V = VN ? VN : g.V, KV = K * V, nch = g.chunks();
  // Scratch: the chunk's states, then (V = 64) the rows' partial dot products.
  parallel_items<T>(g.B * g.H, threads, kChunk * KV + 3 * K * Cols<T>::kLanes, [&](int64_t bh, T* buf) {
    const int64_t b = bh / g.H, h = bh % g.H;
    const T* uh = u ? u + h * K : nullptr;
    T* G = gs0 + bh * KV;  // the running dL/dS; ends as the initial state's gradient
    std::memcpy(G, gstate + bh * KV, KV * sizeof(T));
    T* du = gu ? gu + bh * K : nullptr;  // per (b, h); summed over b by the caller
    if (du) std::fill(du, du + K, T(0));
    for (int64_t c = nch - 1; c >= 0; --c) {
      const int64_t s0 = c * kChunk, s1 = std::min(g.T, s0 + kChunk);
      std::memcpy(buf, snaps + (bh * nch + c) * KV, KV * sizeof(T));
      for (int64_t s = s0; s + 1 < s1; ++s) {  // buf[m] = the state before step s0 + m
        const int64_t t = g.time(s), o = g.tok(b, t, h, K);
        T* next = buf + (s - s0 + 1) * KV;
        wkv6_step<T, VN>(g, next - KV, next, r + o, k + o, v + g.tok(b, t, h, V), ew + g.ew(b, t, h), nullptr,
                         nullptr, nullptr);
      }
      for (int64_t s = s1 - 1; s >= s0; --s) {
        const int64_t t = g.time(s), o = g.tok(b, t, h, K), ov = g.tok(b, t, h, V);
        if (s - kPrefetch >= 0) {
          const int64_t tp = g.time(s - kPrefetch), op = g.tok(b, tp, h, K), ovp = g.tok(b, tp, h, V);
          for (const T* x : std::initializer_list<const T*>{r, k, gr, gk, gw}) prefetch(x + op, K);
          for (const T* x : std::initializer_list<const T*>{v, gy, gv}) prefetch(x + ovp, V);
          prefetch(ew + g.ew(b, tp, h), K);
        }
        const T *rt = r + o, *kt = k + o, *vt = v + ov, *et = ew + g.ew(b, t, h), *gyt = gy + ov;
        const T* Sp = buf + (s - s0) * KV;
        T* dv = gv + ov;
        const T vg = dot<T, VN>(vt, gyt, V);
        T ruk = 0;
        if (uh) {
#pragma omp simd reduction(+ : ruk)
          for (int64_t i = 0; i < K; ++i) ruk += rt[i] * uh[i] * kt[i];
        }
        if constexpr (VN == 64) {
          using R = Cols<T>;
          using vec = typename R::vec;
          // The rows' dot products S_{t-1}[i].gy, G[i].v, G[i].S_{t-1}[i] add up over the column
          // blocks as vectors (part: 3 x K of them), summed across lanes once at the end.
          vec* part = reinterpret_cast<vec*>(buf + kChunk * KV);
          for (int j0 = 0; j0 < 64; j0 += R::kWidth) {
            const R gyv = R::load(gyt + j0), vv = R::load(vt + j0);
            R dvv = R::fill(0);
            for (int64_t i = 0; i < K; ++i) {
              T* Gi = G + i * 64 + j0;
              const T* Si = Sp + i * 64 + j0;
              const T ri = rt[i], ki = kt[i], ei = et[i];
              vec sg{}, gvv{}, gs{};
#pragma GCC unroll 8
              for (int n = 0; n < R::kVecs; ++n) {
                const vec Gv = R::at(Gi, n), Sv = R::at(Si, n);
                sg += Sv * gyv.x[n];
                gvv += Gv * vv.x[n];
                gs += Gv * Sv;
                dvv.x[n] += ki * Gv;
                R::at(Gi, n) = ei * Gv + ri * gyv.x[n];
              }
              if (j0 == 0) part[i] = sg, part[K + i] = gvv, part[2 * K + i] = gs;
              else part[i] += sg, part[K + i] += gvv, part[2 * K + i] += gs;
            }
#pragma GCC unroll 8
            for (int n = 0; n < R::kVecs; ++n) R::at(dv + j0, n) = dvv.x[n] + ruk * gyv.x[n];
          }
          T *__restrict__ dr = gr + o, *__restrict__ dk = gk + o, *__restrict__ dw = gw + o;
          R::hsums(part, K, dr), R::hsums(part + K, K, dk), R::hsums(part + 2 * K, K, dw);
#pragma omp simd
          for (int64_t i = 0; i < K; ++i) dw[i] *= et[i];
          if (uh) {
#pragma omp simd
            for (int64_t i = 0; i < K; ++i) dr[i] += uh[i] * kt[i] * vg, dk[i] += rt[i] * uh[i] * vg;
          }
          if (du) {
#pragma omp simd
            for (int64_t i = 0; i < K; ++i) du[i] += rt[i] * kt[i] * vg;
          }
          continue;
        }
        for (int64_t j = 0; j < V; ++j) dv[j] = gyt[j] * ruk;
        for (int64_t i = 0; i < K; ++i) {
          T* __restrict__ Gi = G + i * V;
          const T* __restrict__ Si = Sp + i * V;
          const T ri = rt[i], ki = kt[i], ei = et[i];
          T sg = 0, gv_ = 0, gs = 0;
#pragma omp simd reduction(+ : sg, gv_, gs)
          for (int64_t j = 0; j < V; ++j) {
            const T Gij = Gi[j];
            sg += Si[j] * gyt[j];
            gv_ += Gij * vt[j];
            gs += Gij * Si[j];
            dv[j] += ki * Gij;
            Gi[j] = ei * Gij + ri * gyt[j];
          }
          const T ui = uh ? uh[i] : T(0);
          gr[o + i] = sg + ui * ki * vg;
          gk[o + i] = gv_ + ri * ui * vg;
          gw[o + i] = ei * gs;
          if (du) du[i] += ri * ki * vg;
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------ wkv7

// One step of wkv7 for one head: sa = a^T S_{t-1} (S_{t-1} = Sin, sa kept), S <- S_t (Sin may be
// S), y (if not null).
template <typename T, int VN>
inline void wkv7_step(const Geo& g, const T* Sin, T* S, const T* r, const T* k, const T* v,
                      const T* e, const T* a, const T* bb, T* __restrict__ y, T* __restrict__ sa) {
  const int64_t K = g.K, V = VN ? VN : g.V;
  if constexpr (VN == 64) {
    using R = Cols<T>;
    using vec = typename R::vec;
    for (int j0 = 0; j0 < 64; j0 += R::kWidth) {  // every column of the step is independent
      const R vr = R::load(v + j0);
      R sav = R::fill(0), acc = R::fill(0);
      for (int64_t i = 0; i < K; ++i) {
        const T ai = a[i];
#pragma GCC unroll 8
        for (int n = 0; n < R::kVecs; ++n) sav.x[n] += ai * R::at(Sin + i * 64 + j0, n);
      }
      for (int64_t i = 0; i < K; ++i) {
        const T ei = e[i], bi = bb[i], ki = k[i], ri = r[i];
#pragma GCC unroll 8
        for (int n = 0; n < R::kVecs; ++n) {
          const vec s = R::at(Sin + i * 64 + j0, n) * ei + bi * sav.x[n] + ki * vr.x[n];
          R::at(S + i * 64 + j0, n) = s;
          acc.x[n] += ri * s;
        }
      }
      sav.store(sa + j0);
      if (y) acc.store(y + j0);
    }
    return;
  }
  for (int64_t j = 0; j < V; ++j) sa[j] = 0;
  for (int64_t i = 0; i < K; ++i) {
    const T* __restrict__ Si = Sin + i * V;
    const T ai = a[i];
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) sa[j] += ai * Si[j];
  }
  if (y)
    for (int64_t j = 0; j < V; ++j) y[j] = 0;
  for (int64_t i = 0; i < K; ++i) {
    const T* Sii = Sin + i * V;
    T* Si = S + i * V;
    const T ei = e[i], bi = bb[i], ki = k[i], ri = r[i];
    if (y) {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        const T s = Sii[j] * ei + bi * sa[j] + ki * v[j];
        Si[j] = s;
        y[j] += ri * s;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) Si[j] = Sii[j] * ei + bi * sa[j] + ki * v[j];
    }
  }
}

template <typename T, int VN>
void wkv7_forward(const Geo g, const T* r, const T* k, const T* v, const T* ew, const T* a,
                  const T* bb, const T* state_in, T* state, T* y, T* snaps, int threads) {
  const int64_t K = g.K, V = VN ? VN : g.V, KV = K * V, nch = g.chunks();
  parallel_items<T>(g.B * g.H, threads, V, [&](int64_t bh, T* sa) {
    const int64_t b = bh / g.H, h = bh % g.H;
    T* S = state + bh * KV;
    for (int64_t t = 0; t < g.T; ++t) {
      const T* Sin = t == 0 ? state_in + bh * KV : S;
      if (snaps && t % kChunk == 0) std::memcpy(snaps + (bh * nch + t / kChunk) * KV, Sin, KV * sizeof(T));
      const int64_t o = g.tok(b, t, h, K), ov = g.tok(b, t, h, V);
      if (t + kPrefetch < g.T) {
        const int64_t op = g.tok(b, t + kPrefetch, h, K), ovp = g.tok(b, t + kPrefetch, h, V);
        prefetch(r + op, K), prefetch(k + op, K), prefetch(a + op, K), prefetch(bb + op, K);
        prefetch(v + ovp, V), prefetch(y + ovp, V), prefetch(ew + g.ew(b, t + kPrefetch, h), K);
      }
      wkv7_step<T, VN>(g, Sin, S, r + o, k + o, v + ov, ew + g.ew(b, t, h), a + o, bb + o, y + ov, sa);
    }
  });
}

template <typename T, int VN>
void wkv7_backward(const Geo g, const T* r, const T* k, const T* v, const T* ew, const T* a,
                   const T* bb, const T* snaps, const T* gy, const T* gstate, T* gr, T* gk, T* gv,
                   T* gw, T* ga, T* gb, T* gs0, int threads) {
  const int64_t K = g.K, V = VN ? VN : g.V, KV = K * V, nch = g.chunks();
  // Scratch: kChunk + 1 states (before each step of the chunk and after its last), the chunk's
  // sa_t rows, dsa, and (V = 64) the rows' partial dot products.
  const size_t scratch = (kChunk + 1) * KV + kChunk * V + V + 5 * K * Cols<T>::kLanes;
  parallel_items<T>(g.B * g.H, threads, scratch, [&](int64_t bh, T* buf) {
    const int64_t b = bh / g.H, h = bh % g.H;
    T* sab = buf + (kChunk + 1) * KV;
    T* dsa = sab + kChunk * V;
    T* G = gs0 + bh * KV;
    std::memcpy(G, gstate + bh * KV, KV * sizeof(T));
    for (int64_t c = nch - 1; c >= 0; --c) {
      const int64_t s0 = c * kChunk, s1 = std::min(g.T, s0 + kChunk);
      std::memcpy(buf, snaps + (bh * nch + c) * KV, KV * sizeof(T));
      for (int64_t t = s0; t < s1; ++t) {
        const int64_t o = g.tok(b, t, h, K);
        T* next = buf + (t - s0 + 1) * KV;
        wkv7_step<T, VN>(g, next - KV, next, r + o, k + o, v + g.tok(b, t, h, V), ew + g.ew(b, t, h), a + o,
                         bb + o, nullptr, sab + (t - s0) * V);
      }
      for (int64_t t = s1 - 1; t >= s0; --t) {
        const int64_t o = g.tok(b, t, h, K), ov = g.tok(b, t, h, V);
        if (t - kPrefetch >= 0) {
          const int64_t op = g.tok(b, t - kPrefetch, h, K), ovp = g.tok(b, t - kPrefetch, h, V);
          for (const T* x : std::initializer_list<const T*>{r, k, a, bb, gr, gk, gw, ga, gb}) prefetch(x + op, K);
          for (const T* x : std::initializer_list<const T*>{v, gy, gv}) prefetch(x + ovp, V);
          prefetch(ew + g.ew(b, t - kPrefetch, h), K);
        }
        const T *rt = r + o, *kt = k + o, *vt = v + ov, *et = ew + g.ew(b, t, h), *at = a + o,
                *bt = bb + o, *gyt = gy + ov, *sa = sab + (t - s0) * V;
        const T* Sp = buf + (t - s0) * KV;  // S_{t-1}
        const T* Sn = Sp + KV;              // S_t
        T* dv = gv + ov;
        if constexpr (VN == 64) {
          using R = Cols<T>;
          using vec = typename R::vec;
          // A column's dsa needs only that column of G, so each block runs both loops over i.
          // The rows' dot products (dr, dk, db, dw, da) add up over the blocks as vectors
          // (part: 5 x K of them), summed across lanes once at the end.
          vec* part = reinterpret_cast<vec*>(dsa + V);
          for (int j0 = 0; j0 < 64; j0 += R::kWidth) {
            const R gyv = R::load(gyt + j0), vv = R::load(vt + j0), sav = R::load(sa + j0);
            R dvv = R::fill(0), dsav = R::fill(0);
            for (int64_t i = 0; i < K; ++i) {
              T* Gi = G + i * 64 + j0;
              const T ri = rt[i], ki = kt[i], bi = bt[i];
              vec sg{}, gvv{}, gsa{}, gs{};
#pragma GCC unroll 8
              for (int n = 0; n < R::kVecs; ++n) {
                const vec Gv = R::at(Gi, n) + ri * gyv.x[n];
                R::at(Gi, n) = Gv;
                sg += R::at(Sn + i * 64 + j0, n) * gyv.x[n];
                gvv += Gv * vv.x[n];
                gsa += Gv * sav.x[n];
                gs += Gv * R::at(Sp + i * 64 + j0, n);
                dvv.x[n] += ki * Gv;
                dsav.x[n] += bi * Gv;
              }
              if (j0 == 0) part[i] = sg, part[K + i] = gvv, part[2 * K + i] = gsa, part[3 * K + i] = gs;
              else part[i] += sg, part[K + i] += gvv, part[2 * K + i] += gsa, part[3 * K + i] += gs;
            }
            dvv.store(dv + j0);
            for (int64_t i = 0; i < K; ++i) {
              T* Gi = G + i * 64 + j0;
              const T ei = et[i], ai = at[i];
              vec da{};
#pragma GCC unroll 8
              for (int n = 0; n < R::kVecs; ++n) {
                da += R::at(Sp + i * 64 + j0, n) * dsav.x[n];
                R::at(Gi, n) = ei * R::at(Gi, n) + ai * dsav.x[n];
              }
              if (j0 == 0) part[4 * K + i] = da;
              else part[4 * K + i] += da;
            }
          }
          R::hsums(part, K, gr + o), R::hsums(part + K, K, gk + o), R::hsums(part + 2 * K, K, gb + o);
          R::hsums(part + 3 * K, K, gw + o), R::hsums(part + 4 * K, K, ga + o);
#pragma omp simd
          for (int64_t i = 0; i < K; ++i) gw[o + i] *= et[i];
          continue;
        }
        for (int64_t j = 0; j < V; ++j) dv[j] = 0, dsa[j] = 0;
        for (int64_t i = 0; i < K; ++i) {
          T* __restrict__ Gi = G + i * V;
          const T* __restrict__ Sni = Sn + i * V;
          const T* __restrict__ Spi = Sp + i * V;
          const T ri = rt[i], ki = kt[i], bi = bt[i];
          T sg = 0, gv_ = 0, gsa = 0, gs = 0;
#pragma omp simd reduction(+ : sg, gv_, gsa, gs)
          for (int64_t j = 0; j < V; ++j) {
            const T Gij = Gi[j] + ri * gyt[j];
            Gi[j] = Gij;
            sg += Sni[j] * gyt[j];
            gv_ += Gij * vt[j];
            gsa += Gij * sa[j];
            gs += Gij * Spi[j];
            dv[j] += ki * Gij;
            dsa[j] += bi * Gij;
          }
          gr[o + i] = sg;
          gk[o + i] = gv_;
          gb[o + i] = gsa;
          gw[o + i] = et[i] * gs;
        }
        for (int64_t i = 0; i < K; ++i) {
          T* __restrict__ Gi = G + i * V;
          const T* __restrict__ Spi = Sp + i * V;
          const T ei = et[i], ai = at[i];
          T da = 0;
#pragma omp simd reduction(+ : da)
          for (int64_t j = 0; j < V; ++j) {
            da += Spi[j] * dsa[j];
            Gi[j] = ei * Gi[j] + ai * dsa[j];
          }
          ga[o + i] = da;
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------ point
// PointRWKV's scan (rwkv_hf.ops.point_wkv), one direction per work item (b, h, dir); dir 1 runs
// from the last token to the first. The state is read before the token and contracted with the
// key over its value index (the decay acts on the row, the output index):
//   A_t[i] = S_{t-1}[i].k_t,   S_t = diag(e) S_{t-1} + k_t v_t^T
// Backward (G = dL/dS_t from the end of the scan; q = dL/dA_t of this direction):
//   dk_j = G[j].v + sum_i q_i S_{t-1}[i][j];  dv_j = sum_i k_i G[i][j];  dw_i = e_i G[i].S_{t-1}[i];
//   G_{t-1} = diag(e) G + q k^T
// Both directions' A, dk, dv, dw go to [2, B, T, H, K] (summed by the caller); the states are
// [B, 2, H, K, K] (dir on dim 1, as the op's); snapshots [2, B, H, chunks, K, K]. The rows' loops
// run over the contiguous column index j: the row dot products are `omp simd` reductions, the
// column sums accumulate in K-long rows.

struct PointGeo {
  Geo g;  // K = V; ew strides unused (exp(w) is [B, T, H, K] contiguous)
  int64_t dir_tok() const { return g.B * g.T * g.H * g.K; }        // one direction's [B, T, H, K]
  int64_t state(int64_t b, int64_t dir, int64_t h) const { return ((b * 2 + dir) * g.H + h) * g.K * g.K; }
  int64_t time(int64_t dir, int64_t s) const { return dir ? g.T - 1 - s : s; }
};

template <typename T>
inline void point_step(int64_t K, const T* Sin, T* S, const T* k, const T* v, const T* e, T* A) {
  for (int64_t i = 0; i < K; ++i) {
    const T* __restrict__ Sii = Sin + i * K;
    T* Si = S + i * K;
    const T ki = k[i], ei = e[i];
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < K; ++j) {
      const T s = Sii[j];
      acc += s * k[j];
      Si[j] = s * ei + ki * v[j];
    }
    if (A) A[i] = acc;
  }
}

template <typename T>
void point_forward(const PointGeo pg, const T* k, const T* v, const T* ew, const T* state_in, T* state,
                   T* A, T* snaps, int threads) {
  const Geo& g = pg.g;
  const int64_t K = g.K, KK = K * K, nch = g.chunks();
  parallel_items<T>(2 * g.B * g.H, threads, 1, [&](int64_t item, T*) {
    const int64_t dir = item / (g.B * g.H), bh = item % (g.B * g.H), b = bh / g.H, h = bh % g.H;
    T* S = state + pg.state(b, dir, h);
    T* Ad = A + dir * pg.dir_tok();
    for (int64_t s = 0; s < g.T; ++s) {
      const int64_t t = pg.time(dir, s), o = g.tok(b, t, h, K);
      const T* Sin = s == 0 ? state_in + pg.state(b, dir, h) : S;
      if (snaps && s % kChunk == 0) std::memcpy(snaps + (item * nch + s / kChunk) * KK, Sin, KK * sizeof(T));
      if (s + kPrefetch < g.T) {
        const int64_t op = g.tok(b, pg.time(dir, s + kPrefetch), h, K);
        prefetch(k + op, K), prefetch(v + op, K), prefetch(ew + op, K), prefetch(Ad + op, K);
      }
      point_step<T>(K, Sin, S, k + o, v + o, ew + o, Ad + o);
    }
  });
}

template <typename T>
void point_backward(const PointGeo pg, const T* k, const T* v, const T* ew, const T* snaps, const T* gA,
                    const T* gstate, T* gk, T* gv, T* gw, T* gs0, int threads) {
  const Geo& g = pg.g;
  const int64_t K = g.K, KK = K * K, nch = g.chunks();
  // Scratch: the chunk's states, then the column sums of a step.
  parallel_items<T>(2 * g.B * g.H, threads, kChunk * KK + 2 * K, [&](int64_t item, T* buf) {
    const int64_t dir = item / (g.B * g.H), bh = item % (g.B * g.H), b = bh / g.H, h = bh % g.H;
    T* col_k = buf + kChunk * KK;  // sum_i q_i S_{t-1}[i]
    T* G = gs0 + pg.state(b, dir, h);
    if (gstate) std::memcpy(G, gstate + pg.state(b, dir, h), KK * sizeof(T));
    else std::fill(G, G + KK, T(0));
    const int64_t off = dir * pg.dir_tok();
    for (int64_t c = nch - 1; c >= 0; --c) {
      const int64_t s0 = c * kChunk, s1 = std::min(g.T, s0 + kChunk);
      std::memcpy(buf, snaps + (item * nch + c) * KK, KK * sizeof(T));
      for (int64_t s = s0; s + 1 < s1; ++s) {  // buf[m] = the state before step s0 + m
        const int64_t o = g.tok(b, pg.time(dir, s), h, K);
        T* next = buf + (s - s0 + 1) * KK;
        point_step<T>(K, next - KK, next, k + o, v + o, ew + o, (T*)nullptr);
      }
      for (int64_t s = s1 - 1; s >= s0; --s) {
        const int64_t o = g.tok(b, pg.time(dir, s), h, K);
        if (s - kPrefetch >= 0) {
          const int64_t op = g.tok(b, pg.time(dir, s - kPrefetch), h, K);
          for (const T* x : std::initializer_list<const T*>{k, v, ew}) prefetch(x + op, K);
          for (const T* x : std::initializer_list<const T*>{gA, gk, gv, gw}) prefetch(x + off + op, K);
        }
        const T *__restrict__ kt = k + o, *__restrict__ vt = v + o, *__restrict__ et = ew + o,
                *__restrict__ q = gA + off + o;
        const T* Sp = buf + (s - s0) * KK;
        T *__restrict__ dk = gk + off + o, *__restrict__ dv = gv + off + o, *__restrict__ dw = gw + off + o;
        for (int64_t j = 0; j < K; ++j) dv[j] = 0, col_k[j] = 0;
        for (int64_t i = 0; i < K; ++i) {
          T* __restrict__ Gi = G + i * K;
          const T* __restrict__ Si = Sp + i * K;
          const T ki = kt[i], qi = q[i], ei = et[i];
          T gv_ = 0, gs = 0;
#pragma omp simd reduction(+ : gv_, gs)
          for (int64_t j = 0; j < K; ++j) {
            const T Gij = Gi[j], Sij = Si[j];
            gv_ += Gij * vt[j];
            gs += Gij * Sij;
            dv[j] += ki * Gij;
            col_k[j] += qi * Sij;
            Gi[j] = ei * Gij + qi * kt[j];
          }
          dk[i] = gv_;
          dw[i] = ei * gs;
        }
#pragma omp simd
        for (int64_t j = 0; j < K; ++j) dk[j] += col_k[j];
      }
    }
  });
}

// ------------------------------------------------------------------------------------ wkv4
// Per channel, the running (num, den, logscale) triple of the reference (BlinkDL's aa, bb, pp):
//   y_t  = (e^{pp-p} aa + e^{u+k_t-p} v_t) / (e^{pp-p} bb + e^{u+k_t-p}),   p = max(pp, u + k_t)
//   next: q = max(pp + w, k_t); aa = e^{pp+w-q} aa + e^{k_t-q} v_t; bb likewise; pp = q
// bi_wkv4 runs that scan left to right (keeping the state before each token) and right to left,
// and combines both states with the bonus term under one max. Vectorised over channels (xexp,
// cpu_common.h: std::exp does not vectorise without -ffast-math).
//
// Precision: a scan runs on float64 triples whatever the inputs' type. Vision-RWKV's decays are
// of order 1/T, so a state sums about T terms of similar size while its logscale moves by about
// 1/T per token, and in float32 the roundings of both compound along the scan: bidirectional v4
// at T = 8000 came out 3.5e-4 off float64 (the torch backend's chunked form: 2.3e-6). The
// exponentials stay in the inputs' type (v4exp): each is a term's weight, rounded once, or a
// rescale of a running sum, which happens only when a token's k beats the decayed maximum. A
// triple kept in memory in the inputs' type (the final state, bi_wkv4's left states) rounds p
// first and lets a, b absorb that rounding (store_tri), so it still stands for the same sums.

constexpr int64_t kChannelBlock = 128;  // the most channels of one work item

struct Geo4 {
  int64_t B, T, C;
  int64_t cb;  // channels per work item
  int64_t blocks() const { return (C + cb - 1) / cb; }
};

// Work items are (batch entry, block of channels). Blocks of kChannelBlock channels would leave
// threads idle when B is small (one image through Restore-RWKV or Vision-RWKV: B = 1, C <= 128:
// one item); the channels are then split into blocks of whole 64-byte lines of float32 (16
// channels), about one per thread. Channels are independent: the results are the same.
inline Geo4 make_geo4(int64_t B, int64_t T, int64_t C, int threads) {
  int64_t cb = kChannelBlock;
  const int64_t per_batch = (threads + B - 1) / B;  // items wanted per batch entry
  if (per_batch > 1) cb = std::min(cb, std::max<int64_t>(16, ((C + per_batch - 1) / per_batch + 15) / 16 * 16));
  return Geo4{B, T, C, cb};
}

// e^x, x <= 0 a float64 difference of exponents, in float32 for float32 inputs (see above).
template <typename T>
inline double v4exp(double x) {
  if constexpr (std::is_same_v<T, float>) return xexp(static_cast<float>(x));
  else return xexp(x);
}

// A block's (num, den, logscale) triples in float64.
struct Tri {
  double a[kChannelBlock], b[kChannelBlock], p[kChannelBlock];
};

// n channels of a triple of T's whose rows are `stride` apart.
template <typename T>
inline void load_tri(int64_t n, const T* src, int64_t stride, Tri& s) {
  for (int64_t c = 0; c < n; ++c) s.a[c] = src[c], s.b[c] = src[stride + c], s.p[c] = src[2 * stride + c];
}

template <typename T>
inline void store_tri(int64_t n, const Tri& s, T* dst, int64_t stride) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const T pt = static_cast<T>(s.p[c]);
    const double f = v4exp<T>(s.p[c] - static_cast<double>(pt));  // 1 up to p's rounding
    dst[c] = static_cast<T>(s.a[c] * f), dst[stride + c] = static_cast<T>(s.b[c] * f), dst[2 * stride + c] = pt;
  }
}

// One token of the causal scan for channels [0, n) of a block: y (WithY) then the update.
template <bool WithY, typename T>
inline void wkv4_token(int64_t n, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ w,
                       const T* __restrict__ u, Tri& s, T* __restrict__ y) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const double kc = k[c], vc = v[c], a = s.a[c], b = s.b[c], q0 = s.p[c];
    if constexpr (WithY) {
      const double ww = u[c] + kc, p = std::max(q0, ww);
      const double e1 = v4exp<T>(q0 - p), e2 = v4exp<T>(ww - p);
      y[c] = static_cast<T>((e1 * a + e2 * vc) / (e1 * b + e2));
    }
    const double ww = w[c] + q0, p = std::max(ww, kc);
    const double e1 = v4exp<T>(ww - p), e2 = v4exp<T>(kc - p);
    s.a[c] = e1 * a + e2 * vc;
    s.b[c] = e1 * b + e2;
    s.p[c] = p;
  }
}

template <typename T>
void wkv4_forward(const Geo4 g, const T* k, const T* v, const T* w, const T* u, T* state, T* y, int threads) {
  const int64_t nb = g.blocks();
  parallel_items<T>(g.B * nb, threads, 0, [&](int64_t item, T*) {
    const int64_t b = item / nb, c0 = (item % nb) * g.cb, n = std::min(g.cb, g.C - c0);
    T* st = state + b * 3 * g.C + c0;  // (num, den, logscale) rows of this batch entry
    Tri s;
    load_tri(n, st, g.C, s);
    for (int64_t t = 0; t < g.T; ++t) {
      const int64_t o = (b * g.T + t) * g.C + c0;
      if (t + kPrefetch < g.T) {
        const int64_t op = o + kPrefetch * g.C;
        prefetch(k + op, n), prefetch(v + op, n), prefetch(y + op, n);
      }
      wkv4_token<true>(n, k + o, v + o, w + c0, u + c0, s, y + o);
    }
    store_tri(n, s, st, g.C);
  });
}

template <typename T>
void bi_wkv4_forward(const Geo4 g, const T* k, const T* v, const T* w, const T* u, T* state, T* y,
                     int threads) {
  const int64_t nb = g.blocks(), CB = kChannelBlock;
  // Scratch: the left-to-right state before every token of the block (3 rows per token, of the
  // block's channels rounded up to a 64-byte line: with fewer than CB channels, rows of CB would
  // spread each token over more lines and pages than it fills, and the scratch of a long
  // sequence, written then read backwards, outgrows the caches sooner).
  parallel_items<T>(g.B * nb, threads, 3 * g.T * CB, [&](int64_t item, T* left) {
    const int64_t b = item / nb, c0 = (item % nb) * g.cb, n = std::min(g.cb, g.C - c0);
    const int64_t L = std::min(CB, (n + 15) / 16 * 16);  // row stride of the scratch
    T* stl = state + (b * 2 + 0) * 3 * g.C + c0;  // enters from the left, leaves after the last token
    T* str = state + (b * 2 + 1) * 3 * g.C + c0;  // enters from the right, leaves before the first
    Tri s;
    load_tri(n, stl, g.C, s);
    for (int64_t t = 0; t < g.T; ++t) {
      const int64_t o = (b * g.T + t) * g.C + c0;
      if (t + kPrefetch < g.T) prefetch(k + o + kPrefetch * g.C, n), prefetch(v + o + kPrefetch * g.C, n);
      store_tri(n, s, left + 3 * t * L, L);
      wkv4_token<false>(n, k + o, v + o, w + c0, u + c0, s, (T*)nullptr);
    }
    store_tri(n, s, stl, g.C);
    load_tri(n, str, g.C, s);
    for (int64_t t = g.T - 1; t >= 0; --t) {
      const int64_t o = (b * g.T + t) * g.C + c0;
      if (t - kPrefetch >= 0) {
        const int64_t op = o - kPrefetch * g.C;
        prefetch(k + op, n), prefetch(v + op, n), prefetch(y + op, n);
      }
      const T *kt = k + o, *vt = v + o, *uc = u + c0;
      const T *la = left + 3 * t * L, *lb = la + L, *lp = lb + L;
      T* yt = y + o;
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        const double cur = uc[c] + static_cast<double>(kt[c]), lpc = lp[c], rpc = s.p[c];
        const double m = std::max(std::max(lpc, rpc), cur);
        const double el = v4exp<T>(lpc - m), er = v4exp<T>(rpc - m), ec = v4exp<T>(cur - m);
        yt[c] = static_cast<T>((el * la[c] + er * s.a[c] + ec * vt[c]) / (el * lb[c] + er * s.b[c] + ec));
      }
      wkv4_token<false>(n, kt, vt, w + c0, uc, s, (T*)nullptr);
    }
    store_tri(n, s, str, g.C);
  });
}

// Backward of the per-channel ops: the reverse mode of the token loop above, so its gradients
// are the reference backend's (autograd through the same loop). In the log-scaled frame every
// factor is an e^x <= 1 and each denominator is >= 1 after the first token, so the adjoints
// stay bounded like the states; they are float64 too. The scan is recomputed from the initial
// state: the state before every kChunk-th token is kept, and each chunk's states are recomputed
// into a buffer while the adjoint runs backwards through it (bi_wkv4: both scans', as y reads
// both). Nothing of size [B, T, C] is kept from the forward.
// A step s' = step(s, k, v): w2 = w + p, q = max(w2, k), f1 = e^{w2-q}, f2 = e^{k-q},
// s' = (f1 a + f2 v, f1 b + f2, q). With (ga, gb, gq) the adjoint of s' (gq: its logscale's):
//   gf1 = ga a + gb b, gf2 = ga v + gb, the max gets gq - gf1 f1 - gf2 f2 (split on a tie, as
//   torch.maximum does), w2 gets gf1 f1 (+ its share), k gets gf2 f2 (+ its share), v ga f2;
//   the adjoint of s is (ga f1, gb f1, w2's) and w's gradient gets w2's.
// y = (e1 a + e2 v) / (e1 b + e2) with e1 = e^{p-m}, e2 = e^{u+k-m}: m cancels, so no gradient
// reaches it (nor the max that chose it); with gn = gy / den, gd = -gy y / den, the state gets
// (gn e1, gd e1, (gn a + gd b) e1) and u + k gets (gn v + gd) e2.

// Adjoint of one step for channels [0, n): s the state before it; G the adjoint of the state
// after it on entry, of the state before it (the step's part) on return.
template <typename T>
inline void wkv4_step_back(int64_t n, const T* __restrict__ k, const T* __restrict__ v,
                           const T* __restrict__ w, const Tri& s, Tri& G, T* __restrict__ gk,
                           T* __restrict__ gv, double* __restrict__ gw) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const double kc = k[c], vc = v[c], w2 = w[c] + s.p[c], q = std::max(w2, kc);
    const double f1 = v4exp<T>(w2 - q), f2 = v4exp<T>(kc - q);
    const double ga = G.a[c], gb = G.b[c];
    const double gf1 = (ga * s.a[c] + gb * s.b[c]) * f1, gf2 = (ga * vc + gb) * f2;
    const double gq = G.p[c] - gf1 - gf2;
    const double share = w2 > kc ? 1.0 : (w2 < kc ? 0.0 : 0.5);  // of the max, to w2
    const double gw2 = gf1 + share * gq;
    gk[c] += gf2 + (1.0 - share) * gq;
    gv[c] += ga * f2;
    gw[c] += gw2;
    G.a[c] = ga * f1, G.b[c] = gb * f1, G.p[c] = gw2;
  }
}

// Adjoint of wkv4's y_t = num / den of the state s plus the bonus e^{u+k} (v, 1): adds to G (the
// state's adjoint), gk, gv and gu.
template <typename T>
inline void wkv4_out_back(int64_t n, const T* __restrict__ k, const T* __restrict__ v,
                          const T* __restrict__ u, const T* __restrict__ gy, const Tri& s, Tri& G,
                          T* __restrict__ gk, T* __restrict__ gv, double* __restrict__ gu) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const double vc = v[c], ww = u[c] + static_cast<double>(k[c]), pc = s.p[c], m = std::max(pc, ww);
    const double e1 = v4exp<T>(pc - m), e2 = v4exp<T>(ww - m);
    const double den = e1 * s.b[c] + e2, y = (e1 * s.a[c] + e2 * vc) / den;
    const double gn = gy[c] / den, gd = -gn * y;
    G.a[c] += gn * e1, G.b[c] += gd * e1, G.p[c] += (gn * s.a[c] + gd * s.b[c]) * e1;
    const double gww = (gn * vc + gd) * e2;
    gk[c] += gww, gu[c] += gww, gv[c] += gn * e2;
  }
}

// Adjoint of bi_wkv4's y_t = num / den of P + F + e^{u+k} (v, 1) (P the state from the left, F
// from the right). SIDE 0: adds F's adjoint to G and the bonus's gradients to gk, gv, gu; SIDE 1:
// adds P's adjoint to G.
template <int SIDE, typename T>
inline void bi_wkv4_out_back(int64_t n, const T* __restrict__ k, const T* __restrict__ v,
                             const T* __restrict__ u, const T* __restrict__ gy, const Tri& P,
                             const Tri& F, Tri& G, T* __restrict__ gk, T* __restrict__ gv,
                             double* __restrict__ gu) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const double vc = v[c], cur = u[c] + static_cast<double>(k[c]), lp = P.p[c], rp = F.p[c];
    const double m = std::max(std::max(lp, rp), cur);
    const double el = v4exp<T>(lp - m), er = v4exp<T>(rp - m), ec = v4exp<T>(cur - m);
    const double den = el * P.b[c] + er * F.b[c] + ec;
    const double y = (el * P.a[c] + er * F.a[c] + ec * vc) / den;
    const double gn = gy[c] / den, gd = -gn * y;
    if constexpr (SIDE == 0) {
      G.a[c] += gn * er, G.b[c] += gd * er, G.p[c] += (gn * F.a[c] + gd * F.b[c]) * er;
      const double gcur = (gn * vc + gd) * ec;
      gk[c] += gcur, gu[c] += gcur, gv[c] += gn * ec;
    } else {
      G.a[c] += gn * el, G.b[c] += gd * el, G.p[c] += (gn * P.a[c] + gd * P.b[c]) * el;
    }
  }
}

// An adjoint stored as a gradient triple (rows `stride` apart), as it is: no rescaling.
template <typename T>
inline void store_adjoint(int64_t n, const Tri& G, T* dst, int64_t stride) {
  for (int64_t c = 0; c < n; ++c)
    dst[c] = static_cast<T>(G.a[c]), dst[stride + c] = static_cast<T>(G.b[c]), dst[2 * stride + c] = static_cast<T>(G.p[c]);
}

// Scratch triples of one work item of the per-channel backward, per scan: a checkpoint per
// chunk of kChunk tokens, then one chunk's states.
inline int64_t v4_checkpoints(int64_t Tn) { return (Tn + kChunk - 1) / kChunk; }
inline size_t v4_scratch(int64_t Tn, int scans) { return scans * (v4_checkpoints(Tn) + kChunk); }

template <typename T>
void wkv4_backward(const Geo4 g, const T* k, const T* v, const T* w, const T* u, const T* state_in,
                   const T* gy, const T* gstate, T* gk, T* gv, T* gw_part, T* gu_part, T* gs0,
                   int threads) {
  const int64_t nb = g.blocks(), nck = v4_checkpoints(g.T);
  parallel_items<Tri>(g.B * nb, threads, v4_scratch(g.T, 1), [&](int64_t item, Tri* ck) {
    const int64_t b = item / nb, c0 = (item % nb) * g.cb, n = std::min(g.cb, g.C - c0);
    Tri* buf = ck + nck;  // the states before each token of a chunk
    auto tok = [&](int64_t t) { return (b * g.T + t) * g.C + c0; };
    Tri s, G;
    load_tri(n, state_in + b * 3 * g.C + c0, g.C, s);
    for (int64_t t = 0; t < g.T; ++t) {  // the checkpoints
      if (t % kChunk == 0) ck[t / kChunk] = s;
      wkv4_token<false>(n, k + tok(t), v + tok(t), w + c0, u + c0, s, (T*)nullptr);
    }
    // The adjoint of the state after the current token: from the final state's gradient.
    load_tri(n, gstate + b * 3 * g.C + c0, g.C, G);
    double gw[kChannelBlock] = {}, gu[kChannelBlock] = {};
    for (int64_t j = nck - 1; j >= 0; --j) {
      const int64_t t0 = j * kChunk, t1 = std::min(g.T, t0 + kChunk);
      s = ck[j];
      for (int64_t t = t0; t < t1; ++t) {
        buf[t - t0] = s;
        wkv4_token<false>(n, k + tok(t), v + tok(t), w + c0, u + c0, s, (T*)nullptr);
      }
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const int64_t o = tok(t);
        std::fill(gk + o, gk + o + n, T(0)), std::fill(gv + o, gv + o + n, T(0));
        wkv4_step_back(n, k + o, v + o, w + c0, buf[t - t0], G, gk + o, gv + o, gw);
        wkv4_out_back(n, k + o, v + o, u + c0, gy + o, buf[t - t0], G, gk + o, gv + o, gu);
      }
    }
    store_adjoint(n, G, gs0 + b * 3 * g.C + c0, g.C);  // the initial state's gradient
    for (int64_t c = 0; c < n; ++c)
      gw_part[b * g.C + c0 + c] = static_cast<T>(gw[c]), gu_part[b * g.C + c0 + c] = static_cast<T>(gu[c]);
  });
}

template <typename T>
void bi_wkv4_backward(const Geo4 g, const T* k, const T* v, const T* w, const T* u, const T* state_in,
                      const T* gy, const T* gstate, T* gk, T* gv, T* gw_part, T* gu_part, T* gs0,
                      int threads) {
  const int64_t nb = g.blocks(), nck = v4_checkpoints(g.T);
  parallel_items<Tri>(g.B * nb, threads, v4_scratch(g.T, 2), [&](int64_t item, Tri* ckl) {
    const int64_t b = item / nb, c0 = (item % nb) * g.cb, n = std::min(g.cb, g.C - c0);
    // Checkpoints and a chunk's states of the left-to-right scan (P: before each token) and of
    // the right-to-left one (F: before each token, in its order).
    Tri *bufl = ckl + nck, *ckr = bufl + kChunk, *bufr = ckr + nck;
    auto tok = [&](int64_t t) { return (b * g.T + t) * g.C + c0; };
    auto step = [&](Tri& s, int64_t t) {
      wkv4_token<false>(n, k + tok(t), v + tok(t), w + c0, u + c0, s, (T*)nullptr);
    };
    const T* sin = state_in + b * 2 * 3 * g.C + c0;  // [2, 3, C]: from the left, from the right
    Tri s;
    load_tri(n, sin, g.C, s);
    for (int64_t t = 0; t < g.T; ++t) {  // left checkpoints: the state before token j kChunk
      if (t % kChunk == 0) ckl[t / kChunk] = s;
      step(s, t);
    }
    load_tri(n, sin + 3 * g.C, g.C, s);
    for (int64_t t = g.T - 1; t >= 0; --t) {  // right ones: the state before a chunk's last token
      if (t == g.T - 1 || (t + 1) % kChunk == 0) ckr[t / kChunk] = s;
      step(s, t);
    }
    auto chunk_states = [&](int64_t j, int64_t t0, int64_t t1) {
      s = ckl[j];
      for (int64_t t = t0; t < t1; ++t) bufl[t - t0] = s, step(s, t);
      s = ckr[j];
      for (int64_t t = t1 - 1; t >= t0; --t) bufr[t - t0] = s, step(s, t);
    };
    // The adjoints start from the final states' gradients (the right scan's ends after token 0).
    Tri GP, GF;
    load_tri(n, gstate + b * 2 * 3 * g.C + c0, g.C, GP);
    load_tri(n, gstate + (b * 2 + 1) * 3 * g.C + c0, g.C, GF);
    double gw[kChannelBlock] = {}, gu[kChannelBlock] = {};
    // The right-to-left scan's adjoint runs left to right; it writes gk, gv (with the bonus's).
    for (int64_t j = 0; j < nck; ++j) {
      const int64_t t0 = j * kChunk, t1 = std::min(g.T, t0 + kChunk);
      chunk_states(j, t0, t1);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t o = tok(t);
        std::fill(gk + o, gk + o + n, T(0)), std::fill(gv + o, gv + o + n, T(0));
        wkv4_step_back(n, k + o, v + o, w + c0, bufr[t - t0], GF, gk + o, gv + o, gw);
        bi_wkv4_out_back<0>(n, k + o, v + o, u + c0, gy + o, bufl[t - t0], bufr[t - t0], GF, gk + o,
                            gv + o, gu);
      }
    }
    // The left-to-right scan's adjoint runs right to left; it adds to gk, gv.
    for (int64_t j = nck - 1; j >= 0; --j) {
      const int64_t t0 = j * kChunk, t1 = std::min(g.T, t0 + kChunk);
      chunk_states(j, t0, t1);
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const int64_t o = tok(t);
        wkv4_step_back(n, k + o, v + o, w + c0, bufl[t - t0], GP, gk + o, gv + o, gw);
        bi_wkv4_out_back<1>(n, k + o, v + o, u + c0, gy + o, bufl[t - t0], bufr[t - t0], GP, gk + o,
                            gv + o, gu);
      }
    }
    store_adjoint(n, GP, gs0 + b * 2 * 3 * g.C + c0, g.C);
    store_adjoint(n, GF, gs0 + (b * 2 + 1) * 3 * g.C + c0, g.C);
    for (int64_t c = 0; c < n; ++c)
      gw_part[b * g.C + c0 + c] = static_cast<T>(gw[c]), gu_part[b * g.C + c0 + c] = static_cast<T>(gu[c]);
  });
}

int guarded(const std::exception_ptr& e) { return e ? 1 : 0; }

}  // namespace

// ------------------------------------------------------------------------------------ C API
// Returns 0 on success, 1 on failure (allocation). Forwards read the initial state from
// `state_in` and write the final one to `state`. V == 64 (the RWKV head size) runs a copy
// compiled for that size (column blocks, accumulators in registers; see Cols). Pointers: see the
// kernels above; `u`, `snaps` and `gu` may be null (no bonus / no snapshots / no bonus
// gradient), and point_backward's `gstate` (a final state off the loss: zero). The per-channel forwards update `state` in place; their backwards take the initial
// state and gstate and write gw, gu per batch entry ([B, C], summed by the caller).

#define RWKV_HF_API(T, SUFFIX)                                                                       \
  extern "C" int rwkv_hf_wkv6_forward_##SUFFIX(                                                      \
      int64_t B, int64_t Tn, int64_t H, int64_t K, int64_t V, int64_t ew_sb, int64_t ew_st,         \
      int64_t ew_sh, int reverse, const T* r, const T* k, const T* v, const T* ew, const T* u,      \
      const T* state_in, T* state, T* y, T* snaps, int threads) {                                   \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      const Geo g{B, Tn, H, K, V, ew_sb, ew_st, ew_sh, reverse};                                     \
      if (V == 64) wkv6_forward<T, 64>(g, r, k, v, ew, u, state_in, state, y, snaps, threads);       \
      else wkv6_forward<T, 0>(g, r, k, v, ew, u, state_in, state, y, snaps, threads);                \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }                                                                                                  \
  extern "C" int rwkv_hf_wkv6_backward_##SUFFIX(                                                     \
      int64_t B, int64_t Tn, int64_t H, int64_t K, int64_t V, int64_t ew_sb, int64_t ew_st,         \
      int64_t ew_sh, int reverse, const T* r, const T* k, const T* v, const T* ew, const T* u,      \
      const T* snaps, const T* gy, const T* gstate, T* gr, T* gk, T* gv, T* gw, T* gu, T* gs0,      \
      int threads) {                                                                                 \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      const Geo g{B, Tn, H, K, V, ew_sb, ew_st, ew_sh, reverse};                                     \
      if (V == 64 && kBlockedBackward<T>)                                                            \
        wkv6_backward<T, 64>(g, r, k, v, ew, u, snaps, gy, gstate, gr, gk, gv, gw, gu, gs0, threads);\
      else                                                                                           \
        wkv6_backward<T, 0>(g, r, k, v, ew, u, snaps, gy, gstate, gr, gk, gv, gw, gu, gs0, threads); \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }                                                                                                  \
  extern "C" int rwkv_hf_wkv7_forward_##SUFFIX(                                                      \
      int64_t B, int64_t Tn, int64_t H, int64_t K, int64_t V, int64_t ew_sb, int64_t ew_st,         \
      int64_t ew_sh, const T* r, const T* k, const T* v, const T* ew, const T* a, const T* bb,      \
      const T* state_in, T* state, T* y, T* snaps, int threads) {                                   \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      const Geo g{B, Tn, H, K, V, ew_sb, ew_st, ew_sh, 0};                                           \
      if (V == 64) wkv7_forward<T, 64>(g, r, k, v, ew, a, bb, state_in, state, y, snaps, threads);   \
      else wkv7_forward<T, 0>(g, r, k, v, ew, a, bb, state_in, state, y, snaps, threads);            \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }                                                                                                  \
  extern "C" int rwkv_hf_wkv7_backward_##SUFFIX(                                                     \
      int64_t B, int64_t Tn, int64_t H, int64_t K, int64_t V, int64_t ew_sb, int64_t ew_st,         \
      int64_t ew_sh, const T* r, const T* k, const T* v, const T* ew, const T* a, const T* bb,      \
      const T* snaps, const T* gy, const T* gstate, T* gr, T* gk, T* gv, T* gw, T* ga, T* gb,       \
      T* gs0, int threads) {                                                                         \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      const Geo g{B, Tn, H, K, V, ew_sb, ew_st, ew_sh, 0};                                           \
      if (V == 64 && kBlockedBackward<T>)                                                            \
        wkv7_backward<T, 64>(g, r, k, v, ew, a, bb, snaps, gy, gstate, gr, gk, gv, gw, ga, gb, gs0,  \
                             threads);                                                               \
      else                                                                                           \
        wkv7_backward<T, 0>(g, r, k, v, ew, a, bb, snaps, gy, gstate, gr, gk, gv, gw, ga, gb, gs0,   \
                            threads);                                                                \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }

#define RWKV_HF_API4(T, SUFFIX)                                                                      \
  extern "C" int rwkv_hf_wkv4_forward_##SUFFIX(int64_t B, int64_t Tn, int64_t C, const T* k,         \
                                               const T* v, const T* w, const T* u, T* state, T* y,  \
                                               int threads) {                                        \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      wkv4_forward<T>(make_geo4(B, Tn, C, threads), k, v, w, u, state, y, threads);                  \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }                                                                                                  \
  extern "C" int rwkv_hf_bi_wkv4_forward_##SUFFIX(int64_t B, int64_t Tn, int64_t C, const T* k,      \
                                                  const T* v, const T* w, const T* u, T* state,     \
                                                  T* y, int threads) {                               \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      bi_wkv4_forward<T>(make_geo4(B, Tn, C, threads), k, v, w, u, state, y, threads);               \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }

#define RWKV_HF_API4_BACKWARD(NAME, T, SUFFIX)                                                       \
  extern "C" int rwkv_hf_##NAME##_backward_##SUFFIX(                                                 \
      int64_t B, int64_t Tn, int64_t C, const T* k, const T* v, const T* w, const T* u,             \
      const T* state_in, const T* gy, const T* gstate, T* gk, T* gv, T* gw_part, T* gu_part,        \
      T* gs0, int threads) {                                                                         \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      NAME##_backward<T>(make_geo4(B, Tn, C, threads), k, v, w, u, state_in, gy, gstate, gk, gv,     \
                         gw_part, gu_part, gs0, threads);                                            \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }

#define RWKV_HF_API_POINT(T, SUFFIX)                                                                 \
  extern "C" int rwkv_hf_point_forward_##SUFFIX(int64_t B, int64_t Tn, int64_t H, int64_t K,         \
                                                const T* k, const T* v, const T* ew,                \
                                                const T* state_in, T* state, T* A, T* snaps,        \
                                                int threads) {                                      \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      point_forward<T>(PointGeo{Geo{B, Tn, H, K, K, 0, 0, 0, 0}}, k, v, ew, state_in, state, A,      \
                       snaps, threads);                                                              \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }                                                                                                  \
  extern "C" int rwkv_hf_point_backward_##SUFFIX(int64_t B, int64_t Tn, int64_t H, int64_t K,        \
                                                 const T* k, const T* v, const T* ew,               \
                                                 const T* snaps, const T* gA, const T* gstate,      \
                                                 T* gk, T* gv, T* gw, T* gs0, int threads) {        \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      point_backward<T>(PointGeo{Geo{B, Tn, H, K, K, 0, 0, 0, 0}}, k, v, ew, snaps, gA, gstate, gk,  \
                        gv, gw, gs0, threads);                                                       \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }

RWKV_HF_API_POINT(float, f32)
RWKV_HF_API_POINT(double, f64)

RWKV_HF_API4_BACKWARD(wkv4, float, f32)
RWKV_HF_API4_BACKWARD(wkv4, double, f64)
RWKV_HF_API4_BACKWARD(bi_wkv4, float, f32)
RWKV_HF_API4_BACKWARD(bi_wkv4, double, f64)
RWKV_HF_API4(float, f32)
RWKV_HF_API4(double, f64)
RWKV_HF_API(float, f32)
RWKV_HF_API(double, f64)

extern "C" int rwkv_hf_wkv_cpu_chunk() { return static_cast<int>(kChunk); }
extern "C" int rwkv_hf_wkv_cpu_whole_rows() { return kWholeRows ? 1 : 0; }
