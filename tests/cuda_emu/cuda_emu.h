// A CPU emulation of the CUDA execution model, enough to run cuda_ext's kernels on the host
// (tests/cuda_emulation.py builds them with it). Every CUDA thread of a block is a fiber
// (ucontext) on the calling OS thread; blocks of a grid run one after another.
//
// Scheduling, chosen to expose missing barriers rather than hide them:
//   * between two __syncthreads, the block's warps run one at a time, in a random order;
//   * inside a warp, the lanes run one at a time, in a random order, up to the next
//     __shfl_xor_sync, where they exchange values (a lane that reads a value another lane has
//     not written yet is impossible by construction, as on the GPU);
//   * every thread of a block must reach the same barriers (__syncthreads: the block's;
//     __shfl_xor_sync with a full mask: the warp's) or return together; anything else is
//     reported as divergence (a deadlock or undefined result on a GPU).
// __shared__ variables become function statics: shared by the fibers of the running block,
// and, since blocks run one at a time, private to it. They are not reset between blocks.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// Launch errors: an emulated launch throws instead (the host's C10_CUDA_CHECK then has nothing
// to report).
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
#define C10_CUDA_CHECK(EXPR)                                                             \
  do {                                                                                  \
    if ((EXPR) != cudaSuccess) throw std::runtime_error("emulated CUDA call failed: " #EXPR); \
  } while (0)

struct alignas(16) float4 { float x, y, z, w; };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = int;
// Streams and events: launches run at once, in program order, so there is nothing to order.
using cudaEvent_t = int;
constexpr unsigned cudaEventDisableTiming = 2;
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { *e = 0; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
constexpr unsigned cudaStreamNonBlocking = 1;
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = 1; return cudaSuccess; }

// The device's integer and mixed min / max (CUDA overloads them in the global namespace).
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

namespace at { namespace cuda {
struct OptionalCUDAGuard {  // the emulated device is the host: nothing to switch
  template <typename D> explicit OptionalCUDAGuard(const D&) {}
};
}}  // namespace at::cuda
namespace c10 { namespace cuda {
inline cudaStream_t getCurrentCUDAStream() { return 0; }
struct CUDAStream {
  cudaStream_t s;
  cudaStream_t stream() const { return s; }
};
inline CUDAStream getStreamFromExternal(cudaStream_t s, int) { return {s}; }
inline signed char current_device() { return 0; }
struct CUDAStreamGuard {
  explicit CUDAStreamGuard(const CUDAStream&) {}
};
}}  // namespace c10::cuda

namespace emu {

enum Why { kRunning, kSync, kShfl, kDone };

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  Why why = kRunning;
};

struct Block {
  ucontext_t sched;
  std::vector<Fiber> fibers;
  std::vector<double> slots[2];  // shuffle values (float, double or int), double-buffered by warp round parity
  std::vector<int> warp_round;
  int current = 0;
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
  std::mt19937 rng{12345};
  std::string error;
};

inline Block& block() {
  static Block b;
  return b;
}
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

// Planted by tests/cuda_emulation.py's MUTANTS at a few places of the kernels: true only while
// $RWKV_HF_EMU_MUTANT names that id (read at each launch), so that a test breaks a kernel on
// purpose (drops a barrier, reads past the end) in the build every other test uses.
inline int active_mutant = 0;
inline bool mutant(int id) { return active_mutant == id; }

inline void fail(const std::string& what) {
  if (block().error.empty()) block().error = what;
}

inline void yield(Why why) {
  Block& b = block();
  Fiber& f = b.fibers[b.current];
  f.why = why;
  swapcontext(&f.ctx, &b.sched);
}

inline void trampoline() {
  Block& b = block();
  b.body(b.arg);
  b.fibers[b.current].why = kDone;
  // returning resumes uc_link: the scheduler
}

inline void resume(int t) {
  Block& b = block();
  b.current = t;
  threadIdx = dim3(t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y));
  b.fibers[t].why = kRunning;
  swapcontext(&b.sched, &b.fibers[t].ctx);
}

// Runs lanes [lo, hi) of one warp until each waits at __syncthreads or has returned.
inline void run_warp(int w, int lo, int hi) {
  Block& b = block();
  std::vector<int> lanes;
  for (;;) {
    lanes.clear();
    for (int t = lo; t < hi; ++t)
      if (b.fibers[t].why == kRunning || b.fibers[t].why == kShfl) lanes.push_back(t);
    if (lanes.empty()) return;
    std::shuffle(lanes.begin(), lanes.end(), b.rng);
    for (int t : lanes) resume(t);
    int shfl = 0;
    for (int t = lo; t < hi; ++t) shfl += b.fibers[t].why == kShfl;
    if (shfl != 0 && shfl != hi - lo) {
      fail("divergence: only " + std::to_string(shfl) + " of " + std::to_string(hi - lo) +
           " lanes of warp " + std::to_string(w) + " reached __shfl_xor_sync");
      return;
    }
    ++b.warp_round[w];
  }
}

// Runs one block of `threads` threads of body(arg) to completion.
inline void run_block(int threads, void (*body)(void*), void* arg) {
  Block& b = block();
  constexpr size_t kStack = 256 * 1024;
  if ((int)b.fibers.size() < threads) b.fibers.resize(threads);
  for (auto& s : b.slots) s.assign(threads, NAN);
  const int warps = (threads + 31) / 32;
  b.warp_round.assign(warps, 0);
  b.body = body;
  b.arg = arg;
  for (int t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    if (f.stack.empty()) f.stack.resize(kStack);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &b.sched;
    makecontext(&f.ctx, trampoline, 0);
    f.why = kRunning;
  }
  std::vector<int> order(warps);
  for (;;) {
    for (int w = 0; w < warps; ++w) order[w] = w;
    std::shuffle(order.begin(), order.end(), b.rng);
    for (int w : order) {
      run_warp(w, w * 32, std::min(threads, w * 32 + 32));
      if (!b.error.empty()) return;
    }
    int done = 0;
    for (int t = 0; t < threads; ++t) done += b.fibers[t].why == kDone;
    if (done == threads) return;
    if (done != 0) {
      fail("divergence: " + std::to_string(done) + " of " + std::to_string(threads) +
           " threads returned while the others wait at __syncthreads");
      return;
    }
    for (int t = 0; t < threads; ++t) b.fibers[t].why = kRunning;  // all passed the barrier
  }
}

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, blk;
  template <typename... A>
  void operator()(A&&... args) const {
    std::tuple<std::decay_t<P>...> packed(static_cast<P>(args)...);
    struct Call {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...>* args;
    } call{kernel, &packed};
    auto body = [](void* p) {
      Call* c = static_cast<Call*>(p);
      std::apply(c->kernel, *c->args);
    };
    const int threads = blk.x * blk.y * blk.z;
    if (threads <= 0 || threads > 1024) throw std::runtime_error("emulated launch: bad block size");
    blockDim = blk;
    gridDim = grid;
    Block& b = block();
    b.error.clear();
    const char* chosen = std::getenv("RWKV_HF_EMU_MUTANT");
    active_mutant = chosen ? std::atoi(chosen) : 0;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = dim3(x, y, z);
          run_block(threads, body, &call);
          if (!b.error.empty())
            throw std::runtime_error("emulated kernel, block (" + std::to_string(x) + ", " +
                                     std::to_string(y) + ", " + std::to_string(z) + "): " + b.error);
        }
  }
};

template <typename... P>
Launch<P...> launcher(void (*kernel)(P...), dim3 grid, dim3 blk, size_t = 0, cudaStream_t = 0) {
  return Launch<P...>{kernel, grid, blk};
}

}  // namespace emu

using emu::blockDim;
using emu::blockIdx;
using emu::gridDim;
using emu::threadIdx;

inline void __syncthreads() { emu::yield(emu::kSync); }

// Full-mask butterfly shuffle inside a warp: every lane of the warp must call it. T: float,
// double or int (each held exactly in a double).
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T x, int lane_mask) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value || std::is_same<T, int>::value,
                "__shfl_xor_sync: only float, double and int are emulated");
  emu::Block& b = emu::block();
  const int t = b.current, w = t / 32;
  if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync: only the full mask is emulated");
  const int parity = b.warp_round[w] & 1;
  b.slots[parity][t] = static_cast<double>(x);
  emu::yield(emu::kShfl);
  const int src = (t & ~31) | ((t & 31) ^ lane_mask);
  if (src >= (int)b.slots[parity].size()) {
    emu::fail("__shfl_xor_sync: source lane outside the block");
    return T();
  }
  return static_cast<T>(b.slots[parity][src]);
}

// Correctly rounded arithmetic, never contracted (tests/cuda_emulation.py builds with
// -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
