"""What every benchmark shares: the command line (`parse`), the one round-robin timer, batch-1
latency, the machine record every JSON carries, and `report` (print and save the JSON)."""
import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import sys
import time
import typing
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.files import atomic_write

REPO = Path(__file__).resolve().parent.parent
# bfloat16/AMX decide what ResNet50 and the LSTM matmuls cost, and a benchmark may run on any CPU:
# every JSON says which ran.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
median = statistics.median


def parse(doc: str, config_class, quick: dict, argv=None, **flags):
    """(config, args): --quick applies `quick`, then each --field given (--a-b or --a_b) sets one
    int, float, str or bool field of the dataclass; `flags`: {name: add_argument keywords}."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"a smoke run: {quick}")
    for name, keywords in flags.items():
        p.add_argument(f"--{name.replace('_', '-')}", **keywords)
    fields = {}
    for field in dataclasses.fields(config_class):
        kind = (typing.get_args(field.type) or (field.type,))[0]
        if kind in (int, float, str, bool):
            fields[field.name] = field.default
            p.add_argument(*dict.fromkeys([f"--{field.name.replace('_', '-')}", f"--{field.name}"]),
                           default=None, help=f"default {field.default!r}",
                           **({"action": argparse.BooleanOptionalAction} if kind is bool
                              else {"type": kind}))
    args = p.parse_args(argv)
    given = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    for name, value in given.items():  # counts are >= 1 (>= 0 where the default is 0)
        if type(value) is int and value < (low := int(fields[name] != 0)):
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    return config_class(**{**(quick if args.quick else {}), **given}), args


def round_robin(tasks: dict, repeats: int, warmup: int = 1, desc: str = "repetitions"):
    """({name: wall seconds per call}, {name: CPU seconds of this process per call}).

    Each task runs `warmup` times untimed, then once per repetition, forwards then backwards in
    turn (ABBA): neighbours in `tasks` run back to back under the same outside load, so compare
    them by per-repetition ratios (`paired`). CPU time is what other jobs cannot inflate."""
    for task in tasks.values():
        for _ in range(warmup):
            task()
    wall, cpu = {name: [] for name in tasks}, {name: [] for name in tasks}
    for rep in tqdm(range(repeats), desc=desc, file=sys.stderr):
        for name in (list(tasks) if rep % 2 == 0 else list(tasks)[::-1]):
            started, started_cpu = time.perf_counter(), time.process_time()
            tasks[name]()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return wall, cpu


def paired(times: dict, a: str, b: str) -> list[float]:
    """Per-repetition ratios times[a] / times[b]."""
    return [x / y for x, y in zip(times[a], times[b])]


def rounded(values, digits: int = 3) -> list[float]:
    return [round(v, digits) for v in values]


def ms(seconds: float) -> float:
    return round(1000 * float(seconds), 1)


def latency(calls: dict, images: list, count: int, warmup: int = 2) -> dict:
    """Batch-1 latency of each call(image), the calls alternating (round_robin), every call
    seeing the same sequence of images."""
    tasks = {name: (lambda call=call, it=itertools.cycle(images): call(next(it)))
             for name, call in calls.items()}
    times = round_robin(tasks, count, warmup, desc="batch-1 latency")[0]
    return {name: {"median_ms": ms(median(t)), "p95_ms": ms(np.percentile(t, 95))}
            for name, t in times.items()}


def machine() -> dict:
    """CPU model and the flags that matter, cores, load now, Python/TF/Keras versions."""
    import keras
    import tensorflow as tf
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere what platform knows
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    first = {key.strip(): value.strip() for key, _, value in
             (line.partition(":") for line in reversed(lines))}  # the first CPU's values win
    flags = set(first.get("flags", "").split())
    return {"cpu_model": first.get("model name") or platform.processor() or "unknown",
            "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS}, "cpus": os.cpu_count(),
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__}


def report(name: str, result: dict) -> None:
    """Prints the result as JSON and writes benchmarks/results/<name>.json (gitignored)."""
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    atomic_write(REPO / "benchmarks" / "results" / f"{name}.json", text + "\n")
