"""The CUDA extension compiles on a machine without a GPU (for the architectures of the A100
and H100), through the same code path as ``rwkv-hf build-cuda``. One compile, a few minutes."""
import os

from rwkv_hf.ops import cuda_backend


def test_cuda_extension_builds_for_sm80_and_sm90(tmp_path, monkeypatch):
    monkeypatch.setenv(cuda_backend.CACHE_ENV, str(tmp_path))
    assert cuda_backend.find_cuda_home() is not None, "nvcc (the CUDA toolkit) is needed to build"
    path = cuda_backend.build(("8.0", "9.0"))
    assert os.path.isfile(path) and os.path.getsize(path) > 0
    assert path.startswith(str(tmp_path))
    # The module exposes the kernels' entry points (importing it needs no GPU).
    mod = cuda_backend._import_built(os.path.splitext(os.path.basename(path))[0].split(".")[0], path)
    for name in ("wkv4_forward", "wkv4_backward", "bi_wkv4_forward", "bi_wkv4_backward",
                 "wkv6_forward", "wkv6_backward", "wkv7_forward", "wkv7_backward",
                 "point_forward", "point_backward", "farthest_point_sample"):
        assert hasattr(mod, name)
    # A later load() on an sm_80 or sm_90 GPU finds this build instead of compiling again.
    assert cuda_backend._find_prebuilt(["9.0"]) is not None
    assert cuda_backend._find_prebuilt(["8.0"]) is not None
