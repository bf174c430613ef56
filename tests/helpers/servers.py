"""Real servers in subprocesses on free 127.0.0.1 ports: python -m serving.model_server
(ServerProcess, running_server) and the Gradio app (AppProcess), with what tests wait and poll
with."""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import requests

from tests.helpers import REPO

MODEL_NAME = "captioner"
# The serving tests run on the stand-in model unless SERVING_MODEL_BASE names a real export.
IS_STANDIN = not os.environ.get("SERVING_MODEL_BASE")
SERVER_START_TIMEOUT = 120  # seconds; loading the real model on 2 busy cores takes a while


def copy_model_base(source_base: str, target_base: str, versions=(1,)) -> str:
    """A private, writable copy of some versions of a model base (for tests that add versions)."""
    os.makedirs(target_base, exist_ok=True)
    for version in versions:
        shutil.copytree(os.path.join(source_base, str(version)), os.path.join(target_base, str(version)))
    return target_base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    return env


class ServerProcess:
    """python -m serving.model_server in a subprocess on free ports; log in log_path."""

    def __init__(self, log_path: str, *flags: str, base: str | None = None, rest_port: int | None = None,
                 grpc_port: int | None = None):
        self.rest_port = rest_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.log_path = log_path
        self.command = [sys.executable, "-m", "serving.model_server", f"--port={self.grpc_port}",
                        f"--rest_api_port={self.rest_port}", *flags]
        if base:
            self.command += [f"--model_name={MODEL_NAME}", f"--model_base_path={base}"]
        self.process = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, wait: bool = True) -> "ServerProcess":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, cwd=REPO, env=subprocess_env(),
                                        stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"model server exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if requests.get(f"{self.rest_url}/v1/models/{MODEL_NAME}", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"model server not ready after {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Sends sig (SIGTERM or SIGINT); returns the exit code (0 for a clean shutdown)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


@contextlib.contextmanager
def running_server(log_path: str, *flags: str, base: str | None = None):
    """A ready server for the with-block; checks it shuts down cleanly (exit 0) afterwards."""
    server = ServerProcess(log_path, *flags, base=base).start()
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"server exited with {code}:\n{server.log_text()[-3000:]}"


def wait_for(condition, timeout: float = 60, interval: float = 0.3, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def available_versions(rest_url: str) -> list[int]:
    response = requests.get(f"{rest_url}/v1/models/{MODEL_NAME}", timeout=5)
    if response.status_code != 200:
        return []
    return sorted(int(s["version"]) for s in response.json()["model_version_status"]
                  if s["state"] == "AVAILABLE")


class AppProcess:
    """python -m serving.app talking to `server` (a REST URL, or HOST:PORT with transport="grpc")."""

    def __init__(self, server: str, log_path: str, examples: str | None = None, transport: str = "rest"):
        self.port = free_port()
        command = [sys.executable, "-m", "serving.app", f"--{transport}", server, "--port", str(self.port)]
        if examples:
            command += ["--examples", examples]
        self._log = open(log_path, "wb")
        self.log_path = log_path
        self.process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app exited: {open(log_path).read()[-2000:]}")
            try:
                if requests.get(self.url, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"app not up: {open(log_path).read()[-2000:]}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()
