"""The benchmark runs: a smoke test of one quick workload, so that
``python -m benchmarks`` (README's main job) does not rot."""
import json
import pathlib
import subprocess
import sys

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
