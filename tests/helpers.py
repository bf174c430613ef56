"""Helpers the tests share (fixtures live in the conftest.py files): test images, real model
servers and Gradio apps in subprocesses on free 127.0.0.1 ports, checks of an exported graph's
ops against TensorFlow's own registry, and a run's captions computed in process (what an export
of it must serve)."""
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import requests
from PIL import Image

from export import contract

REPO = Path(__file__).resolve().parents[1]  # the checkout: cwd and PYTHONPATH of subprocesses
MODEL_NAME = "captioner"
# The serving tests run on the stand-in model unless SERVING_MODEL_BASE names a real export.
IS_STANDIN = not os.environ.get("SERVING_MODEL_BASE")
SIGNATURES = set(contract.SIGNATURES)  # of every export
SERVER_START_TIMEOUT = 120  # seconds; loading the real model on 2 busy cores takes a while


# --- images --------------------------------------------------------------------------------------
def image_bytes(rgb=(220, 30, 30), size=(64, 48), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, fmt)
    return buffer.getvalue()


RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 180, 30)


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


SALMON = (255, 120, 120)
RED_CORNER = 0.65  # fraction of the width and height the red block covers, from the top-left


def red_corner_image(size=(320, 200), fmt="PNG") -> bytes:
    """A red block over the top-left 65% x 65% of a salmon image. Its mean colour is nearest red,
    so the stand-in says "a red image"; the attention stand-in's "red" map lies on the block."""
    image = Image.new("RGB", size, SALMON)
    image.paste(RED, (0, 0, round(size[0] * RED_CORNER), round(size[1] * RED_CORNER)))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def hostile_images() -> dict[str, bytes]:
    good_png = image_bytes(GREEN)
    return {"empty": b"", "text": b"hello, I am not an image\n",
            "truncated_png": good_png[:len(good_png) // 2], "huge_pixels_png": huge_png_header()}


def copy_model_base(source_base: str, target_base: str, versions=(1,)) -> str:
    """A private, writable copy of some versions of a model base (for tests that add versions)."""
    os.makedirs(target_base, exist_ok=True)
    for version in versions:
        shutil.copytree(os.path.join(source_base, str(version)), os.path.join(target_base, str(version)))
    return target_base


# --- servers -------------------------------------------------------------------------------------
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


# --- the Gradio app ------------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = os.path.join(REPO, "tests", "artifacts")


@contextlib.contextmanager
def captioned_page(url: str, image_path, screenshot: str, beam: bool = False):
    """A Chromium page of the Gradio app at `url` after uploading `image_path` (and choosing beam
    search) and pressing Caption; tests wait there for what they read. On leaving, the full page
    goes to tests/artifacts/<screenshot> and the browser closes."""
    from playwright.sync_api import sync_playwright
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="networkidle")
            page.locator("#image input[type=file]").set_input_files(str(image_path))
            page.locator("#image img").first.wait_for(timeout=30000)  # upload done, preview shown
            if beam:
                page.get_by_label("beam search").check()
            page.click("#caption-button")
            yield page
            page.screenshot(path=os.path.join(ARTIFACTS, screenshot), full_page=True)
        finally:
            browser.close()


def wait_for_captions(page, timeout_ms: int = 60000) -> str:
    """The captions box's text once it has any."""
    page.wait_for_function("() => document.querySelector('#captions textarea').value.length > 0",
                           timeout=timeout_ms)
    return page.input_value("#captions textarea")


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


# --- exported graphs -----------------------------------------------------------------------------
def graph_ops(meta_graph) -> set[str]:
    ops = {node.op for node in meta_graph.graph_def.node}
    for function in meta_graph.graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def unregistered_ops(ops: set[str]) -> list[str]:
    """The ops unknown to the registry of a process that imported nothing but tensorflow."""
    check = ("import json, sys, tensorflow as tf\n"
             "from tensorflow.python.framework import op_def_registry\n"
             "ops = json.loads(sys.stdin.read())\n"
             "print(json.dumps([op for op in ops if op_def_registry.get(op) is None]))")
    result = subprocess.run([sys.executable, "-c", check], input=json.dumps(sorted(ops)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- in-process references -----------------------------------------------------------------------
def encoder_features(run, files):
    """A loaded run's encoder features of image files, computed in this process the way its export
    computes them (data.images.decode_batch, then the run's ResNet50): float32 [n, *feature_shape]."""
    import numpy as np
    import tensorflow as tf
    from data.images import decode_batch
    from model.encoder import build_encoder
    pixels, errors = decode_batch(tf.constant([Path(f).read_bytes() for f in files]))
    assert not any(errors.numpy()), errors.numpy()
    encoder = build_encoder(run.encoder_config, run.model_config.feature_kind)
    return np.asarray(encoder(pixels, training=False), np.float32)


def in_process_alternatives(run, features, decode=None) -> list[list[tuple[str, float]]]:
    """beam_search's alternatives computed in this process by model.decoding (the decoder
    model.evaluate runs) with `decode` (a DecodeConfig; default the run's): per image, every
    beam's (caption, normalised score), best first."""
    import tensorflow as tf
    from model.decoding import decode_features, ids_to_captions, words_table
    captioner, table = run.load_captioner(), words_table(tokens=run.vocabulary.tokens)

    @tf.function(input_signature=[tf.TensorSpec([None, *features.shape[1:]], tf.float32)])
    def beams(batch):
        *_, ids, scores = decode_features(captioner, batch, decode or run.decode_config, "beam",
                                          return_beams=True)
        return ids_to_captions(ids, table), scores

    captions, scores = beams(tf.constant(features))
    return [[(c.decode(), float(s)) for c, s in zip(row, row_scores)]
            for row, row_scores in zip(captions.numpy(), scores.numpy())]
