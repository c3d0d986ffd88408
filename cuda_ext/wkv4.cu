// RWKV-4 WKV and the bidirectional WKV of Vision-RWKV / Restore-RWKV (per-channel ops).
//
// One thread per (batch, channel), sequential over T, log-max stabilised exactly as the
// reference loop (rwkv_hf/ops/reference.py): a state (a, b, p) stands for the accumulators
// (a e^p, b e^p); the empty state is (0, 0, -1e38).
//
// Forward step (add token (k, v) to a state decayed by e^w):
//     x1 = w + p, x2 = k, p' = max(x1, x2), e1 = exp(x1 - p'), e2 = exp(x2 - p'),
//     a' = e1 a + e2 v,  b' = e1 b + e2.
// Output of wkv4 at token t (state s before the token):
//     x1 = p, x2 = u + k, q = max(x1, x2), e1 = exp(x1 - q), e2 = exp(x2 - q),
//     y = (e1 a + e2 v) / (e1 b + e2).
// bi_wkv4 combines the past state P_t, the future state F_t (the right-to-left scan seen by
// token t) and the current term c = u + k under m = max(max(P.p, F.p), c).
//
// Backward: the exact chain rule of these piecewise-smooth formulas, the one autograd takes
// through the reference loop; a max routes its gradient to the larger argument (half to each
// on a tie, as torch.maximum). For one step with incoming (ga', gb', gp'):
//     ge1 = ga' a + gb' b,  ge2 = ga' v + gb',
//     ga = ga' e1,  gb = gb' e1,  gv += ga' e2,
//     gx1 = ge1 e1, gx2 = ge2 e2, and the max adds (gp' - gx1 - gx2) to the winning x,
//     gp = gx1, gw += gx1, gk += gx2.
// For an output y = num / den: gnum = gy / den, gden = -gnum y, then the same pattern
// (ge1 = gnum a + gden b, ...; the max gets -(gx1 + gx2), which is zero up to rounding).
//
// Precision: with decays of order 1/T (Vision-RWKV: w = -spatial_decay / T) a scan is a sum
// of up to T terms of very different sizes; float32 running sums lose the small terms (about
// 5e-5 relative at T = 65536) and a float32 logscale drifts by one rounding per token. So the
// running states (a, b, p), the running gradients and the per-token arithmetic are float64 in
// registers; the per-token weights exp(.) are float32 (exp of the state's rescaling factor is
// float64); states, checkpoints and buffers in memory are float32 (checkpoints keep p as two
// floats so that a recomputed chunk starts from exactly the forward's logscale).
//
// wkv4 backward: the forward stores (a, b, p) every kV4Chunk tokens; the reverse sweep
// recomputes one chunk of states into registers and walks it backwards.
// bi_wkv4 backward, three passes per thread:
//   1. right-to-left: recompute F_t into a float32 buffer [B, T, 3, C];
//   2. left-to-right: run P_t (checkpointing it every kV4Chunk tokens), back-propagate the
//      combine at each token, and run the backward of the right-to-left scan, whose
//      gradient flows from F_0 towards F_{T-1}, i.e. left to right as well; the direct
//      gradient of P_t overwrites F_t in the buffer;
//   3. right-to-left in chunks: recompute P_t from the checkpoints and back-propagate the
//      left-to-right scan, adding the direct gradients from pass 2.
// gw and gu are summed over time in float64 per (batch, channel); the caller sums over batch.
#include "wkv_common.h"

namespace rwkv_hf {
namespace {

struct V4State {
  double a, b, p;
};

struct V4Grad {
  double a, b, p;
};

__device__ __forceinline__ double ex32(double x) { return (double)expf((float)x); }

__device__ __forceinline__ V4State v4_step(V4State s, float k, float v, float w) {
  const double x1 = (double)w + s.p;
  const double p = fmax(x1, (double)k);
  const double e1 = exp(x1 - p), e2 = ex32((double)k - p);
  return {e1 * s.a + e2 * v, e1 * s.b + e2, p};
}

// Share the gradient g of max(x1, x2) between x1 and x2 like torch.maximum.
__device__ __forceinline__ void route_max(double x1, double x2, double g, double& g1, double& g2) {
  if (x1 > x2) {
    g1 += g;
  } else if (x1 < x2) {
    g2 += g;
  } else {
    g1 += 0.5 * g;
    g2 += 0.5 * g;
  }
}

// Checkpoints [.., 4, C]: a, b and p split into two floats (p_hi + p_lo).
__device__ __forceinline__ void store_ckpt(float* cp, int C, V4State s) {
  const float hi = (float)s.p;
  cp[0] = (float)s.a;
  cp[C] = (float)s.b;
  cp[2 * C] = hi;
  cp[3 * C] = (float)(s.p - (double)hi);
}

__device__ __forceinline__ V4State load_ckpt(const float* cp, int C) {
  return {(double)cp[0], (double)cp[C], (double)cp[2 * C] + (double)cp[3 * C]};
}

__device__ __forceinline__ void store3(float* q, int C, V4State s) {
  q[0] = (float)s.a;
  q[C] = (float)s.b;
  q[2 * C] = (float)s.p;
}

__device__ __forceinline__ V4State load3(const float* q, int C) {
  return {(double)q[0], (double)q[C], (double)q[2 * C]};
}

// Back-propagate through s' = v4_step(s, k, v, w): returns the gradient of s, adds to gk, gv, gw.
__device__ __forceinline__ V4Grad v4_step_back(V4Grad go, V4State s, float k, float v, float w,
                                               double& gk, double& gv, double& gw) {
  const double x1 = (double)w + s.p;
  const double p = fmax(x1, (double)k);
  const double e1 = exp(x1 - p), e2 = ex32((double)k - p);
  const double ge1 = go.a * s.a + go.b * s.b;
  const double ge2 = go.a * v + go.b;
  gv += go.a * e2;
  double gx1 = ge1 * e1, gx2 = ge2 * e2;
  route_max(x1, (double)k, go.p - gx1 - gx2, gx1, gx2);
  gw += gx1;
  gk += gx2;
  return {go.a * e1, go.b * e1, gx1};
}

__device__ __forceinline__ float v4_out(V4State s, float k, float v, float u) {
  const double x2 = (double)u + k;
  const double q = fmax(s.p, x2);
  const double e1 = ex32(s.p - q), e2 = ex32(x2 - q);
  return (float)((e1 * s.a + e2 * v) / (e1 * s.b + e2));
}

// Adds the gradient of y = v4_out(s, k, v, u) (incoming gy) to gs, gk, gv, gu.
__device__ __forceinline__ void v4_out_back(float gy, V4State s, float k, float v, float u,
                                            V4Grad& gs, double& gk, double& gv, double& gu) {
  const double x2 = (double)u + k;
  const double q = fmax(s.p, x2);
  const double e1 = ex32(s.p - q), e2 = ex32(x2 - q);
  const double num = e1 * s.a + e2 * v, den = e1 * s.b + e2;
  const double gnum = gy / den;
  const double gden = -gnum * (num / den);
  const double ge1 = gnum * s.a + gden * s.b;
  const double ge2 = gnum * v + gden;
  gs.a += gnum * e1;
  gs.b += gden * e1;
  gv += gnum * e2;
  double gx1 = ge1 * e1, gx2 = ge2 * e2;
  route_max(s.p, x2, -(gx1 + gx2), gx1, gx2);
  gs.p += gx1;
  gu += gx2;
  gk += gx2;
}

__device__ __forceinline__ float v4_bi_out(V4State P, V4State Fs, float k, float v, float u) {
  const double c = (double)u + k;
  const double m = fmax(fmax(P.p, Fs.p), c);
  const double ep = ex32(P.p - m), ef = ex32(Fs.p - m), ec = ex32(c - m);
  return (float)((ep * P.a + ef * Fs.a + ec * v) / (ep * P.b + ef * Fs.b + ec));
}

__device__ __forceinline__ void v4_bi_out_back(float gy, V4State P, V4State Fs, float k, float v,
                                               float u, V4Grad& gP, V4Grad& gF, double& gk,
                                               double& gv, double& gu) {
  const double c = (double)u + k;
  const double m1 = fmax(P.p, Fs.p);
  const double m = fmax(m1, c);
  const double ep = ex32(P.p - m), ef = ex32(Fs.p - m), ec = ex32(c - m);
  const double num = ep * P.a + ef * Fs.a + ec * v;
  const double den = ep * P.b + ef * Fs.b + ec;
  const double gnum = gy / den;
  const double gden = -gnum * (num / den);
  gP.a += gnum * ep;
  gP.b += gden * ep;
  gF.a += gnum * ef;
  gF.b += gden * ef;
  gv += gnum * ec;
  double gxp = (gnum * P.a + gden * P.b) * ep;
  double gxf = (gnum * Fs.a + gden * Fs.b) * ef;
  double gxc = (gnum * v + gden) * ec;
  double gm1 = 0.0;
  route_max(m1, c, -(gxp + gxf + gxc), gm1, gxc);
  route_max(P.p, Fs.p, gm1, gxp, gxf);
  gP.p += gxp;
  gF.p += gxf;
  gu += gxc;
  gk += gxc;
}

// ---------------------------------------------------------------------------- wkv4

template <typename F>
__global__ void wkv4_fwd_kernel(int B, int T, int C, const F* __restrict__ k,
                                const F* __restrict__ v, const float* __restrict__ w,
                                const float* __restrict__ u, const float* __restrict__ s0,
                                F* __restrict__ y, float* __restrict__ sT,
                                float* __restrict__ ckpt /* [B, NC, 4, C] or null */) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int b = idx / C, c = idx % C;
  const int NC = (T + kV4Chunk - 1) / kV4Chunk;
  const float ww = w[c], uu = u[c];
  V4State s = load3(s0 + (int64_t)b * 3 * C + c, C);
  const int64_t base = (int64_t)b * T * C + c;
  for (int t = 0; t < T; ++t) {
    if (ckpt != nullptr && t % kV4Chunk == 0) {
      store_ckpt(ckpt + ((int64_t)b * NC + t / kV4Chunk) * 4 * C + c, C, s);
    }
    const int64_t o = base + (int64_t)t * C;
    const float kt = to_f(k[o]), vt = to_f(v[o]);
    y[o] = from_f<F>(v4_out(s, kt, vt, uu));
    s = v4_step(s, kt, vt, ww);
  }
  store3(sT + (int64_t)b * 3 * C + c, C, s);
}

template <typename F>
__global__ void wkv4_bwd_kernel(int B, int T, int C, const F* __restrict__ k,
                                const F* __restrict__ v, const float* __restrict__ w,
                                const float* __restrict__ u, const float* __restrict__ ckpt,
                                const F* __restrict__ gy, const float* __restrict__ gsT,
                                float* __restrict__ gk, float* __restrict__ gv,
                                float* __restrict__ gw_part, float* __restrict__ gu_part,
                                float* __restrict__ gs0) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int b = idx / C, c = idx % C;
  const int NC = (T + kV4Chunk - 1) / kV4Chunk;
  const float ww = w[c], uu = u[c];
  const V4State gs_in = load3(gsT + (int64_t)b * 3 * C + c, C);
  V4Grad g{gs_in.a, gs_in.b, gs_in.p};
  double gw_acc = 0.0, gu_acc = 0.0;
  const int64_t base = (int64_t)b * T * C + c;
  for (int n = NC - 1; n >= 0; --n) {
    const int t0 = n * kV4Chunk;
    const int cnt = min(kV4Chunk, T - t0);
    V4State s = load_ckpt(ckpt + ((int64_t)b * NC + n) * 4 * C + c, C);
    float sa[kV4Chunk], sb[kV4Chunk], kk[kV4Chunk], vv[kV4Chunk];
    double sp[kV4Chunk];
#pragma unroll
    for (int i = 0; i < kV4Chunk; ++i) {
      if (i < cnt) {
        const int64_t o = base + (int64_t)(t0 + i) * C;
        kk[i] = to_f(k[o]);
        vv[i] = to_f(v[o]);
        sa[i] = (float)s.a;
        sb[i] = (float)s.b;
        sp[i] = s.p;
        s = v4_step(s, kk[i], vv[i], ww);
      }
    }
#pragma unroll
    for (int i = kV4Chunk - 1; i >= 0; --i) {
      if (i < cnt) {
        const int64_t o = base + (int64_t)(t0 + i) * C;
        const V4State si{(double)sa[i], (double)sb[i], sp[i]};
        double gkt = 0.0, gvt = 0.0;
        V4Grad gprev = v4_step_back(g, si, kk[i], vv[i], ww, gkt, gvt, gw_acc);
        v4_out_back(to_f(gy[o]), si, kk[i], vv[i], uu, gprev, gkt, gvt, gu_acc);
        gk[o] = (float)gkt;
        gv[o] = (float)gvt;
        g = gprev;
      }
    }
  }
  store3(gs0 + (int64_t)b * 3 * C + c, C, V4State{g.a, g.b, g.p});
  gw_part[idx] = (float)gw_acc;
  gu_part[idx] = (float)gu_acc;
}

// ---------------------------------------------------------------------------- bi_wkv4

template <typename F>
__global__ void bi_wkv4_fwd_kernel(int B, int T, int C, const F* __restrict__ k,
                                   const F* __restrict__ v, const float* __restrict__ w,
                                   const float* __restrict__ u, const float* __restrict__ s0,
                                   F* __restrict__ y, float* __restrict__ sT,
                                   float* __restrict__ fbuf /* [B, T, 3, C] scratch */) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int b = idx / C, c = idx % C;
  const float ww = w[c], uu = u[c];
  const int64_t base = (int64_t)b * T * C + c;
  const int64_t fbase = (int64_t)b * T * 3 * C + c;
  // s0, sT: [B, 2, 3, C]; [:, 0] enters from the left, [:, 1] from the right.
  const float* sl = s0 + (int64_t)b * 6 * C + c;
  V4State Fs = load3(sl + 3 * C, C);
  for (int t = T - 1; t >= 0; --t) {
    store3(fbuf + fbase + (int64_t)t * 3 * C, C, Fs);
    const int64_t o = base + (int64_t)t * C;
    Fs = v4_step(Fs, to_f(k[o]), to_f(v[o]), ww);
  }
  float* ol = sT + (int64_t)b * 6 * C + c;
  store3(ol + 3 * C, C, Fs);
  V4State P = load3(sl, C);
  for (int t = 0; t < T; ++t) {
    const V4State Ft = load3(fbuf + fbase + (int64_t)t * 3 * C, C);
    const int64_t o = base + (int64_t)t * C;
    const float kt = to_f(k[o]), vt = to_f(v[o]);
    y[o] = from_f<F>(v4_bi_out(P, Ft, kt, vt, uu));
    P = v4_step(P, kt, vt, ww);
  }
  store3(ol, C, P);
}

template <typename F>
__global__ void bi_wkv4_bwd_kernel(int B, int T, int C, const F* __restrict__ k,
                                   const F* __restrict__ v, const float* __restrict__ w,
                                   const float* __restrict__ u, const float* __restrict__ s0,
                                   const F* __restrict__ gy, const float* __restrict__ gsT,
                                   float* __restrict__ gk, float* __restrict__ gv,
                                   float* __restrict__ gw_part, float* __restrict__ gu_part,
                                   float* __restrict__ gs0,
                                   float* __restrict__ fbuf /* [B, T, 3, C] scratch */,
                                   float* __restrict__ pck /* [B, NC, 4, C] scratch */) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int b = idx / C, c = idx % C;
  const int NC = (T + kV4Chunk - 1) / kV4Chunk;
  const float ww = w[c], uu = u[c];
  const int64_t base = (int64_t)b * T * C + c;
  const int64_t fbase = (int64_t)b * T * 3 * C + c;
  const float* sl = s0 + (int64_t)b * 6 * C + c;
  double gw_acc = 0.0, gu_acc = 0.0;

  // Pass 1: the states of the right-to-left scan seen by each token.
  V4State Fs = load3(sl + 3 * C, C);
  for (int t = T - 1; t >= 0; --t) {
    store3(fbuf + fbase + (int64_t)t * 3 * C, C, Fs);
    const int64_t o = base + (int64_t)t * C;
    Fs = v4_step(Fs, to_f(k[o]), to_f(v[o]), ww);
  }

  // Pass 2: left to right. gFo is the gradient of the output of the right-to-left step that
  // consumes F_t (F_{t-1}, or the final right state for t = 0).
  const float* gl = gsT + (int64_t)b * 6 * C + c;
  const V4State gr_in = load3(gl + 3 * C, C);
  V4Grad gFo{gr_in.a, gr_in.b, gr_in.p};
  V4State P = load3(sl, C);
  for (int t = 0; t < T; ++t) {
    if (t % kV4Chunk == 0) {
      store_ckpt(pck + ((int64_t)b * NC + t / kV4Chunk) * 4 * C + c, C, P);
    }
    float* fp = fbuf + fbase + (int64_t)t * 3 * C;
    const V4State Ft = load3(fp, C);
    const int64_t o = base + (int64_t)t * C;
    const float kt = to_f(k[o]), vt = to_f(v[o]);
    V4Grad gP{0.0, 0.0, 0.0}, gF{0.0, 0.0, 0.0};
    double gkt = 0.0, gvt = 0.0;
    v4_bi_out_back(to_f(gy[o]), P, Ft, kt, vt, uu, gP, gF, gkt, gvt, gu_acc);
    const V4Grad gstep = v4_step_back(gFo, Ft, kt, vt, ww, gkt, gvt, gw_acc);
    gFo = {gstep.a + gF.a, gstep.b + gF.b, gstep.p + gF.p};
    store3(fp, C, V4State{gP.a, gP.b, gP.p});
    gk[o] = (float)gkt;
    gv[o] = (float)gvt;
    P = v4_step(P, kt, vt, ww);
  }
  float* gsl = gs0 + (int64_t)b * 6 * C + c;
  store3(gsl + 3 * C, C, V4State{gFo.a, gFo.b, gFo.p});

  // Pass 3: the left-to-right scan backwards, chunk by chunk from the checkpoints.
  const V4State gl_in = load3(gl, C);
  V4Grad g{gl_in.a, gl_in.b, gl_in.p};
  for (int n = NC - 1; n >= 0; --n) {
    const int t0 = n * kV4Chunk;
    const int cnt = min(kV4Chunk, T - t0);
    V4State s = load_ckpt(pck + ((int64_t)b * NC + n) * 4 * C + c, C);
    float sa[kV4Chunk], sb[kV4Chunk], kk[kV4Chunk], vv[kV4Chunk];
    double sp[kV4Chunk];
#pragma unroll
    for (int i = 0; i < kV4Chunk; ++i) {
      if (i < cnt) {
        const int64_t o = base + (int64_t)(t0 + i) * C;
        kk[i] = to_f(k[o]);
        vv[i] = to_f(v[o]);
        sa[i] = (float)s.a;
        sb[i] = (float)s.b;
        sp[i] = s.p;
        s = v4_step(s, kk[i], vv[i], ww);
      }
    }
#pragma unroll
    for (int i = kV4Chunk - 1; i >= 0; --i) {
      if (i < cnt) {
        const int t = t0 + i;
        const int64_t o = base + (int64_t)t * C;
        double gkt = 0.0, gvt = 0.0;
        const V4Grad gs = v4_step_back(g, V4State{(double)sa[i], (double)sb[i], sp[i]}, kk[i],
                                       vv[i], ww, gkt, gvt, gw_acc);
        const V4State d = load3(fbuf + fbase + (int64_t)t * 3 * C, C);
        g = {gs.a + d.a, gs.b + d.b, gs.p + d.p};
        gk[o] += (float)gkt;
        gv[o] += (float)gvt;
      }
    }
  }
  store3(gsl, C, V4State{g.a, g.b, g.p});
  gw_part[idx] = (float)gw_acc;
  gu_part[idx] = (float)gu_acc;
}

constexpr int kV4Threads = 128;

inline dim3 v4_grid(int B, int C) { return dim3((unsigned)((B * C + kV4Threads - 1) / kV4Threads)); }

void check_v4(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u,
              const char* op) {
  check_cuda_tensor(k, "k");
  TORCH_CHECK(k.dim() == 3, "rwkv_hf cuda ", op, ": k must be [B, T, C]");
  check_act(v, k, "v");
  TORCH_CHECK(v.sizes() == k.sizes(), "rwkv_hf cuda ", op, ": v must have k's shape");
  check_float(w, "w");
  check_float(u, "u");
  TORCH_CHECK(w.numel() == k.size(2) && u.numel() == k.size(2), "rwkv_hf cuda ", op,
              ": w and u must be [C]");
  TORCH_CHECK(k.size(0) * k.size(2) < (int64_t)1 << 31 && k.size(1) < (int64_t)1 << 31,
              "rwkv_hf cuda ", op, ": input too large");
}

}  // namespace

std::vector<at::Tensor> wkv4_forward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                     at::Tensor s0, bool save) {
  check_v4(k, v, w, u, "wkv4");
  check_float(s0, "state");
  const int B = k.size(0), T = k.size(1), C = k.size(2);
  TORCH_CHECK(s0.numel() == (int64_t)B * 3 * C, "rwkv_hf cuda wkv4: state must be [B, 3, C]");
  const at::cuda::OptionalCUDAGuard guard(k.device());
  auto y = at::empty_like(k);
  auto sT = at::empty({B, 3, C}, s0.options());
  const int NC = (T + kV4Chunk - 1) / kV4Chunk;
  auto ckpt = save ? at::empty({B, NC, 4, C}, s0.options()) : at::empty({0}, s0.options());
  if (B * C == 0) return {y, sT, ckpt};
  auto stream = c10::cuda::getCurrentCUDAStream();
  RWKV_HF_DISPATCH_F(k.scalar_type(), "wkv4", [&] {
    wkv4_fwd_kernel<F><<<v4_grid(B, C), kV4Threads, 0, stream>>>(
        B, T, C, (const F*)k.data_ptr(), (const F*)v.data_ptr(), w.data_ptr<float>(),
        u.data_ptr<float>(), s0.data_ptr<float>(), (F*)y.data_ptr(), sT.data_ptr<float>(),
        save ? ckpt.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, sT, ckpt};
}

std::vector<at::Tensor> wkv4_backward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                      at::Tensor ckpt, at::Tensor gy, at::Tensor gsT) {
  check_v4(k, v, w, u, "wkv4");
  check_act(gy, k, "gy");
  check_float(ckpt, "ckpt");
  check_float(gsT, "gsT");
  const int B = k.size(0), T = k.size(1), C = k.size(2);
  const at::cuda::OptionalCUDAGuard guard(k.device());
  auto f32 = k.options().dtype(at::kFloat);
  auto gk = at::empty({B, T, C}, f32), gv = at::empty({B, T, C}, f32);
  auto gw = at::empty({B, C}, f32), gu = at::empty({B, C}, f32), gs0 = at::empty({B, 3, C}, f32);
  if (B * C == 0) return {gk, gv, gw, gu, gs0};
  auto stream = c10::cuda::getCurrentCUDAStream();
  RWKV_HF_DISPATCH_F(k.scalar_type(), "wkv4", [&] {
    wkv4_bwd_kernel<F><<<v4_grid(B, C), kV4Threads, 0, stream>>>(
        B, T, C, (const F*)k.data_ptr(), (const F*)v.data_ptr(), w.data_ptr<float>(),
        u.data_ptr<float>(), ckpt.data_ptr<float>(), (const F*)gy.data_ptr(),
        gsT.data_ptr<float>(), gk.data_ptr<float>(), gv.data_ptr<float>(), gw.data_ptr<float>(),
        gu.data_ptr<float>(), gs0.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gk, gv, gw, gu, gs0};
}

std::vector<at::Tensor> bi_wkv4_forward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                        at::Tensor s0) {
  check_v4(k, v, w, u, "bi_wkv4");
  check_float(s0, "state");
  const int B = k.size(0), T = k.size(1), C = k.size(2);
  TORCH_CHECK(s0.numel() == (int64_t)B * 6 * C,
              "rwkv_hf cuda bi_wkv4: state must be [B, 2, 3, C]");
  const at::cuda::OptionalCUDAGuard guard(k.device());
  auto y = at::empty_like(k);
  auto sT = at::empty({B, 2, 3, C}, s0.options());
  if (B * C == 0) return {y, sT};
  auto fbuf = at::empty({B, T, 3, C}, s0.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  RWKV_HF_DISPATCH_F(k.scalar_type(), "bi_wkv4", [&] {
    bi_wkv4_fwd_kernel<F><<<v4_grid(B, C), kV4Threads, 0, stream>>>(
        B, T, C, (const F*)k.data_ptr(), (const F*)v.data_ptr(), w.data_ptr<float>(),
        u.data_ptr<float>(), s0.data_ptr<float>(), (F*)y.data_ptr(), sT.data_ptr<float>(),
        fbuf.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, sT};
}

std::vector<at::Tensor> bi_wkv4_backward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                         at::Tensor s0, at::Tensor gy, at::Tensor gsT) {
  check_v4(k, v, w, u, "bi_wkv4");
  check_act(gy, k, "gy");
  check_float(s0, "state");
  check_float(gsT, "gsT");
  const int B = k.size(0), T = k.size(1), C = k.size(2);
  const at::cuda::OptionalCUDAGuard guard(k.device());
  auto f32 = k.options().dtype(at::kFloat);
  auto gk = at::empty({B, T, C}, f32), gv = at::empty({B, T, C}, f32);
  auto gw = at::empty({B, C}, f32), gu = at::empty({B, C}, f32);
  auto gs0 = at::empty({B, 2, 3, C}, f32);
  if (B * C == 0) return {gk, gv, gw, gu, gs0};
  const int NC = (T + kV4Chunk - 1) / kV4Chunk;
  auto fbuf = at::empty({B, T, 3, C}, f32);
  auto pck = at::empty({B, NC, 4, C}, f32);
  auto stream = c10::cuda::getCurrentCUDAStream();
  RWKV_HF_DISPATCH_F(k.scalar_type(), "bi_wkv4", [&] {
    bi_wkv4_bwd_kernel<F><<<v4_grid(B, C), kV4Threads, 0, stream>>>(
        B, T, C, (const F*)k.data_ptr(), (const F*)v.data_ptr(), w.data_ptr<float>(),
        u.data_ptr<float>(), s0.data_ptr<float>(), (const F*)gy.data_ptr(),
        gsT.data_ptr<float>(), gk.data_ptr<float>(), gv.data_ptr<float>(), gw.data_ptr<float>(),
        gu.data_ptr<float>(), gs0.data_ptr<float>(), fbuf.data_ptr<float>(),
        pck.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gk, gv, gw, gu, gs0};
}

}  // namespace rwkv_hf
