// RWKV-5: one decay for every token, w [H, K], read in place. The kernels and launchers
// are in wkv6.cuh.
#include "wkv6.cuh"

namespace rwkv_hf {

#define RWKV_HF_WKV6(F)                                                                  \
  template cudaError_t wkv6_forward_launch<F, true>(const V6Fwd<F>&, cudaStream_t);      \
  template cudaError_t wkv6_backward_launch<F, true>(const V6Bwd<F>&, cudaStream_t);
RWKV_HF_WKV6(float)
RWKV_HF_WKV6(c10::BFloat16)
RWKV_HF_WKV6(c10::Half)

}  // namespace rwkv_hf
