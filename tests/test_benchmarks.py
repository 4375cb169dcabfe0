"""The benchmark runs: a smoke test of one quick workload, so that
``python -m benchmarks`` (README's main job) does not rot."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "-k", "start+join",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "start+join  ratio" in proc.stdout
    results = json.loads(out.read_text())
    workload = results["workloads"]["start+join"]
    assert set(workload["impls"]) == {"stdlib", "xthread"}
    assert workload["impls"]["xthread"]["median"] > 0
    assert workload["ratio"] > 0


def _task_queue_benchmark(tmp_path, queue):
    """Runs ``python -m benchmarks.<queue>`` for one small round where the
    task queue, redis-py and redis-server are there (CI's cpython-3.12
    job); returns its JSON figures."""
    pytest.importorskip(queue)
    pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server")
    out = tmp_path / f"{queue}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{queue}", "--rounds", "1",
         "--messages", "100", "--spins", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "throughput ratio" in proc.stdout
    results = json.loads(out.read_text())
    assert results["throughput_ratio"] > 0
    return results


def test_dramatiq_benchmark_runs_on_redis(tmp_path):
    """``python -m benchmarks.dramatiq``: every limit fires with both."""
    results = _task_queue_benchmark(tmp_path, "dramatiq")
    for impl in ("stock", "xthread"):
        figures = results["impls"][impl]
        assert figures["messages_per_s"] > 0
        assert len(figures["late_ms"]) == 2      # every limit fired
        assert len(figures["all_stuck_late_ms"]) == 2


def test_celery_benchmark_runs_on_redis(tmp_path):
    """``python -m benchmarks.celery``: Celery's own thread pool never
    enforces the limits, xthread's always does."""
    results = _task_queue_benchmark(tmp_path, "celery")
    for kind in ("soft_late", "hard_late", "all_stuck_hard_late"):
        stock = results["impls"]["stock"][kind]
        ours = results["impls"]["xthread"][kind]
        assert (stock["not_stopped"], stock["of"]) == (2, 2)
        assert (ours["not_stopped"], ours["of"]) == (0, 2)
        assert ours["p99_ms"] is not None
