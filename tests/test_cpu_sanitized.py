"""The compiled CPU code under AddressSanitizer: the ``cpu`` backend's kernels and the fused
inference blocks of the language and vision models and PointRWKV's sampling (cuda_ext/wkv_cpu.cpp,
lm_cpu.cpp, vision_cpu.cpp, point_cpu.cpp) read and write only inside the tensors they are given. The suite's tests of
that code run again in a process that builds it with ``-fsanitize=address`` (tests/sanitizer.py);
they keep comparing against the eager models and float64, so the run checks results too.
The build also forces the whole-row column blocks of the matrix-state kernels for head size 64
(-DRWKV_HF_ROW64, the default only with AVX-512), which the suite's own run does not reach on other
CPUs."""
import pytest

import sanitizer

# Set before anything loads the library: the ASan build, in a cache of its own.
_SETUP = """
import os
from rwkv_hf.ops import cpu_backend
cpu_backend._FLAGS = cpu_backend._FLAGS + sanitizer.FLAGS + ("-DRWKV_HF_ROW64",)
assert cpu_backend.load().rwkv_hf_wkv_cpu_whole_rows() == 1
"""

# Every test of the compiled CPU code (the rebuild-in-a-temp-dir test aside: it would compile
# the library once more).
_TESTS = ["tests/test_ops.py", "tests/test_lm_fused.py", "tests/test_vision.py",
          "-k", "(cpu or fused) and not unwritable"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from rwkv_hf.ops import cpu_backend

    return {cpu_backend.CACHE_ENV: str(tmp_path_factory.mktemp("cpu_asan")), "HF_HUB_OFFLINE": "1"}


def test_compiled_cpu_code_stays_inside_its_memory(cache):
    code = ("import sanitizer" + _SETUP + "import pytest\n"
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *sys.argv[1:]]))")
    run = sanitizer.run(code, *_TESTS, env=cache)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-6000:])
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and int(summary.split()[0]) >= 100, summary


def test_sanitizer_sees_the_cpu_kernels(cache):
    """The check above can fail: the RWKV-7 kernel told the sequence is one token longer than
    its tensors are is stopped with a heap-buffer-overflow report."""
    code = "import sanitizer" + _SETUP + """
from rwkv_hf import ops
from rwkv_hf.ops.random_inputs import make_inputs
real = cpu_backend._call
def one_token_more(name, dtype, *args):  # args: B, T, ...
    return real(name, dtype, args[0], args[1] + 1, *args[2:])
cpu_backend._call = one_token_more
ops.wkv7(**make_inputs("wkv7", 1, 17, 1, 16), backend="cpu")
print("not stopped")
"""
    run = sanitizer.run(code, env=cache)
    assert run.returncode != 0 and "not stopped" not in run.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in run.stderr and "wkv7" in run.stderr
