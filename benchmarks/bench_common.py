"""What the CPU benchmarks share: alternated timing, the CPU's name, and writing their block of
RESULTS.md. (The scripts run as ``python benchmarks/bench_*.py``, so this folder is on their
path.)"""
import os
import platform
import re
import statistics
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def median_alternating(fns, runs):
    """{name: median seconds} of each callable: one warm-up each, then ``runs`` rounds with the
    callables alternated (A B A B), so machine drift hits all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            return m.group(1).strip() if m else platform.processor()
    except OSError:
        return platform.processor()


def write_results(section, block="ops", heading=None):
    """Put ``section`` between ``<!-- block:begin -->`` and ``<!-- block:end -->`` in RESULTS.md,
    in place of the previous one, or at the end (under ``heading``, a ``## `` line, if given)."""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n\n"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    with open(RESULTS, "w") as f:
        f.write(text)
