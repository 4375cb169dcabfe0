"""xthread against stdlib threading, side by side, as ratios.

Run from the repository root after ``pip install .``::

    python -m benchmarks            # quick: under a minute
    python -m benchmarks --full     # more rounds, for publishable figures
    python -m benchmarks --json out.json --plot out.png

Discipline (written out here instead of pyperf, because every figure is a
ratio of two implementations that must be measured in the same process,
interleaved, on a noisy 2-core machine; pyperf compares separate runs):

* a warm-up pass of each implementation, not recorded;
* each round times a calibrated batch of one implementation, then of the
  other (A B A B ...), so that drift in the machine hits both alike;
* the figure is the median over rounds, with p10 and p90; the ratio is
  xthread's median over stdlib's median from the same run.
"""
import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc

import xthread

from . import _pool, _stop

IMPLS = {"stdlib": threading.Thread, "xthread": xthread.Thread}


def _noop():
    pass


# Workloads: each takes the Thread class and a loop count and returns the
# seconds per operation.

def wl_start(cls, loops):
    threads = [cls(target=_noop) for _ in range(loops)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join()
    return elapsed / loops


def wl_start_join(cls, loops):
    t0 = time.perf_counter()
    for _ in range(loops):
        t = cls(target=_noop)
        t.start()
        t.join()
    return (time.perf_counter() - t0) / loops


def _burst(cls, count):
    go = threading.Event()
    threads = [cls(target=go.wait, args=(60,)) for _ in range(count)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def wl_burst(cls, loops):
    return sum(_burst(cls, 200) for _ in range(loops)) / loops


def wl_many(cls, loops):
    return sum(_burst(cls, 2000) for _ in range(loops)) / loops


def _per_class(fn):
    """A workload over Thread classes, as implementations."""
    return lambda: {name: (lambda loops, cls=cls: fn(cls, loops))
                    for name, cls in IMPLS.items()}


# name, implementations (first: the baseline), loops per round, target on
# the xthread figure: ("ratio", r) against the baseline, ("max", v) absolute.
WORKLOADS = [
    ("start", _per_class(wl_start), 200, ("ratio", 0.8)),
    ("start+join", _per_class(wl_start_join), 200, ("ratio", 0.8)),
    ("burst of 200", _per_class(wl_burst), 1, ("ratio", 1.0)),
    ("2000 threads", _per_class(wl_many), 1, ("ratio", 1.0)),
] + _stop.WORKLOADS + _pool.WORKLOADS


def measure(impls, loops, rounds):
    """Interleaved rounds of every implementation, the order alternating
    from round to round; returns the samples of each."""
    samples = {name: [] for name in impls}
    for fn in impls.values():
        fn(max(1, loops // 4))          # warm-up
    for r in range(rounds):
        order = list(impls.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            gc.collect()
            samples[name].append(fn(loops))
    return samples


def quantile(values, q):
    values = sorted(values)
    i = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[i]


def summarize(samples):
    return {
        "median": statistics.median(samples),
        "p10": quantile(samples, 0.10),
        "p90": quantile(samples, 0.90),
        "samples": samples,
    }


# Memory, each measured in a fresh subprocess so that one implementation's
# heap does not flatter or burden the other.

_RSS_SCRIPT = r"""
import sys, threading, xthread
cls = {"stdlib": threading.Thread, "xthread": xthread.Thread}[sys.argv[1]]
n = int(sys.argv[2])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
go = threading.Event()
warm = cls(target=go.wait); warm.start()
before = rss()
threads = [cls(target=go.wait) for _ in range(n)]
for t in threads:
    t.start()
after = rss()
go.set()
for t in threads + [warm]:
    t.join()
print((after - before) / n)
"""


def rss_per_thread(name, count=500):
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, name, str(count)],
        check=True, capture_output=True, text=True, timeout=120)
    return float(out.stdout)


def python_bytes_per_thread(cls, count=200):
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        threads = [cls(target=_noop) for _ in range(count)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del threads
    return (after - before) / count


def time_unit(seconds):
    """The unit to show a time in, and its scale."""
    if seconds < 1e-3:
        return "us", 1e6
    if seconds < 1:
        return "ms", 1e3
    return "s", 1.0


def fmt(value, unit_of):
    """Formats value in the unit chosen for unit_of ("B" for bytes)."""
    if unit_of is None:
        return "%.0f B" % value
    unit, scale = time_unit(unit_of)
    return "%.1f %s" % (value * scale, unit)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="xthread against stdlib threading, as ratios.")
    parser.add_argument("--full", action="store_true",
                        help="more rounds, for publishable figures")
    parser.add_argument("--json", metavar="FILE",
                        help="write the results as JSON")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw ratios and distributions (matplotlib)")
    parser.add_argument("-k", metavar="TEXT", dest="only",
                        help="run only the workloads whose name contains "
                             "TEXT")
    args = parser.parse_args(argv)
    rounds = 25 if args.full else 7
    mem_rounds = 5 if args.full else 2

    results = {
        "python": platform.python_version(),
        "machine": "%s, %d cores" % (platform.machine(), os.cpu_count()),
        "date": time.strftime("%Y-%m-%d"),
        "mode": "full" if args.full else "quick",
        "workloads": {},
    }
    workloads = [w for w in WORKLOADS if not args.only or args.only in w[0]]
    memory = not args.only or any(
        args.only in name
        for name in ("RSS per idle thread", "Python bytes per Thread"))
    steps = len(workloads) + (2 if memory else 0)
    step = 0

    def progress(name):
        nonlocal step
        step += 1
        print("\r[%d/%d] %-40s" % (step, steps, name), end="",
              file=sys.stderr, flush=True)

    for name, factory, loops, target in workloads:
        progress(name)
        impls = factory()
        latency = loops == 1 and target is not None and target[0] == "max"
        samples = measure(impls, loops,
                          rounds * (3 if latency else 1))
        results["workloads"][name] = {
            "unit": "s", "baseline": next(iter(impls)), "target": target,
            "impls": {impl: summarize(v) for impl, v in samples.items()}}

    if memory:
        measure_memory(results, mem_rounds, progress)
    print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        from ._plot import plot
        plot(results, args.plot)
    return 0


def measure_memory(results, mem_rounds, progress):
    progress("RSS per idle thread")
    rss = {impl: [] for impl in IMPLS}
    for _ in range(mem_rounds):
        for impl in IMPLS:
            rss[impl].append(rss_per_thread(impl))
    results["workloads"]["RSS per idle thread"] = {
        "unit": "B", "baseline": "stdlib", "target": ("ratio", 0.9),
        "impls": {impl: summarize(v) for impl, v in rss.items()}}

    progress("Python bytes per Thread")
    pyb = {impl: [python_bytes_per_thread(cls) for _ in range(3)]
           for impl, cls in IMPLS.items()}
    results["workloads"]["Python bytes per Thread"] = {
        "unit": "B", "baseline": "stdlib", "target": ("ratio", 0.5),
        "impls": {impl: summarize(v) for impl, v in pyb.items()}}


def report(results):
    print("xthread %s vs stdlib threading on CPython %s, %s, %s (%s mode)"
          % (xthread.__version__, results["python"], results["machine"],
             results["date"], results["mode"]))
    print("median (p10-p90) per implementation; ratio = xthread / first")
    missed = []
    for name, w in results["workloads"].items():
        impls = w["impls"]
        base = impls[w["baseline"]]["median"]
        x = impls["xthread"]["median"]
        ratio = x / base if base else float("nan")
        w["ratio"] = ratio
        target = w["target"]
        if target is None:
            verdict = ""
        elif target[0] == "ratio":
            ok = ratio <= target[1]
            verdict = "target ratio <= %g: %s" % (
                target[1], "ok" if ok else "MISSED")
        else:
            ok = x <= target[1]
            verdict = "target <= %s: %s" % (
                fmt(target[1], target[1]), "ok" if ok else "MISSED")
        if target is not None and not ok:
            missed.append(name)
        print("%s  ratio %.2f  %s" % (name, ratio, verdict))
        ref = base if w["unit"] == "s" else None
        for impl, v in impls.items():
            print("    %-24s %12s  (%s-%s)" % (
                impl, fmt(v["median"], ref), fmt(v["p10"], ref).split()[0],
                fmt(v["p90"], ref)))
    if missed:
        print("targets missed: %s" % ", ".join(missed))


if __name__ == "__main__":
    sys.exit(main())
