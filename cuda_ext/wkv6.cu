// RWKV-6: a decay per token, w [B, T, H, K]. The kernels and launchers are in wkv6.cuh.
#include "wkv6.cuh"

namespace rwkv_hf {

// w in float32, or in the activations' dtype (read as it is: no float32 copy of it).
#define RWKV_HF_WKV6(F, FW)                                                                  \
  template cudaError_t wkv6_forward_launch<F, FW, false>(const V6Fwd<F, FW>&, cudaStream_t);  \
  template cudaError_t wkv6_backward_launch<F, FW, false>(const V6Bwd<F, FW>&, cudaStream_t);
RWKV_HF_WKV6(float, float)
RWKV_HF_WKV6(c10::BFloat16, float)
RWKV_HF_WKV6(c10::BFloat16, c10::BFloat16)
RWKV_HF_WKV6(c10::Half, float)
RWKV_HF_WKV6(c10::Half, c10::Half)

}  // namespace rwkv_hf
