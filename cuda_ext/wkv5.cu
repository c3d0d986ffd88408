// RWKV-5: one decay for every token, w [H, K], read in place. The kernels and launchers
// are in wkv6.cuh.
#include "wkv6.cuh"

namespace rwkv_hf {

// The decay [H, K] in float32 (the host casts it: a few values).
#define RWKV_HF_WKV5(F)                                                                        \
  template cudaError_t wkv6_forward_launch<F, float, true>(const V6Fwd<F, float>&, cudaStream_t); \
  template cudaError_t wkv6_backward_launch<F, float, true>(const V6Bwd<F, float>&, cudaStream_t);
RWKV_HF_WKV5(float)
RWKV_HF_WKV5(c10::BFloat16)
RWKV_HF_WKV5(c10::Half)

}  // namespace rwkv_hf
