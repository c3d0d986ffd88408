// CPU kernels of the rwkv_hf WKV extension: the matrix-state recurrences (RWKV-5/6, their
// right-to-left half for the bidirectional v6 op, RWKV-7), forward and backward, and the
// per-channel ones (RWKV-4, bidirectional v4), forward; float32 and float64. Plain C++17 with a
// C ABI (no torch headers): rwkv_hf/ops/cpu_backend.py compiles this file with the system
// compiler in a few seconds and calls it through ctypes on tensors' data pointers. The autograd
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
// `omp simd reduction` dot products.
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
#include <vector>

#include "cpu_common.h"

namespace {

using rwkv_hf_cpu::parallel_blocks;
using rwkv_hf_cpu::xexp;

constexpr int64_t kChunk = 64;

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

// Whole rows of 64 values as GCC/clang vector-extension registers (16 floats or 8 doubles per
// 64-byte vector; the compiler splits them where vectors are narrower). The steps for V = 64 keep
// their accumulators in registers across the loop over i: written with plain arrays, the
// compiler keeps them in memory and each i waits on a store-to-load round trip.
template <typename T>
struct Row64 {
  typedef T vec __attribute__((vector_size(64), aligned(alignof(T))));
  static constexpr int kLanes = 64 / sizeof(T), kVecs = 64 / kLanes;
  vec x[kVecs];
  static Row64 load(const T* p) {
    Row64 r;
#pragma GCC unroll 8
    for (int n = 0; n < kVecs; ++n) r.x[n] = *reinterpret_cast<const vec*>(p + n * kLanes);
    return r;
  }
  static Row64 fill(T value) {
    Row64 r;
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
  static T hsum(vec a) { return fold<64>(&a); }
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

// ------------------------------------------------------------------------------------ wkv6

// One step of wkv6 for one head: y (if not null) from S_{t-1} = Sin, then S <- S_t (Sin may be S).
template <typename T, int VN>
inline void wkv6_step(const Geo& g, const T* Sin, T* S, const T* r, const T* k, const T* v,
                      const T* e, const T* u, T* __restrict__ y, T* __restrict__ acc_mem) {
  const int64_t K = g.K, V = VN ? VN : g.V;
  if constexpr (VN == 64) {
    using R = Row64<T>;
    using vec = typename R::vec;
    const R vr = R::load(v);
    T bonus = 0;
    if (u && y) {
#pragma omp simd reduction(+ : bonus)
      for (int64_t i = 0; i < K; ++i) bonus += r[i] * u[i] * k[i];
    }
    R acc = R::fill(0);
    for (int64_t i = 0; i < K; ++i) {
      const T ri = r[i], ki = k[i], ei = e[i];
#pragma GCC unroll 8
      for (int n = 0; n < R::kVecs; ++n) {
        const vec s = R::at(Sin + i * 64, n);
        acc.x[n] += ri * s;
        R::at(S + i * 64, n) = s * ei + ki * vr.x[n];
      }
    }
    if (y) {
#pragma GCC unroll 8
      for (int n = 0; n < R::kVecs; ++n) acc.x[n] += bonus * vr.x[n];
      acc.store(y);
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
  parallel_items<T>(g.B * g.H, threads, kChunk * KV, [&](int64_t bh, T* buf) {
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
          using R = Row64<T>;
          using vec = typename R::vec;
          const R gyv = R::load(gyt), vv = R::load(vt);
          R dvv = R::fill(0);
          for (int64_t i = 0; i < K; ++i) {
            T* Gi = G + i * 64;
            const T* Si = Sp + i * 64;
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
            const T ui = uh ? uh[i] : T(0);
            gr[o + i] = R::hsum(sg) + ui * ki * vg;
            gk[o + i] = R::hsum(gvv) + ri * ui * vg;
            gw[o + i] = ei * R::hsum(gs);
            if (du) du[i] += ri * ki * vg;
          }
#pragma GCC unroll 8
          for (int n = 0; n < R::kVecs; ++n) R::at(dv, n) = dvv.x[n] + ruk * gyv.x[n];
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
    using R = Row64<T>;
    using vec = typename R::vec;
    const R vr = R::load(v);
    R sav = R::fill(0), acc = R::fill(0);
    for (int64_t i = 0; i < K; ++i) {
      const R si = R::load(Sin + i * 64);
      const T ai = a[i];
#pragma GCC unroll 8
      for (int n = 0; n < R::kVecs; ++n) sav.x[n] += ai * si.x[n];
    }
    for (int64_t i = 0; i < K; ++i) {
      const T ei = e[i], bi = bb[i], ki = k[i], ri = r[i];
#pragma GCC unroll 8
      for (int n = 0; n < R::kVecs; ++n) {
        const vec s = R::at(Sin + i * 64, n) * ei + bi * sav.x[n] + ki * vr.x[n];
        R::at(S + i * 64, n) = s;
        acc.x[n] += ri * s;
      }
    }
    sav.store(sa);
    if (y) acc.store(y);
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
  // sa_t rows, and dsa.
  const size_t scratch = (kChunk + 1) * KV + kChunk * V + V;
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
          using R = Row64<T>;
          using vec = typename R::vec;
          const R gyv = R::load(gyt), vv = R::load(vt), sav = R::load(sa);
          R dvv = R::fill(0), dsav = R::fill(0);
          for (int64_t i = 0; i < K; ++i) {
            T* Gi = G + i * 64;
            const T ri = rt[i], ki = kt[i], bi = bt[i];
            vec sg{}, gvv{}, gsa{}, gs{};
#pragma GCC unroll 8
            for (int n = 0; n < R::kVecs; ++n) {
              const vec Gv = R::at(Gi, n) + ri * gyv.x[n];
              R::at(Gi, n) = Gv;
              sg += R::at(Sn + i * 64, n) * gyv.x[n];
              gvv += Gv * vv.x[n];
              gsa += Gv * sav.x[n];
              gs += Gv * R::at(Sp + i * 64, n);
              dvv.x[n] += ki * Gv;
              dsav.x[n] += bi * Gv;
            }
            gr[o + i] = R::hsum(sg);
            gk[o + i] = R::hsum(gvv);
            gb[o + i] = R::hsum(gsa);
            gw[o + i] = et[i] * R::hsum(gs);
          }
          dvv.store(dv);
          for (int64_t i = 0; i < K; ++i) {
            T* Gi = G + i * 64;
            const T ei = et[i], ai = at[i];
            vec da{};
#pragma GCC unroll 8
            for (int n = 0; n < R::kVecs; ++n) {
              da += R::at(Sp + i * 64, n) * dsav.x[n];
              R::at(Gi, n) = ei * R::at(Gi, n) + ai * dsav.x[n];
            }
            ga[o + i] = R::hsum(da);
          }
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

// ------------------------------------------------------------------------------------ wkv4
// Per channel, the running (num, den, logscale) triple of the reference (BlinkDL's aa, bb, pp):
//   y_t  = (e^{pp-p} aa + e^{u+k_t-p} v_t) / (e^{pp-p} bb + e^{u+k_t-p}),   p = max(pp, u + k_t)
//   next: q = max(pp + w, k_t); aa = e^{pp+w-q} aa + e^{k_t-q} v_t; bb likewise; pp = q
// bi_wkv4 runs that scan left to right (keeping the state before each token) and right to left,
// and combines both states with the bonus term under one max. Forward only: the autograd path
// of these ops is the torch backend's chunked form. Vectorised over channels; float32 uses
// xexp (cpu_common.h: std::exp does not vectorise without -ffast-math).


constexpr int64_t kChannelBlock = 128;  // channels per work item

struct Geo4 {
  int64_t B, T, C;
  int64_t blocks() const { return (C + kChannelBlock - 1) / kChannelBlock; }
};

// One token of the causal scan for channels [0, n) of a block: y (WithY) then the update.
template <bool WithY, typename T>
inline void wkv4_token(int64_t n, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ w,
                       const T* __restrict__ u, T* __restrict__ aa, T* __restrict__ bb, T* __restrict__ pp,
                       T* __restrict__ y) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const T kc = k[c], vc = v[c], a = aa[c], b = bb[c], q0 = pp[c];
    if constexpr (WithY) {
      const T ww = u[c] + kc, p = std::max(q0, ww);
      const T e1 = xexp(q0 - p), e2 = xexp(ww - p);
      y[c] = (e1 * a + e2 * vc) / (e1 * b + e2);
    }
    const T ww = w[c] + q0, p = std::max(ww, kc);
    const T e1 = xexp(ww - p), e2 = xexp(kc - p);
    aa[c] = e1 * a + e2 * vc;
    bb[c] = e1 * b + e2;
    pp[c] = p;
  }
}

template <typename T>
void wkv4_forward(const Geo4 g, const T* k, const T* v, const T* w, const T* u, T* state, T* y, int threads) {
  const int64_t nb = g.blocks();
  parallel_items<T>(g.B * nb, threads, 0, [&](int64_t item, T*) {
    const int64_t b = item / nb, c0 = (item % nb) * kChannelBlock, n = std::min(kChannelBlock, g.C - c0);
    T* s = state + b * 3 * g.C + c0;  // (num, den, logscale) rows of this batch entry
    for (int64_t t = 0; t < g.T; ++t) {
      const int64_t o = (b * g.T + t) * g.C + c0;
      if (t + kPrefetch < g.T) {
        const int64_t op = o + kPrefetch * g.C;
        prefetch(k + op, n), prefetch(v + op, n), prefetch(y + op, n);
      }
      wkv4_token<true>(n, k + o, v + o, w + c0, u + c0, s, s + g.C, s + 2 * g.C, y + o);
    }
  });
}

template <typename T>
void bi_wkv4_forward(const Geo4 g, const T* k, const T* v, const T* w, const T* u, T* state, T* y,
                     int threads) {
  const int64_t nb = g.blocks();
  // Scratch: the left-to-right state before every token of the block (3 rows per token).
  parallel_items<T>(g.B * nb, threads, 3 * g.T * kChannelBlock, [&](int64_t item, T* left) {
    const int64_t b = item / nb, c0 = (item % nb) * kChannelBlock, n = std::min(kChannelBlock, g.C - c0);
    T* sl = state + (b * 2 + 0) * 3 * g.C + c0;  // enters from the left, leaves after the last token
    T* sr = state + (b * 2 + 1) * 3 * g.C + c0;  // enters from the right, leaves before the first
    for (int64_t t = 0; t < g.T; ++t) {
      const int64_t o = (b * g.T + t) * g.C + c0;
      if (t + kPrefetch < g.T) prefetch(k + o + kPrefetch * g.C, n), prefetch(v + o + kPrefetch * g.C, n);
      T* L = left + 3 * t * kChannelBlock;
      std::memcpy(L, sl, n * sizeof(T));
      std::memcpy(L + kChannelBlock, sl + g.C, n * sizeof(T));
      std::memcpy(L + 2 * kChannelBlock, sl + 2 * g.C, n * sizeof(T));
      wkv4_token<false>(n, k + o, v + o, w + c0, u + c0, sl, sl + g.C, sl + 2 * g.C, (T*)nullptr);
    }
    for (int64_t t = g.T - 1; t >= 0; --t) {
      const int64_t o = (b * g.T + t) * g.C + c0;
      if (t - kPrefetch >= 0) {
        const int64_t op = o - kPrefetch * g.C;
        prefetch(k + op, n), prefetch(v + op, n), prefetch(y + op, n);
      }
      const T *kt = k + o, *vt = v + o, *uc = u + c0;
      const T *la = left + 3 * t * kChannelBlock, *lb = la + kChannelBlock, *lp = lb + kChannelBlock;
      T *ra = sr, *rb = sr + g.C, *rp = sr + 2 * g.C, *yt = y + o;
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        const T cur = uc[c] + kt[c], lpc = lp[c], rpc = rp[c];  // values: std::max of loads is a branch
        const T m = std::max(std::max(lpc, rpc), cur);
        const T el = xexp(lpc - m), er = xexp(rpc - m), ec = xexp(cur - m);
        yt[c] = (el * la[c] + er * ra[c] + ec * vt[c]) / (el * lb[c] + er * rb[c] + ec);
      }
      wkv4_token<false>(n, kt, vt, w + c0, uc, ra, rb, rp, (T*)nullptr);
    }
  });
}

int guarded(const std::exception_ptr& e) { return e ? 1 : 0; }

}  // namespace

// ------------------------------------------------------------------------------------ C API
// Returns 0 on success, 1 on failure (allocation). Forwards read the initial state from
// `state_in` and write the final one to `state`. V == 64 (the RWKV head size) runs a copy
// compiled for that size (unrolled, accumulators in registers). Pointers: see the kernels above;
// `u`, `snaps` and `gu` may be null (no bonus / no snapshots / no bonus gradient).

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
      if (V == 64)                                                                                   \
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
      if (V == 64)                                                                                   \
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
      wkv4_forward<T>(Geo4{B, Tn, C}, k, v, w, u, state, y, threads);                                \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }                                                                                                  \
  extern "C" int rwkv_hf_bi_wkv4_forward_##SUFFIX(int64_t B, int64_t Tn, int64_t C, const T* k,      \
                                                  const T* v, const T* w, const T* u, T* state,     \
                                                  T* y, int threads) {                               \
    std::exception_ptr err;                                                                          \
    try {                                                                                            \
      bi_wkv4_forward<T>(Geo4{B, Tn, C}, k, v, w, u, state, y, threads);                             \
    } catch (...) { err = std::current_exception(); }                                                \
    return guarded(err);                                                                             \
  }

RWKV_HF_API4(float, f32)
RWKV_HF_API4(double, f64)
RWKV_HF_API(float, f32)
RWKV_HF_API(double, f64)

extern "C" int rwkv_hf_wkv_cpu_chunk() { return static_cast<int>(kChunk); }
