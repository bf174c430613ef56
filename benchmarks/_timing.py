"""Timing and recording shared by the benchmarks: the one round-robin timer, the machine
description every JSON carries, and the report (print the JSON, save benchmarks/results/)."""
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data.files import atomic_write  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# bfloat16/AMX change what ResNet50 and the LSTM matmuls cost; the CPU under these sessions has
# changed from one day to the next (AMD EPYC, Intel Xeon with AMX), so every JSON says which ran.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def round_robin(tasks: dict, repeats: int, warmup: int = 1, desc: str = "repetitions"):
    """({name: wall seconds per call}, {name: CPU seconds of this process per call}).

    Every task is called `warmup` times untimed, then each repetition calls every task once,
    forwards then backwards in turn (ABBA): neighbours in `tasks` always run back to back, so
    their per-repetition ratio compares calls made under the same load from other people's
    work, and a steady drift in that load hits early and late tasks alike. CPU time of this
    process (all threads) is what other jobs on shared cores cannot inflate."""
    names = list(tasks)
    for name in names:
        for _ in range(warmup):
            tasks[name]()
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for rep in tqdm(range(repeats), desc=desc, file=sys.stderr):
        for name in (names if rep % 2 == 0 else names[::-1]):
            started, started_cpu = time.perf_counter(), time.process_time()
            tasks[name]()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return wall, cpu


def _cpuinfo() -> tuple[str, set]:
    """(model name, flags) of the first CPU in /proc/cpuinfo (Linux; elsewhere what is known)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if "model name" in fields and "flags" in fields:
                    break
    except OSError:
        pass
    return (fields.get("model name") or platform.processor() or "unknown",
            set(fields.get("flags", "").split()))


def machine() -> dict:
    """The CPU model and the flags that matter here, core count, load and library versions."""
    model, flags = _cpuinfo()
    versions = {}
    for package in ("tensorflow", "keras"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu_model": model, "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
            "cpus": os.cpu_count(), "load_average_1min_at_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), **versions}


def report(name: str, result: dict) -> None:
    """Prints the result as JSON and writes benchmarks/results/<name>.json (gitignored)."""
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    atomic_write(RESULTS / f"{name}.json", text + "\n")
