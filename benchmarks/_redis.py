"""What the task-queue benchmarks share: a throwaway redis-server on a
free loopback port, a quantile, and the closing lines of a run."""
import argparse
import json
import shutil
import socket
import subprocess
import time


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` (Debian: ``apt-get install redis-server``) on a
    free loopback port, with nothing saved to disk; ``close()`` stops it."""

    def __init__(self, tmpdir):
        import redis
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("needs redis-server on the PATH")
        port = _free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmpdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    self.close()
                    raise
                time.sleep(0.02)
        client.close()

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)


def quantile(values, q):
    """The value at quantile q of values (nearest rank); None if empty."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def finish(result, p99_ms, json_path):
    """Prints how the run met the two targets (throughput ratio at least
    0.97, xthread's p99 lateness with one task stuck under 10 ms), and
    writes *result* to *json_path* if given."""
    ratio = result["throughput_ratio"]
    print(f"  throughput ratio {ratio:.3f} (target >= 0.97: "
          f"{'met' if ratio >= 0.97 else 'missed'}); xthread p99 late, one "
          f"stuck, {p99_ms:.1f} ms (target < 10: "
          f"{'met' if p99_ms < 10 else 'missed'})")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)


def parse_args(prog, limited, argv):
    """The options both task-queue benchmarks take; *limited* names what
    runs under a limit (tasks, actors)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--spins", type=int, default=8,
                        help=f"limited {limited} of each kind per round "
                             f"(default 8)")
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args(argv)
