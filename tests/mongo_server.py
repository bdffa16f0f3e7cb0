"""A real MongoDB wire-protocol server for the tests: SecantusDB on 127.0.0.1.

mongomock does not count for the production tests (it is one process and no network), so
the MongoDB, GridFS and FireWorks tests talk to ``secantusd-py`` started here on a free
port with its own storage folder. ``kill()`` is kill -9; ``start()`` again reopens the same
folder on the same port, which is how the tests restart the database mid-run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pymongo


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MongoTestServer:
    """One SecantusDB process bound to 127.0.0.1 (start, kill -9, restart, stop)."""

    host = "127.0.0.1"

    def __init__(self, storage: str | Path, port: int | None = None) -> None:
        self.storage = Path(storage)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.log = self.storage.parent / f"secantusd-{self.port}.log"

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> MongoTestServer:
        executable = shutil.which("secantusd-py")
        if executable is None:
            raise RuntimeError("secantusd-py not found: pip install 'secantusdb==0.7.0b3' "
                               "(it is in the test extra)")
        self.storage.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [executable, "--host", self.host, "--port", str(self.port),
                 "--storage-path", str(self.storage), "--log-level", "WARNING", "--sync-on-commit"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {self.process.returncode}; "
                                   f"log: {self.log.read_text()[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"secantusd-py did not answer on {self.uri} within {timeout} s")

    def ping(self) -> bool:
        client = pymongo.MongoClient(self.host, self.port, serverSelectionTimeoutMS=500,
                                     connectTimeoutMS=500)
        try:
            client.admin.command("ping")
            return True
        except pymongo.errors.PyMongoError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """kill -9, as a crashed server."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        self.process = None

    def client(self) -> pymongo.MongoClient:
        return pymongo.MongoClient(self.host, self.port, serverSelectionTimeoutMS=10000)
