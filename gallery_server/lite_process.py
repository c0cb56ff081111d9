"""A ``milvus-lite server`` subprocess on loopback, for the Milvus backend's tests and benchmarks.

    server = LiteServer(work / "milvus-data", free_port()).start()   # http://127.0.0.1:PORT, ready
    ...
    server.stop()

Milvus Lite's server listens on 0.0.0.0 by default; this always passes ``--host 127.0.0.1``. Its output goes to
``milvus-lite-PORT.log`` beside the data directory (the tail is in the error when it does not start).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiteServer:
    data_dir: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir).parent / f"milvus-lite-{self.port}.log"

    def start(self, timeout: float = 60.0) -> "LiteServer":
        """``milvus-lite server`` on loopback (its default host is 0.0.0.0: never that), ready when it accepts."""
        Path(self.data_dir).parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                text = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"milvus-lite server did not start:\n{text}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
