"""Running code in a fresh Python process under AddressSanitizer (ASan): the process preloads
the ASan runtime of the compiler that builds the project's C++ code, so that code built with
FLAGS (the emulated CUDA extension, the compiled CPU kernels) is stopped with a report at the
first read or write outside an allocation or a static array, or (UndefinedBehaviorSanitizer's
alignment check) at the first access through a pointer misaligned for its type. Uninstrumented
code (Python, torch) runs as usual; triton is kept out (its library aborts under ASan)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Without use-after-scope (a stack variable touched after its block ends, which none of these
# checks is about): it made the instrumented emulated kernels compile 1.6x slower.
FLAGS = ("-fsanitize=address,alignment", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
         "-fno-sanitize-address-use-after-scope")


def runtime():
    """Path of the AddressSanitizer runtime of $CXX (default c++, as torch and rwkv_hf use)."""
    cxx = os.environ.get("CXX", "c++")
    path = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.isfile(path):
        raise RuntimeError(f"{cxx} has no AddressSanitizer runtime (libasan.so): got {path!r}")
    return path


def run(code, *args, env=None, timeout=900):
    """Runs ``code`` (Python source; ``tests/`` is on sys.path, sys.argv[1:] = args) under ASan.
    Returns the CompletedProcess: a report, if any, is at the end of its stderr."""
    full_env = dict(os.environ, **(env or {}), LD_PRELOAD=runtime(), ASAN_OPTIONS="detect_leaks=0")
    prelude = f"import sys; sys.modules['triton'] = None; sys.path.insert(0, {HERE!r})\n"
    return subprocess.run([sys.executable, "-c", prelude + code, *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)
