"""The development server (serving.model_server) vs the in-process SavedModel, same run (JSON):

    python -m benchmarks.bench_serving             # benchmarks/_trained_model.py's export
    python -m benchmarks.bench_serving --model_base_path models/captioner --requests 50
    python -m benchmarks.bench_serving --quick     # 8 images, 16 requests, 1 repeat

REST and gRPC with 1 and 8 concurrent clients (serving.client), requests of --images-per-request
images. Each server run sits between two in-process runs (TF Serving's session path, one caller,
back to back) and is compared with their mean; target >= 0.8x in-process at 8 REST clients.
"""
import concurrent.futures
import dataclasses
import json
import math
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from benchmarks._synthetic import photo_jpegs
from benchmarks._timing import REPO, machine, median, parse, report
from benchmarks._trained_model import caption, ensure_benchmark_model
from export.artifact import SessionModel, latest_version
from serving.client import GrpcClient, RestClient


def start_server(base, log, timeout: float = 300):
    """(process, REST URL, gRPC target): python -m serving.model_server on free ports, once
    GET /v1/models/captioner answers 200."""
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    grpc_port, rest_port = (s.getsockname()[1] for s in sockets)
    for s in sockets:
        s.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.model_server", f"--port={grpc_port}",
         f"--rest_api_port={rest_port}", "--model_name=captioner", f"--model_base_path={base}",
         "--file_system_poll_wait_seconds=0"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{rest_port}", time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{url}/v1/models/captioner", timeout=2).status_code == 200:
                return process, url, f"127.0.0.1:{grpc_port}"
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"model server not ready (exit code {process.poll()}); log: {log.name}")


def in_process_images_per_s(model, batches: list[list[bytes]]) -> float:
    for batch in batches[:3]:  # warm up
        caption(model, batch)
    started = time.perf_counter()
    for batch in batches:
        caption(model, batch)
    return sum(map(len, batches)) / (time.perf_counter() - started)


def server_throughput(make_client, batches: list[list[bytes]], clients: int) -> dict:
    """`clients` threads, each sending its share of `batches` back to back with its own client,
    timed from the moment all have connected and warmed up."""
    shares, start = [batches[i::clients] for i in range(clients)], {}
    ready = threading.Barrier(clients, action=lambda: start.setdefault("t", time.perf_counter()))

    def run(share):
        latencies, failures = [], 0
        with make_client() as client:
            client.caption(share[0])  # connect + warm up, untimed
            ready.wait()
            for batch in share:
                started = time.perf_counter()
                try:
                    failures += sum(not r.ok for r in client.caption(batch))
                except Exception:
                    failures += len(batch)
                latencies.append(time.perf_counter() - started)
        return latencies, failures

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, shares))
    elapsed = time.perf_counter() - start["t"]
    latencies = sorted(t for times, _ in results for t in times)
    return {"images_per_s": round(sum(map(len, batches)) / elapsed, 1),
            "p50_ms": round(1000 * median(latencies), 1),
            # nearest rank: the smallest latency with at least 99% of requests at or below it
            "p99_ms": round(1000 * latencies[math.ceil(0.99 * len(latencies)) - 1], 1),
            "failures": sum(f for _, f in results)}


@dataclasses.dataclass
class ServingBenchConfig:
    model_base_path: str | None = None  # default: the benchmark model's export
    images: int = 32                    # distinct 500x375 photo-like JPEGs
    images_per_request: int = 1
    requests: int = 160                 # per scenario
    repeats: int = 3                    # runs per scenario; the median (by ratio) is kept


def main(argv=None) -> None:
    config = parse(__doc__, ServingBenchConfig, {"images": 8, "requests": 16, "repeats": 1},
                   argv)[0]
    base = Path(config.model_base_path or ensure_benchmark_model()[1]).resolve()
    images, per = photo_jpegs(config.images), config.images_per_request
    batches = [[images[(i * per + j) % len(images)] for j in range(per)]
               for i in range(config.requests)]
    result = {"benchmark": "bench_serving", "machine": machine(), "model": str(base),
              "images": config.images, "image_size": "500x375", "images_per_request": per,
              "requests_per_scenario": config.requests, "repeats": config.repeats, "server": []}
    model = SessionModel(latest_version(base))
    log = open(Path(tempfile.mkdtemp(prefix="bench_serving_")) / "server.log", "wb")
    server, rest_url, grpc_target = start_server(base, log)
    try:
        for api, clients in (("rest", 1), ("rest", 8), ("grpc", 1), ("grpc", 8)):
            client = (lambda: RestClient(rest_url, batch_size=per, timeout=120)) if api == "rest" \
                else (lambda: GrpcClient(grpc_target, batch_size=per, timeout=120))
            runs = []  # in-process right before and after each server run: load hits both alike
            for _ in range(config.repeats):
                before = in_process_images_per_s(model, batches)
                run = server_throughput(client, batches, clients)
                baseline = (before + in_process_images_per_s(model, batches)) / 2
                runs.append({**run, "in_process_images_per_s": round(baseline, 1),
                             "ratio_vs_in_process": round(run["images_per_s"] / baseline, 2)})
            runs.sort(key=lambda r: r["ratio_vs_in_process"])
            scenario = {"api": api, "clients": clients, **runs[len(runs) // 2],
                        "ratios_of_all_repeats": [r["ratio_vs_in_process"] for r in runs]}
            result["server"].append(scenario)
            print(json.dumps(scenario), file=sys.stderr, flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            result["server_exit_code"] = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        model.close()
    rest8 = next(r for r in result["server"] if r["api"] == "rest" and r["clients"] == 8)
    result["target"] = "server images/s >= 0.8 x in-process at 8 REST clients"
    result["target_met"] = rest8["ratio_vs_in_process"] >= 0.8
    report("bench_serving", result)


if __name__ == "__main__":
    main()
