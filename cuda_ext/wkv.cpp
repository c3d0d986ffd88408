// Python bindings of the rwkv_hf WKV extension. The autograd Functions, dtype handling and
// the public signatures live in rwkv_hf/ops/cuda_backend.py; these are the raw kernels.
// torch's pybind11 header (the Tensor casters) rather than torch/extension.h, which would pull
// in all of libtorch's C++ API and triple this file's compile time.
#include <torch/csrc/utils/pybind.h>

#include "wkv_host.h"
#include "wkv_launch.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rwkv_hf WKV CUDA kernels (RWKV-4, bidirectional v4, RWKV-5/6, RWKV-7, PointRWKV's scans and sampling)";
  m.attr("SNAP_CHUNK") = rwkv_hf::kSnap;
  m.def("wkv4_forward", &rwkv_hf::wkv4_forward,
        "wkv4 forward -> (y, final_state, states entering each chunk); chunk: tokens per chunk "
        "of the scan, 0 for one chunk",
        py::arg("k"), py::arg("v"), py::arg("w"), py::arg("u"), py::arg("state"),
        py::arg("chunk") = 0);
  m.def("wkv4_backward", &rwkv_hf::wkv4_backward,
        "wkv4 backward -> (gk, gv, gw partials [B, chunks, C], gu partials, gstate), float32",
        py::arg("k"), py::arg("v"), py::arg("w"), py::arg("u"), py::arg("enter"),
        py::arg("final_state"), py::arg("gy"), py::arg("gstate"), py::arg("chunk") = 0);
  m.def("bi_wkv4_forward", &rwkv_hf::bi_wkv4_forward,
        "bi_wkv4 forward -> (y, final_state, states entering each chunk from either side)",
        py::arg("k"), py::arg("v"), py::arg("w"), py::arg("u"), py::arg("state"),
        py::arg("chunk") = 0);
  m.def("bi_wkv4_backward", &rwkv_hf::bi_wkv4_backward,
        "bi_wkv4 backward -> (gk, gv, gw partials [B, chunks, C], gu partials, gstate), float32",
        py::arg("k"), py::arg("v"), py::arg("w"), py::arg("u"), py::arg("enter"),
        py::arg("final_state"), py::arg("gy"), py::arg("gstate"), py::arg("chunk") = 0);
  m.def("wkv6_forward", &rwkv_hf::wkv6_forward,
        "wkv6 forward -> (y, final_state, snapshots, chunk transitions); chunk: tokens per chunk "
        "of the chunk-parallel form, 0 for one sequential pass; reverse: scan from the last token; "
        "out_f32: y in float32; add: [] or [float32 tensor added to y before the rounding]; "
        "state empty: zero",
        py::arg("r"), py::arg("k"), py::arg("v"), py::arg("w"), py::arg("u"), py::arg("state"),
        py::arg("save"), py::arg("chunk") = 0, py::arg("reverse") = false,
        py::arg("out_f32") = false, py::arg("add") = std::vector<at::Tensor>());
  m.def("wkv6_backward", &rwkv_hf::wkv6_backward,
        "wkv6 backward -> (gr, gk, gv, gw [B, T, H, K] in w's dtype, gu partials float32, gstate); "
        "out_f32: gr, gk, gv in float32; add: [] or [gr, gk, gv] float32 added before the "
        "rounding; gstate (the final state's gradient) empty: zero",
        py::arg("r"), py::arg("k"), py::arg("v"), py::arg("w"), py::arg("u"),
        py::arg("snapshots"), py::arg("transitions"), py::arg("gy"), py::arg("gstate"),
        py::arg("chunk") = 0, py::arg("reverse") = false, py::arg("out_f32") = false,
        py::arg("add") = std::vector<at::Tensor>());
  m.def("bi_wkv6_forward", &rwkv_hf::bi_wkv6_forward,
        "bi_wkv6 forward, both halves -> (y, final_state [B, 2, H, K, V], snapshots and chunk "
        "transitions of the left-to-right half, then of the right-to-left half); concurrent: "
        "the halves at once, on two streams; state empty: zero",
        py::arg("r"), py::arg("k"), py::arg("v"), py::arg("w"), py::arg("u"), py::arg("state"),
        py::arg("save"), py::arg("chunk") = 0, py::arg("concurrent") = false);
  m.def("bi_wkv6_backward", &rwkv_hf::bi_wkv6_backward,
        "bi_wkv6 backward -> (gr, gk, gv, gw in w's dtype, gu partials float32 [B, T/64, H, K], "
        "gstate [B, 2, H, K, V]); gstate in: [B, 2, H, K, V], or empty: zero",
        py::arg("r"), py::arg("k"), py::arg("v"), py::arg("w"), py::arg("u"),
        py::arg("snapshots_f"), py::arg("transitions_f"), py::arg("snapshots_b"),
        py::arg("transitions_b"), py::arg("gy"), py::arg("gstate"), py::arg("chunk") = 0,
        py::arg("concurrent") = false);
  m.def("wkv7_forward", &rwkv_hf::wkv7_forward,
        "wkv7 forward -> (y, final_state, snapshots, sa, chunk transitions); chunk: tokens per "
        "chunk of the chunk-parallel form, 0 for one sequential pass; state empty: zero",
        py::arg("r"), py::arg("k"), py::arg("v"), py::arg("w"), py::arg("a"), py::arg("b"),
        py::arg("state"), py::arg("save"), py::arg("chunk") = 0);
  m.def("wkv7_backward", &rwkv_hf::wkv7_backward,
        "wkv7 backward -> (gr, gk, gv, gw in w's dtype, ga, gb, gstate); gstate in empty: zero",
        py::arg("r"), py::arg("k"), py::arg("v"), py::arg("w"), py::arg("a"), py::arg("b"),
        py::arg("snapshots"), py::arg("sa"), py::arg("transitions"), py::arg("gy"),
        py::arg("gstate"), py::arg("chunk") = 0);
  m.def("point_forward", &rwkv_hf::point_forward,
        "point_wkv's two scans -> (A [2, B, T, H, K] float32, final_state [B, 2, H, K, K], "
        "snapshots (empty unless save)); state empty: zero",
        py::arg("k"), py::arg("v"), py::arg("w"), py::arg("state"), py::arg("save"));
  m.def("point_backward", &rwkv_hf::point_backward,
        "point_wkv backward -> (gk, gv, gw in w's dtype, gstate [B, 2, H, K, K]), the directions "
        "summed in float32 and rounded once; gA, gstate in empty: zero",
        py::arg("k"), py::arg("v"), py::arg("w"), py::arg("snapshots"), py::arg("gA"),
        py::arg("gstate"));
  m.def("farthest_point_sample", &rwkv_hf::farthest_point_sample,
        "farthest point sampling -> indices [B, n] int64 of points [B, N, 3] (float32 or float64)",
        py::arg("points"), py::arg("n"));
}
