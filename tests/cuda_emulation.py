"""Builds the CUDA extension's kernels for the CPU, under an emulation of the CUDA execution
model (``tests/cuda_emu/cuda_emu.h``), so that their logic is tested on machines without a GPU.

The sources in ``cuda_ext/`` are used as they are, with mechanical rewrites (each must apply,
or the build fails): the CUDA runtime headers give way to the emulation header, the host code's
"CUDA tensors" are CPU tensors (and its c10/cuda headers go: the emulation header stands in for
the stream, the device guard and the error check), and ``kernel<<<grid, block, smem,
stream>>>(args)`` becomes an emulated launch. The module has the extension's API
(``wkv7_forward``, ...) on CPU tensors.

What it shows: the kernels' indexing, staging, snapshot and chunk logic, the reductions and
the barriers (threads run in random order between barriers, so a missing ``__syncthreads``
shows as a wrong result) compute the float64 reference's values. What it cannot show: speed,
device-specific float behaviour (``expf`` precision, FMA contraction), memory-model effects
beyond barrier ordering, and launch limits of a real GPU.

``run_sanitized`` runs cases in a process under AddressSanitizer (tests/sanitizer.py): every
tensor a kernel is given, and every ``__shared__`` array (a static here), has redzones, so a
kernel that reads or writes one element outside them is stopped with a report (on a GPU such
a read returns a neighbour's data or faults).

``MUTANTS``: bugs planted in every build, each dormant unless ``$RWKV_HF_EMU_MUTANT`` names it,
so the tests that show these checks can fail need no build of their own (an instrumented
build takes minutes).
"""
import hashlib
import json
import os
import re
import sys

import torch

from rwkv_hf.ops import cuda_backend

HERE = os.path.dirname(os.path.abspath(__file__))
EMU_DIR = os.path.join(HERE, "cuda_emu")
KERNELS = ("wkv4.cu", "wkv5.cu", "wkv6.cu", "wkv7.cu", "point_wkv.cu", "fps.cu")
CACHE_ENV = "RWKV_HF_CUDA_EMU_CACHE"

MUTANT_ENV = "RWKV_HF_EMU_MUTANT"
# name: (id, file, exact text, its mutant, how often the text occurs there; the first is
# replaced). The mutant's ::emu::mutant(id) repeats the id.
MUTANTS = {
    # RWKV-7's backward sweep without the barrier between the threads' row partial sums and
    # their reduction.
    "missing_barrier": (1, "wkv7.cu",
                        "          __syncthreads();\n          for (int p = tid; p < RG * N; p += NT) {",
                        "          if (!::emu::mutant(1)) __syncthreads();\n"
                        "          for (int p = tid; p < RG * N; p += NT) {", 1),
    # RWKV-7's forward staging one token too many: past the end of the sequence in its last,
    # partial stage (the forward's staging comes first; then the backward's B1 and B2).
    "read_past_the_end": (2, "wkv7.cu", "    if (t0 + stt < tend) {",
                          "    if (t0 + stt < tend + ::emu::mutant(2)) {", 3),
    # RWKV-6's forward reading its keys from shared memory one float off: a 16-byte load from a
    # 4-byte-aligned address (a GPU refuses it with "misaligned address"; x86 would do it).
    "misaligned_load": (3, "wkv6.cuh", "ld4(&s_k[tt][row]), d4 =",
                        "ld4(&s_k[tt][row] + (::emu::mutant(3) && tt == 1)), d4 =", 1),
}

_LAUNCH = re.compile(r"([A-Za-z_]\w*\s*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)


def _sub(pattern, repl, text, what, count=0, literal=True):
    """Replace, and fail loudly when the pattern no longer occurs in the sources."""
    if literal:
        if pattern not in text:
            raise RuntimeError(f"cuda emulation: the rewrite '{what}' found nothing to rewrite")
        return text.replace(pattern, repl) if count == 0 else text.replace(pattern, repl, count)
    new, n = re.subn(pattern, repl, text)
    if n == 0:
        raise RuntimeError(f"cuda emulation: the rewrite '{what}' found nothing to rewrite")
    return new


def rewrite_launch_header(text):
    return _sub("#include <cuda_runtime_api.h>", '#include "cuda_emu.h"', text, "runtime API header")


def rewrite_device_header(text):
    text = _sub("#include <cuda_runtime.h>", '#include "cuda_emu.h"', text, "runtime header")
    return rewrite_kernels(text)


def rewrite_host(text):
    for inc in ("#include <c10/cuda/CUDAException.h>\n", "#include <c10/cuda/CUDAGuard.h>\n",
                "#include <c10/cuda/CUDAStream.h>\n"):
        text = _sub(inc, "", text, inc.strip())
    return _sub("x.is_cuda()", "x.is_cpu()", text, "CUDA tensors are CPU tensors")


def rewrite_kernels(text):
    return _sub(_LAUNCH, r"::emu::launcher(&\1, \2)(", text, "kernel launches", literal=False)


def sources():
    """{file name: rewritten text} of the package's ``cuda_ext``, kernels as .cpp files, with
    the MUTANTS planted."""
    src = cuda_backend.sources_dir()

    def read(name):
        with open(os.path.join(src, name)) as f:
            text = f.read()
        for what, (_, file, original, mutant, occurrences) in MUTANTS.items():
            if file == name:
                if text.count(original) != occurrences:
                    raise RuntimeError(f"cuda emulation: mutant {what!r}: its text occurs "
                                       f"{text.count(original)} times in {name}, not {occurrences}")
                text = text.replace(original, mutant, 1)
        return text

    out = {
        "wkv_launch.h": rewrite_launch_header(read("wkv_launch.h")),
        "wkv_common.h": rewrite_device_header(read("wkv_common.h")),
        "wkv_host.h": read("wkv_host.h"),
        "wkv_host.cpp": rewrite_host(read("wkv_host.cpp")),
        "wkv.cpp": read("wkv.cpp"),
        "wkv6.cuh": rewrite_kernels(read("wkv6.cuh")),
    }
    for name in KERNELS:  # wkv5.cu and wkv6.cu only instantiate wkv6.cuh's launchers
        text = read(name)
        out[name[:-3] + "_emu.cpp"] = text if name in ("wkv5.cu", "wkv6.cu") else rewrite_kernels(text)
    with open(os.path.join(EMU_DIR, "cuda_emu.h")) as f:
        out["cuda_emu.h"] = f.read()
    return out


def build(verbose=False, sanitize=False):
    """Compile (or reuse, cached by the rewritten sources) the emulated extension; return its
    module. ``sanitize``: built with sanitizer.FLAGS, for a process that preloads the ASan
    runtime (``run_sanitized``)."""
    from torch.utils import cpp_extension

    import sanitizer

    files = sources()
    asan = list(sanitizer.FLAGS) if sanitize else []
    # No contraction into fused multiply-adds: the GPU's __fmul_rn / __fadd_rn never contract.
    cflags = ["-O2", "-fno-strict-aliasing", "-ffp-contract=off"] + asan
    h = hashlib.sha256(f"py{sys.version_info[:2]}-torch{torch.__version__}-{cflags}".encode())
    for name in sorted(files):
        h.update(name.encode() + files[name].encode())
    key = h.hexdigest()[:12]
    root = cuda_backend.cache_root(CACHE_ENV, "cuda_emu")
    build_dir = os.path.join(root, key)
    src_dir = os.path.join(build_dir, "src")
    os.makedirs(src_dir, exist_ok=True)
    for name, text in files.items():
        path = os.path.join(src_dir, name)
        if not os.path.isfile(path) or open(path).read() != text:
            with open(path, "w") as f:
                f.write(text)
    cuda_backend._ensure_ninja()
    return cpp_extension.load(
        name=f"rwkv_hf_wkv_emu_{key}",
        sources=[os.path.join(src_dir, n) for n in files if n.endswith(".cpp")],
        extra_include_paths=[src_dir],
        extra_cflags=cflags,
        extra_ldflags=asan,
        build_directory=build_dir,
        verbose=verbose,
        with_cuda=False,
    )


def run_sanitized(cases, mutant=None):
    """Runs each (op, B, T, H, N, dtype name, chunk[, misaligned]) forward and backward
    through the cuda backend on the emulated extension built with sanitizer.FLAGS
    (AddressSanitizer and the alignment check), in a fresh process (tests/sanitizer.py);
    ``misaligned``: every per-token input starts one element into its storage; a case
    ("farthest_point_sample", B, N, n, dtype name) samples a random cloud and compares the
    indices with the torch form's; ``mutant``: a
    key of MUTANTS to switch on. Returns the CompletedProcess (returncode 0: no out-of-bounds
    or misaligned access, every output and gradient finite; otherwise its report in stderr)."""
    import sanitizer

    env = {MUTANT_ENV: str(MUTANTS[mutant][0])} if mutant else {}
    return sanitizer.run("import cuda_emulation; cuda_emulation._sanitized_main()",
                         json.dumps({"cases": cases}), env=env)


def _off_grid(t):
    """A contiguous copy of t whose data starts one element into its storage (off the 16-byte
    grid the extension's vector loads need)."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype)[1:].view(t.shape)
    return out.copy_(t)


def _sanitized_main():
    from rwkv_hf import ops
    from rwkv_hf.ops.random_inputs import make_inputs

    job = json.loads(sys.argv[1])
    cuda_backend._ext = build(sanitize=True)
    cuda_backend._act_dtype = lambda op, *xs: xs[0].dtype
    ops._choose = lambda op, requested, tensors: requested or "cuda"
    for op, B, T, H, N, dtype, chunk, *misaligned in (c for c in job["cases"] if c[0] != "farthest_point_sample"):
        os.environ[cuda_backend.CHUNK_ENV] = str(chunk)
        x = make_inputs(op, B, T, H, N, dtype=getattr(torch, dtype), state=True, seed=T + N)
        x = {n: (t.float() if n == "state" else t) for n, t in x.items()}
        if misaligned and misaligned[0]:  # per-token inputs one element into their storage
            x = {n: _off_grid(t) if t.dim() == 4 and n != "state" else t for n, t in x.items()}
        x = {n: t.requires_grad_() for n, t in x.items()}
        y, s = getattr(ops, op)(**x, output_final_state=True)
        grads = torch.autograd.grad([y, s], list(x.values()), [torch.ones_like(y), torch.ones_like(s)])
        for name, t in [("y", y), ("state", s)] + list(zip(["d" + n for n in x], grads)):
            if not torch.isfinite(t.double()).all():
                sys.exit(f"{op} {B} {T} {H} {N} {dtype} chunk {chunk}: {name} is not finite")
        print(op, B, T, H, N, dtype, chunk, "ok", flush=True)
    for _, B, N, n, dtype in (c for c in job["cases"] if c[0] == "farthest_point_sample"):
        points = torch.randn(B, N, 3, generator=torch.Generator().manual_seed(N), dtype=getattr(torch, dtype))
        idx = ops.farthest_point_sample(points, n)
        if not torch.equal(idx, ops.farthest_point_sample(points, n, backend="torch")):
            sys.exit(f"farthest_point_sample {B} {N} {n} {dtype}: not the torch form's points")
        print("farthest_point_sample", B, N, n, dtype, "ok", flush=True)
