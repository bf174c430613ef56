"""Multi-worker training for real: two `python -m model.train --distribute multiworker` processes
on 127.0.0.1, each with its own worker-only TF_CONFIG (index 0 acts as chief), one shared run folder
and one shared feature cache (in the first test one that neither has extracted yet: one worker
extracts, the other waits; the frozen-worker test starts from an extracted one). The first test
gives each process no TF_CONFIG but the environment deploy/training/job.yaml and Kubernetes give
pod i (WORKER_HOSTS, JOB_COMPLETION_INDEX=i), from which model/cluster.py derives it.

What a user who outgrows one machine needs to hold: both workers finish, train as one model
(identical weights, one optimizer step per *global* batch), only the chief writes the run folder,
a dead worker stops the other with a clear message instead of hanging, and running both commands
again resumes from the last finished epoch.
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from model.train import WORKER_LOST, WORKER_LOST_EXIT_CODE
from tests.helpers import REPO, random_weights_features

NUM_IMAGES = 120          # 96 / 12 / 12 images, 480 training captions
GLOBAL_BATCH = 32         # --batch-size: split 16 + 16 between the two workers
PROCESS_TIMEOUT = 900     # seconds for a whole two-worker run on 2 busy cores (measured 1-4 min)
# How long the surviving worker may take to notice a dead one. A killed worker's port refuses or
# its heartbeats stop (measured 3-13 s); a frozen one misses the coordination service's heartbeats
# (measured 13-15 s); --worker-timeout bounds a collective that waits anyway.
WORKER_TIMEOUT = 60
FAILURE_NOTICED_WITHIN = WORKER_TIMEOUT + 60

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def builtin_data(tmp_path_factory) -> Path:
    from data.builtin import generate_builtin
    return generate_builtin(tmp_path_factory.mktemp("mw") / "data", num_images=NUM_IMAGES, seed=0)


@pytest.fixture(scope="module")
def extracted_cache(builtin_data, tmp_path_factory) -> Path:
    """builtin_data's pooled features as `--encoder-weights random` extracts them, for the tests
    of what a dead worker does."""
    return random_weights_features(builtin_data, tmp_path_factory.mktemp("mw-cache") / "cache")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config_environments() -> list[dict]:
    """Each worker's TF_CONFIG, as in docs/training.md's commands (and as TFJob writes it)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    return [{"TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                      "task": {"type": "worker", "index": index}})}
            for index in range(2)]


def job_environments(shared: Path) -> list[dict]:
    """What pod i of deploy/training/job.yaml gets: the manifest's env plus Kubernetes'
    JOB_COMPLETION_INDEX=i, no TF_CONFIG. The Job's host names resolve in the cluster's DNS only,
    so each is mapped to a free 127.0.0.1 port; paths on the shared volume go under `shared`."""
    from tests.deploy.checks import container, objects
    job = objects("training")["Job/captioner-train"]
    main = container(job)
    env = {e["name"]: e["value"] for e in main["env"]}
    hosts = env["WORKER_HOSTS"].split(",")
    assert len(hosts) == job["spec"]["completions"] == 2
    assert main["command"] == ["python", "-m", "model.train"] and "TF_CONFIG" not in env
    env["WORKER_HOSTS"] = ",".join(f"127.0.0.1:{port}" for port in free_ports(len(hosts)))
    env = {name: value.replace(main["workingDir"], str(shared), 1) if value.startswith(main["workingDir"])
           else value for name, value in env.items()}
    return [{**env, "JOB_COMPLETION_INDEX": str(index)} for index in range(len(hosts))]


def start_workers(run_dir: Path, data: Path, cache: Path, epochs: int,
                  environments: list[dict] | None = None) -> list[subprocess.Popen]:
    """The exact command of the README, once per worker, each with its own environment (default:
    its own TF_CONFIG)."""
    workers = []
    for index, own in enumerate(environments or tf_config_environments()):
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(own, CUDA_VISIBLE_DEVICES="")
        log = open(run_dir.parent / f"{run_dir.name}-worker{index}.log", "ab")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "model.train", "--distribute", "multiworker",
             "--preset", "pooled", "--data", str(data), "--cache-dir", str(cache), "--encoder-weights", "random",
             "--run-dir", str(run_dir), "--epochs", str(epochs), "--patience", str(epochs),
             "--batch-size", str(GLOBAL_BATCH), "--min-count", "2", "--no-eval",
             "--worker-timeout", str(WORKER_TIMEOUT)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return workers


def wait_all(workers, run_dir: Path) -> list[int]:
    deadline = time.monotonic() + PROCESS_TIMEOUT
    codes = [worker.wait(timeout=max(1.0, deadline - time.monotonic())) for worker in workers]
    assert codes == [0, 0], logs(run_dir)
    return codes


def stop_all(workers) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        worker.wait()


def logs(run_dir: Path) -> str:
    return "\n".join(f"--- worker {i}:\n" + log_of(run_dir, i)[-3000:] for i in range(2))


def log_of(run_dir: Path, index: int) -> str:
    return (run_dir.parent / f"{run_dir.name}-worker{index}.log").read_text(errors="replace")


def epochs_logged(history: Path) -> list[int]:
    if not history.is_file():
        return []
    with history.open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def weights(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def logged_losses(history_csv: Path) -> list[dict]:
    with history_csv.open() as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


def signal_worker1_mid_epoch(run: Path, data: Path, cache: Path, epochs: int,
                             sig: signal.Signals,
                             environments: list[dict] | None = None) -> tuple[int, float]:
    """Trains until both workers logged epoch 1, sends `sig` to worker 1 as epoch 2 starts, and
    returns the chief's exit status and how long it took to notice. Both processes are gone
    afterwards."""
    workers = start_workers(run, data, cache, epochs=epochs, environments=environments)
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while time.monotonic() < deadline and workers[0].poll() is None:
            # A worker logs an epoch after its end-of-epoch backup (the callbacks' order): both
            # are then past epoch 1's backups, into epoch 2.
            if all(epochs_logged(folder / "history.csv")
                   for folder in (run, run / "workers" / "worker-1")):
                break
            time.sleep(0.1)
        assert workers[0].poll() is None, logs(run)
        workers[1].send_signal(sig)
        signalled = time.monotonic()
        code = workers[0].wait(timeout=FAILURE_NOTICED_WITHIN)
        return code, time.monotonic() - signalled
    finally:
        stop_all(workers)


def test_two_workers_train_one_model_and_resume_after_a_killed_one(builtin_data, tmp_path):
    """Started as the Kubernetes Job starts them (no TF_CONFIG: the pod's index and host list),
    from a cache neither has extracted; worker 1 is killed in epoch 2, and the same two commands
    again finish the run as one model."""
    run, cache, shared = tmp_path / "run", tmp_path / "cache", tmp_path / "shared"
    code, noticed_after = signal_worker1_mid_epoch(run, builtin_data, cache, 3, signal.SIGKILL,
                                                   job_environments(shared))
    print(f"the chief noticed the killed worker after {noticed_after:.1f} s")
    assert code == WORKER_LOST_EXIT_CODE, logs(run)
    assert WORKER_LOST in log_of(run, 0)
    finished = epochs_logged(run / "history.csv")
    assert finished == list(range(len(finished))) and 1 <= len(finished) < 3
    assert (run / "backup").is_dir()

    workers = start_workers(run, builtin_data, cache, epochs=3,
                            environments=job_environments(shared))  # the same two commands
    try:
        wait_all(workers, run)
    finally:
        stop_all(workers)
    # Resumed after the last finished epoch: none repeated, none skipped.
    assert epochs_logged(run / "history.csv") == [0, 1, 2], logs(run)

    # The chief owns the run folder; worker 1 wrote its own copies beside it, nowhere else.
    for name in ("best.weights.h5", "history.csv", "summary.json", "loss_curve.png",
                 "settings.json", "vocab.txt"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()
    worker_dir = run / "workers" / "worker-1"
    assert sorted(p.name for p in (run / "workers").iterdir()) == ["worker-1"]
    # Same epochs, losses and validation losses; only each process's own epoch_seconds differ.
    assert logged_losses(run / "history.csv") == logged_losses(worker_dir / "history.csv")

    chief = json.loads((run / "summary.json").read_text())
    other = json.loads((worker_dir / "summary.json").read_text())
    assert chief["replicas"] == other["replicas"] == 2
    # One optimizer step per global batch: 480 captions / 32 = 15 full batches, plus the partial
    # batch each length bucket ends with. Had each worker taken 32 per replica (64 a step),
    # there would be about half as many.
    assert chief["train_captions"] == 480 and chief["global_batch_size"] == GLOBAL_BATCH
    assert 15 <= chief["steps_per_epoch"] <= 15 + 6
    for summary in (chief, other):
        assert summary["optimizer_steps"] == 3 * chief["steps_per_epoch"]

    # Both workers saved the same epoch's weights (and optimizer state): bit for bit equal.
    assert chief["best_epoch"] == other["best_epoch"]
    saved = [weights(run / "best.weights.h5"), weights(worker_dir / "best.weights.h5")]
    assert saved[0].keys() == saved[1].keys() and len(saved[0]) > 10
    for name, value in saved[0].items():
        np.testing.assert_array_equal(value, saved[1][name], err_msg=name)


def test_frozen_worker_stops_the_other_instead_of_hanging_it(builtin_data, extracted_cache,
                                                             tmp_path):
    """SIGSTOP: the process lives and its port stays open, but it answers nothing, like a machine
    that froze or dropped off the network."""
    run = tmp_path / "run"
    code, noticed_after = signal_worker1_mid_epoch(run, builtin_data, extracted_cache, 3,
                                                   signal.SIGSTOP)
    print(f"the chief noticed the frozen worker after {noticed_after:.1f} s")
    assert code == WORKER_LOST_EXIT_CODE, logs(run)
    assert WORKER_LOST in log_of(run, 0)
