// RWKV-4 WKV and the bidirectional WKV of Vision-RWKV / Restore-RWKV (per-channel ops).
//
// Per (batch, channel) a state is a pair of accumulators (num, den), kept log-scaled as
// (a, b, p): num = a e^p, den = b e^p; the empty state is (0, 0, -1e38). A token (k, v) adds
// e^k (v, 1) to a state decayed by e^w:
//     P_{t+1} = e^w P_t + e^{k_t} (v_t, 1)     left to right,  P_0 = state[0]
//     F_{t-1} = e^w F_t + e^{k_t} (v_t, 1)     right to left,  F_{T-1} = state[1] (bi_wkv4)
//     wkv4:     y_t = num / den of  P_t + e^{u+k_t} (v_t, 1)
//     bi_wkv4:  y_t = num / den of  P_t + F_t + e^{u+k_t} (v_t, 1)
// The final states are P_T and F_{-1}; their logscale p is the largest exponent that
// contributes, max(p_in + T w, max_t k_t + (T-1-t) w) (from the right: k_t + t w), as the
// reference loop's running max.
//
// Parallel over time. The decay is constant, so a chunk of tokens acts on a state as "decay by
// e^{len w}, then add the chunk's own sum". The scans run in chunks of L tokens:
//   1. wkv4_sums_kernel: every chunk's own sums from an empty state (both directions);
//   2. wkv4_combine_kernel: per (batch, channel, direction) a walk over the chunks gives the state
//      entering each chunk from its side (one chunk, L = T: no pass 1, the walk just copies);
//   3. wkv4_fwd_kernel: every chunk from its entering states, writing y (bi_wkv4: the F_t of the
//      chunk go through a float32 buffer first, right to left).
//
// Backward. y_t depends on the true accumulators only, with the same gradient gd_t for P_t and
// F_t: gd_t = (gy / den, -gy y / den) e^{-m} (num, den measured from e^m). The states'
// gradients run the opposite ways,
//     GP_t = e^w GP_{t+1} + gd_t   (right to left, from GP_T: the final left state's gradient)
//     GF_t = e^w GF_{t-1} + gd_t   (left to right, from GF_{-1}),
// and the step that adds token t to a state X gives, with G the gradient of its result:
//     gv_t += G.num e^{k_t},  gk_t += e^{k_t} (G.num v_t + G.den),  gw += e^w (G . X).
// The same three passes run them (wkv4_bwd_sums_kernel for the chunks' sums of gd,
// wkv4_combine_kernel, wkv4_bwd_kernel). Gradients are log-scaled like the states (signed
// mantissas); every exponent the products form is <= 0 by construction (a G's scale is at most
// minus the scale of any state it multiplies), so nothing overflows. A final state's triple
// (a, b, p) has the gradient (ga, gb, gp): as a gradient of the true accumulators that is
// (ga, gb) e^{-p}, and what is left of gp (gp - ga a - gb b) is the gradient of the max that
// gave p; wkv4_route_kernel adds it to the contribution attaining it (a token's k and w, or the
// entering state's p), found from each chunk's best token (a tie, which the reference loop
// splits, goes to one side).
//
// Precision: with decays of order 1/T (Vision-RWKV: w = -spatial_decay / T) a scan is a sum
// of up to T terms of very different sizes. Running sums and logscales are float64 in
// registers; rescaling a running sum takes a float64 exp (its roundings would compound along
// the scan), a term added to a larger sum a float32 exp (one rounding per term). States and
// buffers in memory are float32 triples whose a, b absorb the rounding of p (store_acc).
// gw and gu come back per (batch, chunk), summed over each chunk in float64.
#include "wkv_common.h"

namespace rwkv_hf {
namespace {

constexpr double kEmptyP = -1e38;
constexpr int kV4Threads = 128;

// A log-scaled pair (a e^p, b e^p).
struct Acc {
  double a, b, p;
};

__device__ __forceinline__ double ex32(double x) { return (double)expf((float)x); }

__device__ __forceinline__ Acc empty_acc() { return {0.0, 0.0, kEmptyP}; }

__device__ __forceinline__ Acc decay(Acc x, double d) { return {x.a, x.b, x.p + d}; }

// x + (ta, tb) e^tp, on the larger of the two scales.
__device__ __forceinline__ Acc add_term(Acc x, double ta, double tb, double tp) {
  if (x.p >= tp) {
    const double e = ex32(tp - x.p);
    return {x.a + e * ta, x.b + e * tb, x.p};
  }
  const double e = exp(x.p - tp);
  return {e * x.a + ta, e * x.b + tb, tp};
}

__device__ __forceinline__ Acc add_acc(Acc x, Acc y) { return add_term(x, y.a, y.b, y.p); }

__device__ __forceinline__ Acc step(Acc s, float k, float v, float w) {
  return add_term(decay(s, w), v, 1.0, k);
}

// [.., 3, C] float triples (stride C). p is rounded to float and a, b take the factor
// e^{p - float(p)} (a second-order series: |p - float(p)| < 1e-3 wherever p is a real scale,
// not the empty state's -1e38), so the triple stands for the same accumulators to float32
// rounding, however large |p|.
__device__ __forceinline__ void store_acc(float* q, int C, Acc s) {
  const float pf = (float)s.p;
  const double r = s.p - (double)pf;
  const double e = fabs(r) < 1e-3 ? 1.0 + r * (1.0 + 0.5 * r) : 1.0;
  q[0] = (float)(s.a * e);
  q[C] = (float)(s.b * e);
  q[2 * C] = pf;
}

__device__ __forceinline__ Acc load_acc(const float* q, int C) {
  return {(double)q[0], (double)q[C], (double)q[2 * C]};
}

// The output's numerator and denominator measured from e^m (m: the largest scale), and the
// current token's weight e^{c - m}, c = u + k.
struct Mix {
  double num, den, m, ec;
};

template <bool BI>
__device__ __forceinline__ Mix mix(Acc P, Acc Fs, double c, float v) {
  double m = fmax(P.p, c);
  if constexpr (BI) m = fmax(m, Fs.p);
  const double ep = ex32(P.p - m), ec = ex32(c - m);
  double num = ep * P.a + ec * v, den = ep * P.b + ec;
  if constexpr (BI) {
    const double ef = ex32(Fs.p - m);
    num += ef * Fs.a;
    den += ef * Fs.b;
  }
  return {num, den, m, ec};
}

// Back through y = num / den: returns gd (the gradient of the states' true accumulators) and
// adds the current token's part to gk, gv, gu.
__device__ __forceinline__ Acc mix_back(const Mix& x, float gy, float v, double& gk, double& gv,
                                        double& gu) {
  const float rden = 1.0f / (float)x.den;  // a per-token term: float32 is enough
  const double gn = gy * rden;
  const double gdn = -gn * ((float)x.num * rden);
  gv += gn * x.ec;
  const double gc = x.ec * (gn * v + gdn);
  gk += gc;
  gu += gc;
  return {gn, gdn, -x.m};
}

// Token gradients of the step X -> e^w X + e^k (v, 1), G the gradient of its result.
__device__ __forceinline__ void step_back(Acc G, Acc X, float k, float v, float w, double& gk,
                                          double& gv, double& gw) {
  const double ek = ex32(G.p + k);
  gv += G.a * ek;
  gk += ek * (G.a * v + G.b);
  gw += ex32(G.p + X.p + w) * (G.a * X.a + G.b * X.b);
}

// The gradient of a state's triple (a, b, p) from G, the gradient of its true accumulators
// (the smooth part of p's: a = num e^-p).
__device__ __forceinline__ void store_state_grad(float* q, int C, Acc G, Acc s) {
  const double e = exp(G.p + s.p);
  q[0] = (float)(G.a * e);
  q[C] = (float)(G.b * e);
  q[2 * C] = (float)((G.a * s.a + G.b * s.b) * e);
}

struct Chunk {
  int b, n, c, t0, t1;
};

// Thread -> (batch, chunk, channel), channels fastest (coalesced); false past the end.
template <typename F>
__device__ __forceinline__ bool chunk_of(const V4Args<F>& a, Chunk& ch) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (int64_t)a.B * a.NC * a.C) return false;
  ch.c = (int)(i % a.C);
  const int64_t bn = i / a.C;
  ch.n = (int)(bn % a.NC);
  ch.b = (int)(bn / a.NC);
  ch.t0 = ch.n * a.L;
  ch.t1 = min(a.T, ch.t0 + a.L);
  return true;
}

// Offsets: tokens [B, T, C]; per-chunk triples [B, NC, D, 3, C]; buffers [B, T, D, 3, C];
// states [B, D, 3, C]; best tokens [B, NC, D, C]; per-chunk partial sums [B, NC, C].
template <typename F>
__device__ __forceinline__ int64_t tok(const V4Args<F>& a, int b, int t, int c) {
  return ((int64_t)b * a.T + t) * a.C + c;
}
template <int D, typename F>
__device__ __forceinline__ int64_t per_chunk(const V4Args<F>& a, int b, int n, int d, int c) {
  return (((int64_t)b * a.NC + n) * D + d) * 3 * a.C + c;
}
template <int D, typename F>
__device__ __forceinline__ int64_t per_token(const V4Args<F>& a, int b, int t, int d, int c) {
  return (((int64_t)b * a.T + t) * D + d) * 3 * a.C + c;
}
template <int D, typename F>
__device__ __forceinline__ int64_t state_at(const V4Args<F>& a, int b, int d, int c) {
  return ((int64_t)b * D + d) * 3 * a.C + c;
}

// ---------------------------------------------------------------------------- forward

// Pass 1: each chunk's own sums from an empty state: left to right (measured at the chunk's
// end) and right to left (at its start; the decay is constant, so in any order).
template <bool BI, typename F>
__global__ void wkv4_sums_kernel(V4Args<F> a, float* __restrict__ loc) {
  constexpr int D = BI ? 2 : 1;
  Chunk ch;
  if (!chunk_of(a, ch)) return;
  const float w = a.w[ch.c];
  Acc l = empty_acc(), r = empty_acc();
  for (int t = ch.t0; t < ch.t1; ++t) {
    const int64_t o = tok(a, ch.b, t, ch.c);
    const float k = to_f(a.k[o]), v = to_f(a.v[o]);
    l = step(l, k, v, w);
    if constexpr (BI) r = add_term(r, v, 1.0, (double)k + (double)(t - ch.t0) * w);
  }
  store_acc(loc + per_chunk<D>(a, ch.b, ch.n, 0, ch.c), a.C, l);
  if constexpr (BI) store_acc(loc + per_chunk<D>(a, ch.b, ch.n, 1, ch.c), a.C, r);
}

// Pass 2, per (batch, direction, channel): what enters each chunk from its side. Forward:
// direction 0 walks left to right from init = s0[:, 0], direction 1 right to left from
// s0[:, 1]. Backward (grad): direction 0 is GP (right to left, from the final left state's
// gradient init[:, 0], as (ga, gb) e^{-p} with p = fin[:, 0]'s), direction 1 GF (left to
// right). loc: the chunks' own sums (unused with one chunk).
template <bool BI, typename F>
__global__ void wkv4_combine_kernel(V4Args<F> a, bool grad, const float* __restrict__ init,
                                    const float* __restrict__ fin, const float* __restrict__ loc,
                                    float* __restrict__ enter) {
  constexpr int D = BI ? 2 : 1;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (int64_t)a.B * D * a.C) return;
  const int c = (int)(i % a.C), d = (int)(i / a.C % D), b = (int)(i / ((int64_t)a.C * D));
  const double w = a.w[c];
  const int64_t s = state_at<D>(a, b, d, c);
  Acc S = load_acc(init + s, a.C);
  if (grad) S.p = -(double)fin[s + 2 * a.C];
  const bool ascending = (d == 0) != grad;
  auto chunk_at = [&](int j) { return ascending ? j : a.NC - 1 - j; };
  // The walk is a chain of dependent steps: each chunk's sums are loaded one step ahead, so
  // their latency overlaps the previous step.
  Acc next = a.NC > 1 ? load_acc(loc + per_chunk<D>(a, b, chunk_at(0), d, c), a.C) : Acc{};
  for (int j = 0; j < a.NC; ++j) {
    const int n = chunk_at(j);
    store_acc(enter + per_chunk<D>(a, b, n, d, c), a.C, S);
    if (j + 1 < a.NC) {
      const Acc x = next;
      if (j + 2 < a.NC) next = load_acc(loc + per_chunk<D>(a, b, chunk_at(j + 1), d, c), a.C);
      const int len = min(a.T, (n + 1) * a.L) - n * a.L;
      S = add_acc(decay(S, len * w), x);
    }
  }
}

// Pass 3: every chunk from its entering states; the first and last chunks write the final
// states. fbuf: [B, T, 3, C] scratch for F_t (bi_wkv4).
template <bool BI, typename F>
__global__ void wkv4_fwd_kernel(V4Args<F> a, const float* __restrict__ enter, F* __restrict__ y,
                                float* __restrict__ sT, float* __restrict__ fbuf) {
  constexpr int D = BI ? 2 : 1;
  Chunk ch;
  if (!chunk_of(a, ch)) return;
  const float w = a.w[ch.c];
  const double u = a.u[ch.c];
  if constexpr (BI) {
    Acc Fs = load_acc(enter + per_chunk<D>(a, ch.b, ch.n, 1, ch.c), a.C);
    for (int t = ch.t1 - 1; t >= ch.t0; --t) {
      store_acc(fbuf + per_token<1>(a, ch.b, t, 0, ch.c), a.C, Fs);
      const int64_t o = tok(a, ch.b, t, ch.c);
      Fs = step(Fs, to_f(a.k[o]), to_f(a.v[o]), w);
    }
    if (ch.n == 0) store_acc(sT + state_at<D>(a, ch.b, 1, ch.c), a.C, Fs);
  }
  Acc P = load_acc(enter + per_chunk<D>(a, ch.b, ch.n, 0, ch.c), a.C);
  for (int t = ch.t0; t < ch.t1; ++t) {
    const int64_t o = tok(a, ch.b, t, ch.c);
    const float k = to_f(a.k[o]), v = to_f(a.v[o]);
    Acc Fs{};
    if constexpr (BI) Fs = load_acc(fbuf + per_token<1>(a, ch.b, t, 0, ch.c), a.C);
    const Mix x = mix<BI>(P, Fs, u + k, v);
    y[o] = from_f<F>((float)x.num / (float)x.den);
    P = step(P, k, v, w);
  }
  if (ch.n == a.NC - 1) store_acc(sT + state_at<D>(a, ch.b, 0, ch.c), a.C, P);
}

// ---------------------------------------------------------------------------- backward

// One chunk's states into buf (P_t: slot 0; bi_wkv4: F_t, slot 1) from its entering states,
// and its best tokens for the final logscales (the largest k_t + (T-1-t) w; from the right
// k_t + t w). With SUMS, also the chunk's own sums of gd_t into loc: GP's measured at the
// chunk's start (slot 0), GF's at its end (slot 1).
template <bool BI, bool SUMS, typename F>
__device__ __forceinline__ void chunk_states(const V4Args<F>& a, const Chunk& ch,
                                             const float* __restrict__ enter,
                                             const F* __restrict__ gy, float* __restrict__ buf,
                                             int* __restrict__ best, float* __restrict__ loc) {
  constexpr int D = BI ? 2 : 1;
  const float w = a.w[ch.c];
  const double u = a.u[ch.c];
  if constexpr (BI) {
    Acc Fs = load_acc(enter + per_chunk<D>(a, ch.b, ch.n, 1, ch.c), a.C);
    double top = -INFINITY;
    int arg = ch.t0;
    for (int t = ch.t1 - 1; t >= ch.t0; --t) {
      store_acc(buf + per_token<D>(a, ch.b, t, 1, ch.c), a.C, Fs);
      const int64_t o = tok(a, ch.b, t, ch.c);
      const float k = to_f(a.k[o]);
      const double cand = (double)k + (double)t * w;
      if (cand > top) {
        top = cand;
        arg = t;
      }
      Fs = step(Fs, k, to_f(a.v[o]), w);
    }
    best[(((int64_t)ch.b * a.NC + ch.n) * D + 1) * a.C + ch.c] = arg;
  }
  Acc P = load_acc(enter + per_chunk<D>(a, ch.b, ch.n, 0, ch.c), a.C);
  Acc gp = empty_acc(), gf = empty_acc();
  double top = -INFINITY;
  int arg = ch.t0;
  for (int t = ch.t0; t < ch.t1; ++t) {
    const int64_t o = tok(a, ch.b, t, ch.c);
    const float k = to_f(a.k[o]), v = to_f(a.v[o]);
    const double cand = (double)k + (double)(a.T - 1 - t) * w;
    if (cand > top) {
      top = cand;
      arg = t;
    }
    if constexpr (SUMS) {
      Acc Fs{};
      if constexpr (BI) Fs = load_acc(buf + per_token<D>(a, ch.b, t, 1, ch.c), a.C);
      double unused_k = 0.0, unused_v = 0.0, unused_u = 0.0;  // pass 3 takes the token's part
      const Acc gd =
          mix_back(mix<BI>(P, Fs, u + k, v), to_f(gy[o]), v, unused_k, unused_v, unused_u);
      gp = add_term(gp, gd.a, gd.b, gd.p + (double)(t - ch.t0) * w);
      if constexpr (BI) gf = add_acc(decay(gf, w), gd);
    }
    store_acc(buf + per_token<D>(a, ch.b, t, 0, ch.c), a.C, P);
    P = step(P, k, v, w);
  }
  best[(((int64_t)ch.b * a.NC + ch.n) * D + 0) * a.C + ch.c] = arg;
  if constexpr (SUMS) {
    store_acc(loc + per_chunk<D>(a, ch.b, ch.n, 0, ch.c), a.C, gp);
    if constexpr (BI) store_acc(loc + per_chunk<D>(a, ch.b, ch.n, 1, ch.c), a.C, gf);
  }
}

// Pass 1 of the backward (several chunks): states into buf, best tokens, the sums of gd.
template <bool BI, typename F>
__global__ void wkv4_bwd_sums_kernel(V4Args<F> a, const float* __restrict__ enter,
                                     const F* __restrict__ gy, float* __restrict__ buf,
                                     int* __restrict__ best, float* __restrict__ loc) {
  Chunk ch;
  if (!chunk_of(a, ch)) return;
  chunk_states<BI, true>(a, ch, enter, gy, buf, best, loc);
}

// Pass 3 of the backward: every chunk from the gradients entering it (gin; its states from
// pass 1, or computed here with one chunk). bi_wkv4: GF left to right (the right-to-left
// steps' token gradients and the current terms; gd_t replaces F_t in buf), then for both ops
// GP right to left (the left-to-right steps'). The first / last chunk write the entering
// states' gradients (the smooth part; route_kernel adds the max's).
template <bool BI, typename F>
__global__ void wkv4_bwd_kernel(V4Args<F> a, const float* __restrict__ enter,
                                const float* __restrict__ gin, const F* __restrict__ gy,
                                float* __restrict__ buf, int* __restrict__ best,
                                float* __restrict__ gk, float* __restrict__ gv,
                                float* __restrict__ gw_part, float* __restrict__ gu_part,
                                float* __restrict__ gs0) {
  constexpr int D = BI ? 2 : 1;
  Chunk ch;
  if (!chunk_of(a, ch)) return;
  if (a.NC == 1) chunk_states<BI, false>(a, ch, enter, gy, buf, best, nullptr);
  const float w = a.w[ch.c];
  const double u = a.u[ch.c];
  double gw = 0.0, gu = 0.0;
  if constexpr (BI) {
    Acc G = load_acc(gin + per_chunk<D>(a, ch.b, ch.n, 1, ch.c), a.C);  // GF_{t-1}
    for (int t = ch.t0; t < ch.t1; ++t) {
      const int64_t o = tok(a, ch.b, t, ch.c);
      const float k = to_f(a.k[o]), v = to_f(a.v[o]);
      float* q = buf + per_token<D>(a, ch.b, t, 0, ch.c);
      const Acc P = load_acc(q, a.C), Fs = load_acc(q + 3 * a.C, a.C);
      double gkt = 0.0, gvt = 0.0;
      const Acc gd = mix_back(mix<true>(P, Fs, u + k, v), to_f(gy[o]), v, gkt, gvt, gu);
      step_back(G, Fs, k, v, w, gkt, gvt, gw);
      G = add_acc(decay(G, w), gd);
      store_acc(q + 3 * a.C, a.C, gd);
      gk[o] = (float)gkt;
      gv[o] = (float)gvt;
    }
    if (ch.n == a.NC - 1) {
      store_state_grad(gs0 + state_at<D>(a, ch.b, 1, ch.c), a.C, G,
                       load_acc(enter + per_chunk<D>(a, ch.b, ch.n, 1, ch.c), a.C));
    }
  }
  Acc G = load_acc(gin + per_chunk<D>(a, ch.b, ch.n, 0, ch.c), a.C);  // GP_{t+1}
  for (int t = ch.t1 - 1; t >= ch.t0; --t) {
    const int64_t o = tok(a, ch.b, t, ch.c);
    const float k = to_f(a.k[o]), v = to_f(a.v[o]);
    const float* q = buf + per_token<D>(a, ch.b, t, 0, ch.c);
    const Acc P = load_acc(q, a.C);
    double gkt = 0.0, gvt = 0.0;
    Acc gd;
    if constexpr (BI) {
      gd = load_acc(q + 3 * a.C, a.C);
    } else {
      gd = mix_back(mix<false>(P, Acc{}, u + k, v), to_f(gy[o]), v, gkt, gvt, gu);
    }
    step_back(G, P, k, v, w, gkt, gvt, gw);
    G = add_acc(decay(G, w), gd);
    if constexpr (BI) {
      gk[o] += (float)gkt;
      gv[o] += (float)gvt;
    } else {
      gk[o] = (float)gkt;
      gv[o] = (float)gvt;
    }
  }
  if (ch.n == 0) {
    store_state_grad(gs0 + state_at<D>(a, ch.b, 0, ch.c), a.C, G,
                     load_acc(enter + per_chunk<D>(a, ch.b, 0, 0, ch.c), a.C));
  }
  const int64_t part = ((int64_t)ch.b * a.NC + ch.n) * a.C + ch.c;
  gw_part[part] = (float)gw;
  gu_part[part] = (float)gu;
}

// Per (batch, channel), after pass 3: the gradient of the final states' logscales, net of what
// their a, b carry (gp - ga a - gb b), to the contribution attaining the max.
template <bool BI, typename F>
__global__ void wkv4_route_kernel(V4Args<F> a, const float* __restrict__ enter,
                                  const int* __restrict__ best, const float* __restrict__ sT,
                                  const float* __restrict__ gsT, float* __restrict__ gk,
                                  float* __restrict__ gw_part, float* __restrict__ gs0) {
  constexpr int D = BI ? 2 : 1;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (int64_t)a.B * a.C) return;
  const int c = (int)(i % a.C), b = (int)(i / a.C);
  const double w = a.w[c];
  const int C = a.C;
  double gw = 0.0;
  for (int d = 0; d < D; ++d) {
    const int64_t s = state_at<D>(a, b, d, c);
    const double g =
        (double)gsT[s + 2 * C] - (double)gsT[s] * sT[s] - (double)gsT[s + C] * sT[s + C];
    // The entering state: chunk 0's from the left, the last chunk's from the right.
    const double p0 = enter[per_chunk<D>(a, b, d == 0 ? 0 : a.NC - 1, d, c) + 2 * C];
    double top = p0 + (double)a.T * w;
    int arg = -1;
    for (int n = 0; n < a.NC; ++n) {
      const int t = best[(((int64_t)b * a.NC + n) * D + d) * C + c];
      const double cand =
          (double)to_f(a.k[tok(a, b, t, c)]) + (double)(d == 0 ? a.T - 1 - t : t) * w;
      if (cand > top) {
        top = cand;
        arg = t;
      }
    }
    if (arg < 0) {
      gs0[s + 2 * C] += (float)g;
      gw += (double)a.T * g;
    } else {
      gk[tok(a, b, arg, c)] += (float)g;
      gw += (double)(d == 0 ? a.T - 1 - arg : arg) * g;
    }
  }
  gw_part[(int64_t)b * a.NC * C + c] += (float)gw;
}

// ---------------------------------------------------------------------------- launchers

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kV4Threads - 1) / kV4Threads); }

}  // namespace

template <bool BI, typename F>
cudaError_t v4_forward_launch(const V4Fwd<F>& p, cudaStream_t stream) {
  constexpr int D = BI ? 2 : 1;
  const V4Args<F>& a = p.a;
  const unsigned grid = blocks_for((int64_t)a.B * a.NC * a.C);
  if (a.NC > 1) wkv4_sums_kernel<BI, F><<<grid, kV4Threads, 0, stream>>>(a, p.loc);
  wkv4_combine_kernel<BI, F><<<blocks_for((int64_t)a.B * D * a.C), kV4Threads, 0, stream>>>(
      a, false, p.s0, nullptr, a.NC > 1 ? p.loc : nullptr, p.enter);
  wkv4_fwd_kernel<BI, F><<<grid, kV4Threads, 0, stream>>>(a, p.enter, p.y, p.sT,
                                                          BI ? p.fbuf : nullptr);
  return cudaGetLastError();
}

template <bool BI, typename F>
cudaError_t v4_backward_launch(const V4Bwd<F>& p, cudaStream_t stream) {
  constexpr int D = BI ? 2 : 1;
  const V4Args<F>& a = p.a;
  const unsigned grid = blocks_for((int64_t)a.B * a.NC * a.C);
  if (a.NC > 1)
    wkv4_bwd_sums_kernel<BI, F><<<grid, kV4Threads, 0, stream>>>(a, p.enter, p.gy, p.buf,
                                                                 p.best, p.loc);
  wkv4_combine_kernel<BI, F><<<blocks_for((int64_t)a.B * D * a.C), kV4Threads, 0, stream>>>(
      a, true, p.gsT, p.sT, a.NC > 1 ? p.loc : nullptr, p.gin);
  wkv4_bwd_kernel<BI, F><<<grid, kV4Threads, 0, stream>>>(a, p.enter, p.gin, p.gy, p.buf, p.best,
                                                          p.gk, p.gv, p.gw, p.gu, p.gs0);
  wkv4_route_kernel<BI, F><<<blocks_for((int64_t)a.B * a.C), kV4Threads, 0, stream>>>(
      a, p.enter, p.best, p.sT, p.gsT, p.gk, p.gw, p.gs0);
  return cudaGetLastError();
}

#define RWKV_HF_WKV4(BI, F)                                                          \
  template cudaError_t v4_forward_launch<BI, F>(const V4Fwd<F>&, cudaStream_t);     \
  template cudaError_t v4_backward_launch<BI, F>(const V4Bwd<F>&, cudaStream_t);
RWKV_HF_WKV4(false, float)
RWKV_HF_WKV4(false, c10::BFloat16)
RWKV_HF_WKV4(false, c10::Half)
RWKV_HF_WKV4(true, float)
RWKV_HF_WKV4(true, c10::BFloat16)
RWKV_HF_WKV4(true, c10::Half)

}  // namespace rwkv_hf
