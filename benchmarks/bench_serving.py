"""Development server throughput vs the in-process SavedModel call, measured in the same run (JSON).

    python benchmarks/bench_serving.py                                  # stand-in model (no export yet)
    python benchmarks/bench_serving.py --model_base_path models/captioner --requests 50

Runs, on the same JPEG images:
- in-process: the SavedModel's serving_default through TF Serving's session path (tf.compat.v1
  loader, tensors by name; export.artifact.SessionModel), one caller, requests of
  --images-per-request images, back to back, measured right before and after each server run;
- serving.model_server (the development server: no server-side batching, that is the container's
  job) in a subprocess, driven by serving.client
  over REST with 1 and 8 concurrent clients and over gRPC with 1 and 8, same request size.
Each server figure (median of --repeats runs) is images/s with its ratio to in-process (target >= 0.8 at 8 REST clients),
plus request latency p50/p99. Without --model_base_path it benchmarks the stand-in model
(tests/standin_model.py) and says so in the JSON.
"""
import argparse
import concurrent.futures
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks._synthetic import photo_jpegs  # noqa: E402
from benchmarks._timing import machine, report  # noqa: E402
from serving.client import GrpcClient, RestClient  # noqa: E402
from export.artifact import SessionModel, latest_version  # noqa: E402
from tests.serving_fixtures import ServerProcess  # noqa: E402


def requests_of(images: list[bytes], per_request: int, count: int) -> list[list[bytes]]:
    return [[images[(i * per_request + j) % len(images)] for j in range(per_request)] for i in range(count)]


class InProcess:
    """The SavedModel called in this process through TF Serving's session path."""

    def __init__(self, version_dir: str):
        self.model = SessionModel(version_dir)

    def throughput(self, batches: list[list[bytes]]) -> float:
        """images/s calling the model with each request's images, back to back."""
        arrays = [np.array(b, dtype=object) for b in batches]
        for batch in arrays[:3]:  # warm up
            self.model.run("serving_default", {"image_bytes": batch})
        started = time.perf_counter()
        for batch in arrays:
            self.model.run("serving_default", {"image_bytes": batch})
        return sum(map(len, batches)) / (time.perf_counter() - started)


def server_throughput(make_client, batches: list[list[bytes]], clients: int) -> dict:
    """Each of `clients` threads sends its share of `batches` back to back with its own client.
    Timed from the moment all clients have connected and warmed up."""
    shares = [batches[i::clients] for i in range(clients)]
    start = {}
    ready = threading.Barrier(clients, action=lambda: start.setdefault("t", time.perf_counter()))

    def run(share):
        latencies, failures = [], 0
        with make_client() as client:
            client.caption(share[0])  # connect + warm up, untimed
            ready.wait()
            for batch in share:
                started = time.perf_counter()
                try:
                    results = client.caption(batch)
                    failures += sum(not r.ok for r in results)
                except Exception:
                    failures += len(batch)
                latencies.append(time.perf_counter() - started)
        return latencies, failures

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, shares))
    elapsed = time.perf_counter() - start["t"]
    latencies = sorted(l for lat, _ in results for l in lat)
    return {"images_per_s": round(sum(map(len, batches)) / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            # nearest rank: the smallest latency with at least 99% of requests at or below it
            "p99_ms": round(1000 * latencies[math.ceil(0.99 * len(latencies)) - 1], 1),
            "failures": sum(f for _, f in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_base_path", help="export base folder (default: build the stand-in)")
    parser.add_argument("--images", type=int, default=32, help="distinct test images")
    parser.add_argument("--image-size", default="500x375", help="WxH of the JPEGs (Flickr-like)")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--requests", type=int, default=160, help="requests per scenario")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario; the median is reported")
    parser.add_argument("--quick", action="store_true", help="8 images, 16 requests, 1 repeat (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.requests, args.repeats = 8, 16, 1

    width, height = map(int, args.image_size.split("x"))
    images = photo_jpegs(args.images, width, height)
    batches = requests_of(images, args.images_per_request, args.requests)
    work = tempfile.mkdtemp(prefix="bench_serving_")
    base = args.model_base_path
    if not base:
        from tests.standin_model import publish_standin
        base = os.path.join(work, "captioner")
        publish_standin(base, 1)

    result = {
        "benchmark": "bench_serving", "machine": machine(),
        "model": "stand-in (tests/standin_model.py), not the real export" if not args.model_base_path
                 else os.path.abspath(base),
        "images": args.images, "image_size": args.image_size,
        "images_per_request": args.images_per_request, "requests_per_scenario": args.requests,
        "server": [],
    }
    in_process = InProcess(latest_version(base))
    server = ServerProcess(os.path.join(work, "server.log"), "--file_system_poll_wait_seconds=0",
                           base=base).start()
    try:
        for api, clients in (("rest", 1), ("rest", 8), ("grpc", 1), ("grpc", 8)):
            def make_client(api=api):
                if api == "rest":
                    return RestClient(server.rest_url, batch_size=args.images_per_request, timeout=120)
                return GrpcClient(server.grpc_target, batch_size=args.images_per_request, timeout=120)
            # The cores may be shared with other work: measure in-process right before and after each
            # server run and compare with their mean, so a load change skews both alike; repeat and
            # keep the median run (by ratio).
            runs = []
            for _ in range(args.repeats):
                before = in_process.throughput(batches)
                run = server_throughput(make_client, batches, clients)
                baseline = (before + in_process.throughput(batches)) / 2
                runs.append({**run, "in_process_images_per_s": round(baseline, 1),
                             "ratio_vs_in_process": round(run["images_per_s"] / baseline, 2)})
            runs.sort(key=lambda r: r["ratio_vs_in_process"])
            scenario = {"api": api, "clients": clients, **runs[len(runs) // 2],
                        "ratios_of_all_repeats": [r["ratio_vs_in_process"] for r in runs]}
            result["server"].append(scenario)
            print(json.dumps(scenario), file=sys.stderr, flush=True)
    finally:
        server.stop()
    rest8 = next(r for r in result["server"] if r["api"] == "rest" and r["clients"] == 8)
    result["target"] = "server images/s >= 0.8 x in-process at 8 REST clients"
    result["target_met"] = rest8["ratio_vs_in_process"] >= 0.8
    report("bench_serving", result)


if __name__ == "__main__":
    main()
