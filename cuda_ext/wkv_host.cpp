// The host side of the rwkv_hf WKV extension: checks the tensors, allocates the outputs and the
// scratch, and calls the launchers of the .cu files (wkv_launch.h) on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <initializer_list>
#include <mutex>
#include <string>
#include <unordered_map>

#include "wkv_host.h"
#include "wkv_launch.h"

namespace rwkv_hf {
namespace {

void check_cuda_tensor(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_cuda(), "rwkv_hf cuda: ", name, " must be a CUDA tensor");
  TORCH_CHECK(x.is_contiguous(), "rwkv_hf cuda: ", name, " must be contiguous");
}

void check_float(const at::Tensor& x, const char* name) {
  check_cuda_tensor(x, name);
  TORCH_CHECK(x.scalar_type() == at::kFloat, "rwkv_hf cuda: ", name, " must be float32, got ",
              x.scalar_type());
}

void check_act(const at::Tensor& x, const at::Tensor& like, const char* name) {
  check_cuda_tensor(x, name);
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), "rwkv_hf cuda: ", name, " must have dtype ",
              like.scalar_type(), ", got ", x.scalar_type());
  TORCH_CHECK(x.device() == like.device(), "rwkv_hf cuda: ", name, " is on another device");
}

// Tokens per chunk of the scans over time: `chunk`, as chosen by the caller, rounded up to a
// multiple of `unit` (kSnap for the matrix-state ops wkv6, wkv7; 1 for wkv4, bi_wkv4); 0, or a
// chunk of at least T tokens, is one chunk (the sequential form).
int chunk_length(int64_t chunk, int T, int unit) {
  TORCH_CHECK(chunk >= 0, "rwkv_hf cuda: chunk length must be >= 0, got ", chunk);
  if (chunk == 0 || chunk >= T) return T > 0 ? T : 1;
  return (int)((chunk + unit - 1) / unit * unit);
}

// "16, 32, 64 or 128" (built only for an error message).
std::string size_list(std::initializer_list<int> sizes) {
  std::string out;
  int i = 0;
  for (const int s : sizes) {
    out += (i == 0 ? "" : i + 1 == (int)sizes.size() ? " or " : ", ") + std::to_string(s);
    ++i;
  }
  return out;
}

// The head sizes the kernels are instantiated for: the RWKV sizes of dispatch_n, or point_wkv's
// (dispatch_point_n).
void check_head_size(int64_t n, const char* op, std::initializer_list<int> sizes = {16, 32, 64, 128}) {
  TORCH_CHECK(std::find(sizes.begin(), sizes.end(), n) != sizes.end(), "rwkv_hf cuda ", op,
              ": head size must be ", size_list(sizes), ", got ", n);
}

// Calls body.template operator()<F>() with F the C++ type of an activation dtype.
#define RWKV_HF_DISPATCH_F(dtype, NAME, ...)                                          \
  [&] {                                                                               \
    switch (dtype) {                                                                  \
      case at::kFloat: { using F = float; return __VA_ARGS__(); }                     \
      case at::kBFloat16: { using F = c10::BFloat16; return __VA_ARGS__(); }          \
      case at::kHalf: { using F = c10::Half; return __VA_ARGS__(); }                  \
      default: TORCH_CHECK(false, "rwkv_hf cuda ", NAME,                              \
                           ": per-token inputs must be float32, bfloat16 or float16, got ", \
                           dtype);                                                    \
    }                                                                                 \
  }()

template <typename F>
const F* in_ptr(const at::Tensor& x) {
  return reinterpret_cast<const F*>(x.data_ptr());
}

template <typename F>
F* out_ptr(at::Tensor& x) {
  return reinterpret_cast<F*>(x.data_ptr());
}

// The log-decay w of the matrix-state ops: float32, or the activations' dtype (read as it is,
// no float32 copy; its gradient comes back in its dtype).
void check_decay(const at::Tensor& w, const at::Tensor& r) {
  check_cuda_tensor(w, "w");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == r.scalar_type(),
              "rwkv_hf cuda: w must be float32 or the activations' dtype (", r.scalar_type(),
              "), got ", w.scalar_type());
  TORCH_CHECK(w.device() == r.device(), "rwkv_hf cuda: w is on another device");
}

// Calls run(FW()) with FW the C++ type of w: float, or F (the activations' type).
template <typename F, typename Run>
void dispatch_w(const at::Tensor& w, Run&& run) {
  if (w.scalar_type() == at::kFloat) {
    run(float());
  } else {
    run(F());
  }
}

// The second stream of run_halves: one per device for the process (created on first use, never
// destroyed), used by nothing else. c10's pool hands out its 32 streams in turn, and the caching
// allocator reuses freed memory on the stream it was allocated on only: a pool stream per call
// would allocate the second half's memory anew (cudaMalloc) until every pool stream had its own
// cache of it. Non-blocking: no implicit ordering with the legacy default stream, which would
// serialise the halves; run_halves' events order it.
c10::cuda::CUDAStream side_stream() {
  static std::mutex mutex;
  static std::unordered_map<int, cudaStream_t> streams;
  const c10::DeviceIndex device = c10::cuda::current_device();
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = streams.find(device);
  if (it == streams.end()) {
    cudaStream_t stream;
    C10_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    it = streams.emplace(device, stream).first;
  }
  return c10::cuda::getStreamFromExternal(it->second, device);
}

// Runs first(stream) and second(stream): one after the other on the current stream, or
// (`concurrent`) second on side_stream() alongside first, the current stream then waiting for
// both. For the two scans of bi_wkv6: the blocks of both share the multiprocessors (either
// alone leaves some idle in its last wave, or all of them when it is under one wave, its blocks
// bound by latency). Whatever they read must be queued on the current stream before the call
// (the side stream starts after it). The second half allocates from the side stream's pool:
// memory the first half frees meanwhile (its scratch, in use by its kernels still queued) goes
// back to the current stream's pool, so the caching allocator cannot hand it to the second
// half's kernels.
template <typename A, typename B>
void run_halves(bool concurrent, A&& first, B&& second) {
  const cudaStream_t cur = c10::cuda::getCurrentCUDAStream();
  if (!concurrent) {
    first(cur);
    second(cur);
    return;
  }
  const auto side = side_stream();
  cudaEvent_t fork, join;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(fork, cur));
  C10_CUDA_CHECK(cudaStreamWaitEvent(side.stream(), fork, 0));
  first(cur);
  {
    const c10::cuda::CUDAStreamGuard on_side(side);
    second(side.stream());
  }
  C10_CUDA_CHECK(cudaEventRecord(join, side.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(cur, join, 0));
  C10_CUDA_CHECK(cudaEventDestroy(fork));  // released once complete
  C10_CUDA_CHECK(cudaEventDestroy(join));
}

float* f32_or_null(at::Tensor& x, bool use) { return use ? x.data_ptr<float>() : nullptr; }

// A boundary state the matrix-state kernels read: the initial state (forward) or the final
// state's gradient (backward), float32 with `numel` elements (`halves`: bi_wkv6's
// [B, 2, H, K, V]), or empty: zero (no initial state, or a final state off the loss; the
// kernels then start from zero and read nothing) -> null.
const float* state_in(const at::Tensor& x, int64_t numel, const char* op, const char* name,
                      const char* shape, bool halves = false) {
  check_float(x, name);
  if (x.numel() == 0) return nullptr;
  TORCH_CHECK(x.numel() == numel && (!halves || (x.dim() == 5 && x.size(1) == 2)), "rwkv_hf cuda ",
              op, ": ", name, " must be ", shape, " or empty (zero)");
  return x.data_ptr<float>();
}

// The forward kernels and B1 move each thread's share of a stage as 16-byte (or 4-byte) words: a
// per-token input whose data does not start on a 16-byte boundary (a view at an odd offset) is
// copied.
at::Tensor aligned16(const at::Tensor& x) {
  return reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 ? x : x.clone();
}

// ---------------------------------------------------------------------------- wkv4, bi_wkv4

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
  TORCH_CHECK(k.size(0) < (int64_t)1 << 31 && k.size(1) < (int64_t)1 << 31 &&
                  k.size(2) < (int64_t)1 << 31, "rwkv_hf cuda ", op, ": input too large");
}

template <typename F>
V4Args<F> v4_args(int B, int T, int C, int L, int NC, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& w, const at::Tensor& u) {
  return {B, T, C, L, NC, in_ptr<F>(k), in_ptr<F>(v), w.data_ptr<float>(), u.data_ptr<float>()};
}

template <bool BI>
std::vector<at::Tensor> v4_forward(const char* op, at::Tensor k, at::Tensor v, at::Tensor w,
                                   at::Tensor u, at::Tensor s0, int64_t chunk) {
  constexpr int D = BI ? 2 : 1;
  check_v4(k, v, w, u, op);
  check_float(s0, "state");
  const int B = k.size(0), T = k.size(1), C = k.size(2);
  TORCH_CHECK(s0.numel() == (int64_t)B * D * 3 * C, "rwkv_hf cuda ", op, ": state must be ",
              BI ? "[B, 2, 3, C]" : "[B, 3, C]");
  const int L = chunk_length(chunk, T, 1), NC = (T + L - 1) / L;
  TORCH_CHECK((int64_t)B * NC * C < (int64_t)1 << 31, "rwkv_hf cuda ", op, ": input too large");
  const at::cuda::OptionalCUDAGuard guard(k.device());
  const auto f32 = s0.options();
  auto y = at::empty_like(k);
  auto sT = BI ? at::empty({B, 2, 3, C}, f32) : at::empty({B, 3, C}, f32);
  auto enter = at::empty({B, NC, D, 3, C}, f32);
  if ((int64_t)B * T * C == 0) return {y, sT, enter};
  auto loc = at::empty({NC > 1 ? B : 0, NC, D, 3, C}, f32);
  auto fbuf = at::empty({BI ? B : 0, T, 3, C}, f32);
  RWKV_HF_DISPATCH_F(k.scalar_type(), op, [&] {
    const V4Fwd<F> p{v4_args<F>(B, T, C, L, NC, k, v, w, u), s0.data_ptr<float>(),
                     f32_or_null(loc, NC > 1), enter.data_ptr<float>(), f32_or_null(fbuf, BI),
                     out_ptr<F>(y), sT.data_ptr<float>()};
    C10_CUDA_CHECK((v4_forward_launch<BI, F>(p, c10::cuda::getCurrentCUDAStream())));
  });
  return {y, sT, enter};
}

template <bool BI>
std::vector<at::Tensor> v4_backward(const char* op, at::Tensor k, at::Tensor v, at::Tensor w,
                                    at::Tensor u, at::Tensor enter, at::Tensor sT, at::Tensor gy,
                                    at::Tensor gsT, int64_t chunk) {
  constexpr int D = BI ? 2 : 1;
  check_v4(k, v, w, u, op);
  check_act(gy, k, "gy");
  TORCH_CHECK(gy.sizes() == k.sizes(), "rwkv_hf cuda ", op, ": gy must have k's shape");
  check_float(enter, "enter");
  check_float(sT, "final_state");
  check_float(gsT, "gstate");
  const int B = k.size(0), T = k.size(1), C = k.size(2);
  const int L = chunk_length(chunk, T, 1), NC = (T + L - 1) / L;
  TORCH_CHECK((int64_t)B * NC * C < (int64_t)1 << 31, "rwkv_hf cuda ", op, ": input too large");
  TORCH_CHECK(enter.numel() == (int64_t)B * NC * D * 3 * C, "rwkv_hf cuda ", op,
              ": the forward's chunk states do not match this chunk length");
  TORCH_CHECK(sT.numel() == (int64_t)B * D * 3 * C && gsT.numel() == sT.numel(), "rwkv_hf cuda ",
              op, ": final_state and gstate must be ", BI ? "[B, 2, 3, C]" : "[B, 3, C]");
  const at::cuda::OptionalCUDAGuard guard(k.device());
  const auto f32 = k.options().dtype(at::kFloat);
  auto gk = at::empty({B, T, C}, f32), gv = at::empty({B, T, C}, f32);
  auto gw = at::empty({B, NC, C}, f32), gu = at::empty({B, NC, C}, f32);
  auto gs0 = at::empty(sT.sizes(), f32);
  if ((int64_t)B * T * C == 0) return {gk, gv, gw, gu, gs0};
  auto buf = at::empty({B, T, D, 3, C}, f32);
  auto best = at::empty({B, NC, D, C}, k.options().dtype(at::kInt));
  auto loc = at::empty({NC > 1 ? B : 0, NC, D, 3, C}, f32);
  auto gin = at::empty({B, NC, D, 3, C}, f32);
  RWKV_HF_DISPATCH_F(k.scalar_type(), op, [&] {
    const V4Bwd<F> p{v4_args<F>(B, T, C, L, NC, k, v, w, u),
                     enter.data_ptr<float>(), sT.data_ptr<float>(), gsT.data_ptr<float>(),
                     in_ptr<F>(gy), buf.data_ptr<float>(), f32_or_null(loc, NC > 1),
                     gin.data_ptr<float>(), best.data_ptr<int>(), gk.data_ptr<float>(),
                     gv.data_ptr<float>(), gw.data_ptr<float>(), gu.data_ptr<float>(),
                     gs0.data_ptr<float>()};
    C10_CUDA_CHECK((v4_backward_launch<BI, F>(p, c10::cuda::getCurrentCUDAStream())));
  });
  return {gk, gv, gw, gu, gs0};
}

// ---------------------------------------------------------------------------- wkv6

void check_v6(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
              const at::Tensor& u) {
  check_cuda_tensor(r, "r");
  TORCH_CHECK(r.dim() == 4, "rwkv_hf cuda wkv6: r must be [B, T, H, K]");
  check_act(k, r, "k");
  check_act(v, r, "v");
  check_decay(w, r);
  check_float(u, "u");
  TORCH_CHECK(k.sizes() == r.sizes(), "rwkv_hf cuda wkv6: r and k must share one shape [B, T, H, K]");
  TORCH_CHECK(w.sizes() == r.sizes() || (w.dim() == 2 && w.size(0) == r.size(2) && w.size(1) == r.size(3)),
              "rwkv_hf cuda wkv6: w must be [B, T, H, K] like r, or [H, K], got ", w.sizes());
  TORCH_CHECK(v.sizes() == r.sizes(), "rwkv_hf cuda wkv6: needs V == K (v of r's shape), got v ",
              v.sizes(), " and r ", r.sizes());
  TORCH_CHECK(w.dim() != 2 || w.scalar_type() == at::kFloat,
              "rwkv_hf cuda wkv5: the decay [H, K] must be float32");
  TORCH_CHECK(u.numel() == r.size(2) * r.size(3), "rwkv_hf cuda wkv6: u must be [H, K]");
  check_head_size(r.size(3), "wkv6");
}

// A per-token output like `like`: in its dtype, or float32 (out_f32).
at::Tensor new_out(const at::Tensor& like, bool out_f32) {
  return out_f32 ? at::empty(like.sizes(), like.options().dtype(at::kFloat)) : at::empty_like(like);
}

// The float32 tensors added to the outputs (none, or one per output, each of its output's shape).
std::vector<const float*> addends(const std::vector<at::Tensor>& add,
                                  const std::vector<at::Tensor>& outs) {
  TORCH_CHECK(add.empty() || add.size() == outs.size(), "rwkv_hf cuda wkv6: add takes none or ",
              outs.size(), " tensors, got ", add.size());
  std::vector<const float*> p(outs.size(), nullptr);
  for (size_t i = 0; i < add.size(); ++i) {
    check_float(add[i], "add");
    TORCH_CHECK(add[i].sizes() == outs[i].sizes(), "rwkv_hf cuda wkv6: add[", i, "] must have shape ",
                outs[i].sizes(), ", got ", add[i].sizes());
    p[i] = add[i].data_ptr<float>();
  }
  return p;
}

template <typename F>
OutVec<F> out_vec(at::Tensor& out, const float* add) {
  OutVec<F> o;
  if (out.scalar_type() == at::kFloat) {
    o.out32 = out.data_ptr<float>();
  } else {
    o.out = out_ptr<F>(out);
  }
  o.add = add;
  return o;
}

// The boundary states of one scan: the initial state (or gS_final) it reads and the final state
// (or gS_{-1}) it writes, float32, (b, h) at b sb + h N N (see V6In).
struct Bounds {
  const float* in;
  float* out;
  int64_t sb;
};

template <typename F, typename FW>
V6In<F, FW> v6_in(const MatSizes& s, bool reverse, const at::Tensor& r, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor& w, const float* u, int64_t sb) {
  return {s, reverse, in_ptr<F>(r), in_ptr<F>(k), in_ptr<F>(v), in_ptr<FW>(w), u, sb};
}

// launch(std::bool_constant<WC>) for RWKV-5's decay [H, K] (WC, float32 only: wkv5.cu) or a
// decay per token (wkv6.cu) -> the launch's status.
template <typename FW, typename Launch>
cudaError_t launch_wc(const at::Tensor& w, Launch&& launch) {
  if constexpr (std::is_same_v<FW, float>) {
    if (w.dim() == 2) return launch(std::true_type());
  }
  return launch(std::false_type());
}

// What a forward scan keeps for the backward: the snapshots and the chunk transitions.
struct V6Saved {
  at::Tensor snap, trans;
};

// One scan of wkv6 (left to right, or right to left: `reverse`; u null: no bonus) from the
// state at st.in to the one at st.out, into y (the inputs' dtype or float32, `yadd` added before
// the rounding), its kernels on `stream`; the inputs checked and 16-byte aligned. Its other
// tensor work only allocates (no kernel: see run_halves).
V6Saved v6_forward_scan(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& w, const float* u, Bounds st, bool save, int64_t chunk,
                        bool reverse, at::Tensor& y, const float* yadd, cudaStream_t stream) {
  const int B = r.size(0), T = r.size(1), H = r.size(2), n = r.size(3);
  const int L = chunk_length(chunk, T, kSnap), NCL = (T + L - 1) / L;
  TORCH_CHECK(NCL < 65536, "rwkv_hf cuda wkv6: over 65535 chunks (chunk length ", L, ")");
  const auto opt = r.options().dtype(at::kFloat);
  const int NC = (T + kSnap - 1) / kSnap;
  auto snap = save ? at::empty({B, H, NC, n, n}, opt) : at::empty({0}, opt);
  auto trans = at::empty({NCL > 1 ? B : 0, H, NCL, n, n}, opt);
  if (B * H == 0) return {snap, trans};
  at::Tensor local, starts;  // scratch of the chunked form
  if (NCL > 1) local = at::empty({B, H, NCL, n, n}, opt), starts = at::empty_like(local);
  RWKV_HF_DISPATCH_F(r.scalar_type(), "wkv6", [&] {
    dispatch_w<F>(w, [&](auto fw) {
      using FW = decltype(fw);
      const V6Fwd<F, FW> p{v6_in<F, FW>({B, T, H, n, L, NCL}, reverse, r, k, v, w, u, st.sb),
                           st.in, f32_or_null(local, NCL > 1), f32_or_null(starts, NCL > 1),
                           f32_or_null(trans, NCL > 1), out_vec<F>(y, yadd), st.out,
                           f32_or_null(snap, save)};
      C10_CUDA_CHECK(launch_wc<FW>(w, [&](auto wc) {
        return wkv6_forward_launch<F, FW, decltype(wc)::value>(p, stream);
      }));
    });
  });
  if (!save) trans = at::empty({0, H, NCL, n, n}, opt);
  return {snap, trans};
}

// The backward of one scan: from gS_final at st.in, gr, gk, gv into g (`gadd` added before the
// rounding), gw into gw ([B, T, H, K], w's dtype or float32; `gwadd` added first), gu's partial
// sums into gu_part (float32 [B, T / kSnap, H, K], or null: none) and gS_{-1} at st.out, its
// kernels on `stream` (no other kernel).
void v6_backward_scan(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& w, const float* u, const at::Tensor& snap,
                      const at::Tensor& trans, const at::Tensor& gy, Bounds st, int64_t chunk,
                      bool reverse, std::vector<at::Tensor>& g,
                      const std::vector<const float*>& gadd, at::Tensor& gw, const float* gwadd,
                      float* gu_part, cudaStream_t stream) {
  check_float(snap, "snapshots");
  const int B = r.size(0), T = r.size(1), H = r.size(2), n = r.size(3);
  const int NC = (T + kSnap - 1) / kSnap;
  const int L = chunk_length(chunk, T, kSnap), NCL = (T + L - 1) / L;
  TORCH_CHECK(snap.numel() == (int64_t)B * H * NC * n * n, "rwkv_hf cuda wkv6: bad snapshots");
  TORCH_CHECK(NCL == 1 || trans.numel() == (int64_t)B * H * NCL * n * n,
              "rwkv_hf cuda wkv6: the chunk transitions of the forward are missing (chunk ", chunk,
              ")");
  if (NCL > 1) check_float(trans, "transitions");
  TORCH_CHECK((int64_t)B * H * NC < (int64_t)1 << 31 && NCL < 65536, "rwkv_hf cuda wkv6: ",
              "input too large for one launch (B * H * T / 64 >= 2^31, or over 65535 chunks)");
  const auto f32 = r.options().dtype(at::kFloat);
  if (B * H == 0) return;
  auto e = at::empty({B, T, H, n}, f32);
  auto anchor = at::empty({B, H, NC, n}, f32);
  at::Tensor local, gend;  // scratch of the chunked form
  if (NCL > 1) local = at::empty({B, H, NCL, n, n}, f32), gend = at::empty_like(local);
  RWKV_HF_DISPATCH_F(r.scalar_type(), "wkv6", [&] {
    dispatch_w<F>(w, [&](auto fw) {
      using FW = decltype(fw);
      const V6Bwd<F, FW> p{v6_in<F, FW>({B, T, H, n, L, NCL}, reverse, r, k, v, w, u, st.sb),
                           snap.data_ptr<float>(), NCL > 1 ? trans.data_ptr<float>() : nullptr,
                           st.in, in_ptr<F>(gy), f32_or_null(local, NCL > 1),
                           f32_or_null(gend, NCL > 1), e.data_ptr<float>(),
                           anchor.data_ptr<float>(), out_vec<F>(g[0], gadd[0]),
                           out_vec<F>(g[1], gadd[1]), out_vec<F>(g[2], gadd[2]),
                           out_vec<FW>(gw, gwadd), gu_part, st.out};
      C10_CUDA_CHECK(launch_wc<FW>(w, [&](auto wc) {
        return wkv6_backward_launch<F, FW, decltype(wc)::value>(p, stream);
      }));
    });
  });
}

// ---------------------------------------------------------------------------- wkv7

void check_v7(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
              const at::Tensor& a, const at::Tensor& b) {
  check_cuda_tensor(r, "r");
  TORCH_CHECK(r.dim() == 4, "rwkv_hf cuda wkv7: r must be [B, T, H, K]");
  check_act(k, r, "k");
  check_act(v, r, "v");
  check_act(a, r, "a");
  check_act(b, r, "b");
  check_decay(w, r);
  TORCH_CHECK(k.sizes() == r.sizes() && w.sizes() == r.sizes() && a.sizes() == r.sizes() &&
                  b.sizes() == r.sizes(),
              "rwkv_hf cuda wkv7: r, k, w, a, b must share one shape [B, T, H, K]");
  TORCH_CHECK(v.sizes() == r.sizes(), "rwkv_hf cuda wkv7: needs V == K (v of r's shape), got v ",
              v.sizes(), " and r ", r.sizes());
  check_head_size(r.size(3), "wkv7");
}

template <typename F, typename FW>
V7In<F, FW> v7_in(const MatSizes& s, const at::Tensor& r, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor& w, const at::Tensor& a,
                  const at::Tensor& b) {
  return {s, in_ptr<F>(r), in_ptr<F>(k), in_ptr<F>(v), in_ptr<F>(a), in_ptr<F>(b), in_ptr<FW>(w)};
}

// ---------------------------------------------------------------------------- point_wkv

void check_point(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w) {
  check_cuda_tensor(k, "k");
  TORCH_CHECK(k.dim() == 4, "rwkv_hf cuda point_wkv: k must be [B, T, H, K]");
  check_act(v, k, "v");
  check_decay(w, k);
  TORCH_CHECK(v.sizes() == k.sizes() && w.sizes() == k.sizes(),
              "rwkv_hf cuda point_wkv: k, v, w must share one shape [B, T, H, K] (K = V)");
  check_head_size(k.size(3), "point_wkv", {16, 32, 48, 64, 96, 128});
  TORCH_CHECK(k.size(0) * k.size(2) < (int64_t)1 << 31 && k.size(1) < (int64_t)1 << 31,
              "rwkv_hf cuda point_wkv: input too large");
}

template <typename F, typename FW>
PointIn<F, FW> point_in(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w) {
  return {(int)k.size(0), (int)k.size(1), (int)k.size(2), (int)k.size(3),
          in_ptr<F>(k), in_ptr<F>(v), in_ptr<FW>(w)};
}

// An optional float32 input of `numel` elements: empty -> null (zero).
const float* optional_in(const at::Tensor& x, int64_t numel, const char* name, const char* shape) {
  check_float(x, name);
  if (x.numel() == 0) return nullptr;
  TORCH_CHECK(x.numel() == numel, "rwkv_hf cuda point_wkv: ", name, " must be ", shape,
              " or empty (zero)");
  return x.data_ptr<float>();
}

}  // namespace

std::vector<at::Tensor> wkv4_forward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                     at::Tensor s0, int64_t chunk) {
  return v4_forward<false>("wkv4", k, v, w, u, s0, chunk);
}

std::vector<at::Tensor> wkv4_backward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                      at::Tensor enter, at::Tensor sT, at::Tensor gy,
                                      at::Tensor gsT, int64_t chunk) {
  return v4_backward<false>("wkv4", k, v, w, u, enter, sT, gy, gsT, chunk);
}

std::vector<at::Tensor> bi_wkv4_forward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                        at::Tensor s0, int64_t chunk) {
  return v4_forward<true>("bi_wkv4", k, v, w, u, s0, chunk);
}

std::vector<at::Tensor> bi_wkv4_backward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                         at::Tensor enter, at::Tensor sT, at::Tensor gy,
                                         at::Tensor gsT, int64_t chunk) {
  return v4_backward<true>("bi_wkv4", k, v, w, u, enter, sT, gy, gsT, chunk);
}

std::vector<at::Tensor> wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                     at::Tensor u, at::Tensor s0, bool save, int64_t chunk,
                                     bool reverse, bool out_f32, std::vector<at::Tensor> add) {
  check_v6(r, k, v, w, u);
  const int B = r.size(0), H = r.size(2), n = r.size(3);
  const float* s0p = state_in(s0, (int64_t)B * H * n * n, "wkv6", "state", "[B, H, K, V]");
  const at::cuda::OptionalCUDAGuard guard(r.device());
  r = aligned16(r), k = aligned16(k), v = aligned16(v), w = aligned16(w);
  auto y = new_out(v, out_f32);
  const auto yadd = addends(add, {y});
  auto sT = at::empty({B, H, n, n}, r.options().dtype(at::kFloat));
  auto o = v6_forward_scan(r, k, v, w, u.data_ptr<float>(),
                           {s0p, sT.data_ptr<float>(), (int64_t)H * n * n}, save, chunk, reverse,
                           y, yadd[0], c10::cuda::getCurrentCUDAStream());
  return {y, sT, o.snap, o.trans};
}

std::vector<at::Tensor> bi_wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                        at::Tensor u, at::Tensor s0, bool save, int64_t chunk,
                                        bool concurrent) {
  check_v6(r, k, v, w, u);
  const int B = r.size(0), H = r.size(2), n = r.size(3);
  const float* s0p =
      state_in(s0, (int64_t)B * 2 * H * n * n, "bi_wkv6", "state", "[B, 2, H, K, V]", true);
  const at::cuda::OptionalCUDAGuard guard(r.device());
  r = aligned16(r), k = aligned16(k), v = aligned16(v), w = aligned16(w);
  auto y = at::empty_like(v);
  // The left-to-right half (with the bonus) writes float32 y1: y itself for float32 inputs, else
  // a buffer. One after the other, the right-to-left half adds y1 and rounds once into y; at
  // once, it writes float32 y2 and one pass sums them (the same float32 sum, rounded once).
  auto y1 = v.scalar_type() == at::kFloat ? y : new_out(v, true);
  auto y2 = concurrent ? new_out(v, true) : y;
  // Each half reads and writes its slice of the [B, 2, H, K, V] states in place (batch stride
  // 2 H K V); the right-to-left half has no bonus (u null).
  auto sT = at::empty({B, 2, H, n, n}, r.options().dtype(at::kFloat));
  const int64_t sb = (int64_t)2 * H * n * n, half = B * H == 0 ? 0 : sb / 2;
  float* sTp = sT.data_ptr<float>();
  V6Saved f, b;
  run_halves(
      concurrent,
      [&](cudaStream_t st) {
        f = v6_forward_scan(r, k, v, w, u.data_ptr<float>(), {s0p, sTp, sb}, save, chunk, false,
                            y1, nullptr, st);
      },
      [&](cudaStream_t st) {
        b = v6_forward_scan(r, k, v, w, nullptr,
                            {s0p == nullptr ? nullptr : s0p + half, sTp + half, sb}, save, chunk,
                            true, y2, concurrent ? nullptr : y1.data_ptr<float>(), st);
      });
  if (concurrent) at::add_out(y, y1, y2);
  return {y, sT, f.snap, f.trans, b.snap, b.trans};
}

std::vector<at::Tensor> wkv6_backward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                      at::Tensor u, at::Tensor snap, at::Tensor trans,
                                      at::Tensor gy, at::Tensor gsT, int64_t chunk,
                                      bool reverse, bool out_f32, std::vector<at::Tensor> add) {
  check_v6(r, k, v, w, u);
  check_act(gy, r, "gy");
  const int B = r.size(0), T = r.size(1), H = r.size(2), n = r.size(3);
  const float* gsTp = state_in(gsT, (int64_t)B * H * n * n, "wkv6", "gsT", "[B, H, K, V]");
  const at::cuda::OptionalCUDAGuard guard(r.device());
  r = aligned16(r), k = aligned16(k), v = aligned16(v), w = aligned16(w), gy = aligned16(gy);
  auto f32 = r.options().dtype(at::kFloat);
  std::vector<at::Tensor> g = {new_out(r, out_f32), new_out(r, out_f32), new_out(v, out_f32)};
  const auto gadd = addends(add, g);
  auto gw = at::empty({B, T, H, n}, f32.dtype(w.scalar_type()));
  auto gu_part = at::empty({B, (T + kSnap - 1) / kSnap, H, n}, f32);
  auto gs0 = at::empty({B, H, n, n}, f32);
  v6_backward_scan(r, k, v, w, u.data_ptr<float>(), snap, trans, gy,
                   {gsTp, gs0.data_ptr<float>(), (int64_t)H * n * n}, chunk,
                   reverse, g, gadd, gw, nullptr, gu_part.data_ptr<float>(),
                   c10::cuda::getCurrentCUDAStream());
  return {g[0], g[1], g[2], gw, gu_part, gs0};
}

std::vector<at::Tensor> bi_wkv6_backward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                         at::Tensor u, at::Tensor snap_f, at::Tensor trans_f,
                                         at::Tensor snap_b, at::Tensor trans_b, at::Tensor gy,
                                         at::Tensor gsT, int64_t chunk, bool concurrent) {
  check_v6(r, k, v, w, u);
  check_act(gy, r, "gy");
  const int B = r.size(0), T = r.size(1), H = r.size(2), n = r.size(3);
  const float* gsTp =
      state_in(gsT, (int64_t)B * 2 * H * n * n, "bi_wkv6", "gsT", "[B, 2, H, K, V]", true);
  const at::cuda::OptionalCUDAGuard guard(r.device());
  r = aligned16(r), k = aligned16(k), v = aligned16(v), w = aligned16(w), gy = aligned16(gy);
  auto f32 = r.options().dtype(at::kFloat);
  // As in the forward: gr, gk, gv and gw of the first half in float32 (in place for float32
  // ones); the second half adds them before its rounding, or (at once) writes its own in
  // float32 and one pass per gradient sums them.
  auto f32_like = [](const std::vector<at::Tensor>& xs) {
    return std::vector<at::Tensor>{new_out(xs[0], true), new_out(xs[1], true), new_out(xs[2], true)};
  };
  std::vector<at::Tensor> g = {at::empty_like(r), at::empty_like(r), at::empty_like(v)};
  auto gw = at::empty({B, T, H, n}, f32.dtype(w.scalar_type()));
  auto g1 = r.scalar_type() == at::kFloat ? g : f32_like(g);
  auto gw1 = w.scalar_type() == at::kFloat ? gw : new_out(gw, true);
  auto g2 = concurrent ? f32_like(g) : g;
  auto gw2 = concurrent ? new_out(gw, true) : gw;
  const std::vector<const float*> none = {nullptr, nullptr, nullptr};
  const std::vector<const float*> add1 =
      concurrent ? none
                 : std::vector<const float*>{g1[0].data_ptr<float>(), g1[1].data_ptr<float>(),
                                             g1[2].data_ptr<float>()};
  const int NC = (T + kSnap - 1) / kSnap;
  auto gu_part = at::empty({B, NC, H, n}, f32);  // the left-to-right half's (the bonus's)
  // Each half reads and writes its slice in place, as in the forward.
  auto gs = at::empty({B, 2, H, n, n}, f32);
  const int64_t sb = (int64_t)2 * H * n * n, half = B * H == 0 ? 0 : sb / 2;
  float* gsp = gs.data_ptr<float>();
  run_halves(
      concurrent,
      [&](cudaStream_t st) {
        v6_backward_scan(r, k, v, w, u.data_ptr<float>(), snap_f, trans_f, gy, {gsTp, gsp, sb},
                         chunk, false, g1, none, gw1, nullptr, gu_part.data_ptr<float>(), st);
      },
      [&](cudaStream_t st) {
        v6_backward_scan(r, k, v, w, nullptr, snap_b, trans_b, gy,
                         {gsTp == nullptr ? nullptr : gsTp + half, gsp + half, sb},
                         chunk, true, g2, add1, gw2, concurrent ? nullptr : gw1.data_ptr<float>(),
                         nullptr, st);
      });
  if (concurrent) {
    for (int i = 0; i < 3; ++i) at::add_out(g[i], g1[i], g2[i]);
    at::add_out(gw, gw1, gw2);
  }
  return {g[0], g[1], g[2], gw, gu_part, gs};
}

std::vector<at::Tensor> wkv7_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                     at::Tensor a, at::Tensor b, at::Tensor s0, bool save,
                                     int64_t chunk) {
  check_v7(r, k, v, w, a, b);
  const int B = r.size(0), T = r.size(1), H = r.size(2), n = r.size(3);
  const float* s0p = state_in(s0, (int64_t)B * H * n * n, "wkv7", "state", "[B, H, K, V]");
  const int L = chunk_length(chunk, T, kSnap), NCL = (T + L - 1) / L;
  TORCH_CHECK(NCL < 65536, "rwkv_hf cuda wkv7: over 65535 chunks (chunk length ", L, ")");
  const at::cuda::OptionalCUDAGuard guard(r.device());
  r = aligned16(r), k = aligned16(k), v = aligned16(v), w = aligned16(w), a = aligned16(a),
  b = aligned16(b);
  auto y = at::empty_like(v);
  const auto f32 = r.options().dtype(at::kFloat);
  auto sT = at::empty({B, H, n, n}, f32);
  const int NC = (T + kSnap - 1) / kSnap;
  auto snap = save ? at::empty({B, H, NC, n, n}, f32) : at::empty({0}, f32);
  auto sa = save ? at::empty({B, T, H, n}, f32) : at::empty({0}, f32);
  auto trans = at::empty({NCL > 1 ? B : 0, H, NCL, n, n}, f32);
  if (B * H == 0) return {y, sT, snap, sa, trans};
  at::Tensor local, starts;  // scratch of the chunked form
  if (NCL > 1) local = at::empty({B, H, NCL, n, n}, f32), starts = at::empty_like(local);
  RWKV_HF_DISPATCH_F(r.scalar_type(), "wkv7", [&] {
    dispatch_w<F>(w, [&](auto fw) {
      using FW = decltype(fw);
      const V7Fwd<F, FW> p{v7_in<F, FW>({B, T, H, n, L, NCL}, r, k, v, w, a, b),
                           s0p, f32_or_null(local, NCL > 1),
                           f32_or_null(starts, NCL > 1), f32_or_null(trans, NCL > 1),
                           out_ptr<F>(y), sT.data_ptr<float>(), f32_or_null(snap, save),
                           f32_or_null(sa, save)};
      C10_CUDA_CHECK((wkv7_forward_launch<F, FW>(p, c10::cuda::getCurrentCUDAStream())));
    });
  });
  if (!save) trans = at::empty({0, H, NCL, n, n}, f32);
  return {y, sT, snap, sa, trans};
}

std::vector<at::Tensor> wkv7_backward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                                      at::Tensor a, at::Tensor b, at::Tensor snap, at::Tensor sa,
                                      at::Tensor trans, at::Tensor gy, at::Tensor gsT,
                                      int64_t chunk) {
  check_v7(r, k, v, w, a, b);
  check_act(gy, r, "gy");
  check_float(snap, "snapshots");
  check_float(sa, "sa");
  const int B = r.size(0), T = r.size(1), H = r.size(2), n = r.size(3);
  const float* gsTp = state_in(gsT, (int64_t)B * H * n * n, "wkv7", "gsT", "[B, H, K, V]");
  const int NC = (T + kSnap - 1) / kSnap;
  const int L = chunk_length(chunk, T, kSnap), NCL = (T + L - 1) / L;
  TORCH_CHECK(snap.numel() == (int64_t)B * H * NC * n * n && sa.numel() == r.numel(),
              "rwkv_hf cuda wkv7: bad saved tensors");
  TORCH_CHECK(NCL == 1 || trans.numel() == (int64_t)B * H * NCL * n * n,
              "rwkv_hf cuda wkv7: the chunk transitions of the forward are missing (chunk ", chunk,
              ")");
  if (NCL > 1) check_float(trans, "transitions");
  TORCH_CHECK((int64_t)B * H * NC < (int64_t)1 << 31 && NCL < 65536, "rwkv_hf cuda wkv7: ",
              "input too large for one launch (B * H * T / 64 >= 2^31, or over 65535 chunks)");
  const at::cuda::OptionalCUDAGuard guard(r.device());
  r = aligned16(r), k = aligned16(k), v = aligned16(v), w = aligned16(w), a = aligned16(a),
  b = aligned16(b), sa = aligned16(sa), gy = aligned16(gy);
  auto f32 = r.options().dtype(at::kFloat);
  auto gr = at::empty_like(r), gk = at::empty_like(r), gv = at::empty_like(v);
  auto ga = at::empty_like(r), gb = at::empty_like(r);
  auto gw = at::empty({B, T, H, n}, f32.dtype(w.scalar_type()));
  auto gs0 = at::empty({B, H, n, n}, f32);
  if (B * H == 0) return {gr, gk, gv, gw, ga, gb, gs0};
  auto e = at::empty({B, T, H, n}, f32), cvec = at::empty({B, T, H, n}, f32);
  auto anchor = at::empty({B, H, NC, n}, f32);
  at::Tensor local, gend;  // scratch of the chunked form
  if (NCL > 1) local = at::empty({B, H, NCL, n, n}, f32), gend = at::empty_like(local);
  RWKV_HF_DISPATCH_F(r.scalar_type(), "wkv7", [&] {
    dispatch_w<F>(w, [&](auto fw) {
      using FW = decltype(fw);
      const V7Bwd<F, FW> p{v7_in<F, FW>({B, T, H, n, L, NCL}, r, k, v, w, a, b),
                           snap.data_ptr<float>(), sa.data_ptr<float>(),
                           NCL > 1 ? trans.data_ptr<float>() : nullptr, gsTp,
                           in_ptr<F>(gy), f32_or_null(local, NCL > 1), f32_or_null(gend, NCL > 1),
                           e.data_ptr<float>(), cvec.data_ptr<float>(), anchor.data_ptr<float>(),
                           out_ptr<F>(gr), out_ptr<F>(gk), out_ptr<F>(gv), out_ptr<F>(ga),
                           out_ptr<F>(gb), out_ptr<FW>(gw), gs0.data_ptr<float>()};
      C10_CUDA_CHECK((wkv7_backward_launch<F, FW>(p, c10::cuda::getCurrentCUDAStream())));
    });
  });
  return {gr, gk, gv, gw, ga, gb, gs0};
}

std::vector<at::Tensor> point_forward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor s0,
                                      bool save) {
  check_point(k, v, w);
  const int B = k.size(0), T = k.size(1), H = k.size(2), n = k.size(3);
  const float* s0p =
      state_in(s0, (int64_t)B * 2 * H * n * n, "point_wkv", "state", "[B, 2, H, K, K]", true);
  const at::cuda::OptionalCUDAGuard guard(k.device());
  const auto f32 = k.options().dtype(at::kFloat);
  auto A = at::empty({2, B, T, H, n}, f32);
  auto sT = at::empty({B, 2, H, n, n}, f32);
  const int NC = (T + kSnap - 1) / kSnap;
  auto snap = save ? at::empty({2, B, H, NC, n, n}, f32) : at::empty({0}, f32);
  if (B * H == 0) return {A, sT, snap};
  RWKV_HF_DISPATCH_F(k.scalar_type(), "point_wkv", [&] {
    dispatch_w<F>(w, [&](auto fw) {
      using FW = decltype(fw);
      const PointFwd<F, FW> p{point_in<F, FW>(k, v, w), s0p, A.data_ptr<float>(),
                              sT.data_ptr<float>(), f32_or_null(snap, save)};
      C10_CUDA_CHECK((point_forward_launch<F, FW>(p, c10::cuda::getCurrentCUDAStream())));
    });
  });
  return {A, sT, snap};
}

std::vector<at::Tensor> point_backward(at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor snap,
                                       at::Tensor gA, at::Tensor gsT) {
  check_point(k, v, w);
  check_float(snap, "snapshots");
  const int B = k.size(0), T = k.size(1), H = k.size(2), n = k.size(3);
  const int NC = (T + kSnap - 1) / kSnap;
  TORCH_CHECK(snap.numel() == (int64_t)2 * B * H * NC * n * n,
              "rwkv_hf cuda point_wkv: the snapshots do not match the inputs (a forward with "
              "save=True keeps them)");
  const float* gAp = optional_in(gA, (int64_t)2 * k.numel(), "gA", "[2, B, T, H, K]");
  const float* gsTp =
      state_in(gsT, (int64_t)B * 2 * H * n * n, "point_wkv", "gsT", "[B, 2, H, K, K]", true);
  const at::cuda::OptionalCUDAGuard guard(k.device());
  const auto f32 = k.options().dtype(at::kFloat);
  auto gs0 = at::empty({B, 2, H, n, n}, f32);
  auto gk = at::empty_like(k), gv = at::empty_like(v);
  auto gw = at::empty(w.sizes(), f32.dtype(w.scalar_type()));
  if (B * H == 0) return {gk, gv, gw, gs0};
  // Each direction's gradients in float32, summed below and rounded once.
  auto gk2 = at::empty({2, B, T, H, n}, f32), gv2 = at::empty_like(gk2), gw2 = at::empty_like(gk2);
  RWKV_HF_DISPATCH_F(k.scalar_type(), "point_wkv", [&] {
    dispatch_w<F>(w, [&](auto fw) {
      using FW = decltype(fw);
      const PointBwd<F, FW> p{point_in<F, FW>(k, v, w), snap.data_ptr<float>(), gAp, gsTp,
                              gk2.data_ptr<float>(), gv2.data_ptr<float>(),
                              gw2.data_ptr<float>(), gs0.data_ptr<float>()};
      C10_CUDA_CHECK((point_backward_launch<F, FW>(p, c10::cuda::getCurrentCUDAStream())));
    });
  });
  at::add_out(gk, gk2[0], gk2[1]);
  at::add_out(gv, gv2[0], gv2[1]);
  at::add_out(gw, gw2[0], gw2[1]);
  return {gk, gv, gw, gs0};
}

at::Tensor farthest_point_sample(at::Tensor points, int64_t n) {
  check_cuda_tensor(points, "points");
  TORCH_CHECK(points.dim() == 3 && points.size(2) == 3,
              "rwkv_hf cuda farthest_point_sample: points must be [B, N, 3], got ", points.sizes());
  TORCH_CHECK(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
              "rwkv_hf cuda farthest_point_sample: points must be float32 or float64, got ",
              points.scalar_type());
  const int64_t B = points.size(0), N = points.size(1);
  TORCH_CHECK(n >= 1 && n <= N, "rwkv_hf cuda farthest_point_sample: n must be in [1, N = ", N,
              "], got ", n);
  TORCH_CHECK(3 * N < (int64_t)1 << 31 && B < (int64_t)1 << 31,
              "rwkv_hf cuda farthest_point_sample: input too large");
  const at::cuda::OptionalCUDAGuard guard(points.device());
  auto idx = at::empty({B, n}, points.options().dtype(at::kLong));
  if (B == 0) return idx;
  auto nearest = at::empty({B, N}, points.options());
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "farthest_point_sample", [&] {
    const FpsArgs<scalar_t> a{(int)B, (int)N, (int)n, points.data_ptr<scalar_t>(),
                              nearest.data_ptr<scalar_t>(), idx.data_ptr<int64_t>()};
    C10_CUDA_CHECK(fps_launch<scalar_t>(a, c10::cuda::getCurrentCUDAStream()));
  });
  return idx;
}

}  // namespace rwkv_hf
