"""What the task-queue benchmarks share: a throwaway redis-server on a
free loopback port, and a quantile."""
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
