"""Server-side batching like TF Serving's --enable_batching: concurrent requests for the same model
version and signature are merged along dimension 0 into one session.run, then split back.

A batch closes when it reaches max_batch_size or when its first request has waited
batch_timeout_micros; num_batch_threads workers run closed batches. Before running, a batch is padded
up to the next allowed_batch_sizes entry by repeating its first row (as TF Serving pads). A request
larger than max_batch_size, or one arriving while max_enqueued_batches batches wait, is refused with
TF Serving's errors (INVALID_ARGUMENT / UNAVAILABLE). One request's bad data cannot poison the others:
inputs are validated before they are queued, and the model never raises on a bad image.
"""
import bisect
import collections
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import Callable, Hashable

import numpy as np

from serving.errors import InvalidArgumentError, UnavailableError

log = logging.getLogger("serving.batching")


@dataclasses.dataclass(frozen=True)
class BatchingSettings:
    """BatchingParameters with TF Serving's defaults for unset fields (BasicBatchScheduler)."""
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = os.cpu_count() or 1
    max_enqueued_batches: int = 10
    allowed_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, params) -> "BatchingSettings":
        values = {name: getattr(params, name).value
                  for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                               "max_enqueued_batches") if params.HasField(name)}
        return cls(**values, allowed_batch_sizes=tuple(params.allowed_batch_sizes))

    def padded_size(self, size: int) -> int:
        if not self.allowed_batch_sizes:
            return size
        return self.allowed_batch_sizes[bisect.bisect_left(self.allowed_batch_sizes, size)]


@dataclasses.dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    future: Future


@dataclasses.dataclass
class _Batch:
    key: Hashable
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    deadline: float
    tasks: list[_Task] = dataclasses.field(default_factory=list)
    size: int = 0


class Batcher:
    """submit(key, run, inputs) -> Future of run's outputs for these inputs alone.

    `key` identifies what may share a batch (model version + signature); `run` maps merged inputs
    to merged outputs and must be the same for every request with that key.
    """

    def __init__(self, settings: BatchingSettings):
        self.settings = settings
        self._cond = threading.Condition()
        self._open: dict[Hashable, _Batch] = {}
        self._ready: collections.deque[_Batch] = collections.deque()
        self._stopping = False
        self._workers = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(settings.num_batch_threads)]
        for worker in self._workers:
            worker.start()

    def submit(self, key: Hashable, run, inputs: dict[str, np.ndarray]) -> Future:
        size = _batch_size(inputs)
        if size > self.settings.max_batch_size:
            raise InvalidArgumentError(f"Task size {size} is larger than maximum batch size "
                                       f"{self.settings.max_batch_size}")
        task = _Task(inputs, size, Future())
        with self._cond:
            if self._stopping:
                raise UnavailableError("Server is shutting down")
            batch = self._open.get(key)
            if batch is not None and batch.size + size > self.settings.max_batch_size:
                self._ready.append(self._open.pop(key))  # full: close it, start a new one
                batch = None
            if batch is None:
                if len(self._ready) + len(self._open) >= self.settings.max_enqueued_batches:
                    raise UnavailableError("The batch scheduling queue to which this task was "
                                           "submitted is full")
                deadline = time.monotonic() + self.settings.batch_timeout_micros / 1e6
                batch = self._open[key] = _Batch(key, run, deadline)
            batch.tasks.append(task)
            batch.size += size
            if batch.size == self.settings.max_batch_size:
                self._ready.append(self._open.pop(key))
            self._cond.notify()
        return task.future

    def close(self) -> None:
        """Runs what is queued, then stops the workers."""
        with self._cond:
            self._stopping = True
            self._ready.extend(self._open.values())
            self._open.clear()
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout=30)

    def _next_batch(self) -> _Batch | None:
        """Waits for a closed batch or an open one whose timeout passed; None when stopping."""
        with self._cond:
            while True:
                if self._ready:
                    return self._ready.popleft()
                now = time.monotonic()
                due = [b for b in self._open.values() if b.deadline <= now]
                if due:
                    batch = min(due, key=lambda b: b.deadline)
                    return self._open.pop(batch.key)
                if self._stopping:
                    return None
                wait = min((b.deadline - now for b in self._open.values()), default=None)
                self._cond.wait(timeout=wait)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _run(self, batch: _Batch) -> None:
        tasks = [t for t in batch.tasks if t.future.set_running_or_notify_cancel()]
        if not tasks:
            return
        try:
            merged = {name: np.concatenate([t.inputs[name] for t in tasks])
                      for name in tasks[0].inputs}
            size = sum(t.size for t in tasks)
            padded = self.settings.padded_size(size)
            if padded > size:  # pad with copies of the first row
                merged = {name: np.concatenate([value, np.repeat(value[:1], padded - size, axis=0)])
                          for name, value in merged.items()}
            outputs = batch.run(merged)
            for name, value in outputs.items():
                if np.ndim(value) == 0 or len(value) != padded:
                    raise InvalidArgumentError(
                        f"Batched output '{name}' has shape {np.shape(value)}; with batching every "
                        f"output must have the batch size {padded} as its first dimension")
        except Exception as e:
            for task in tasks:
                task.future.set_exception(e)
            return
        start = 0
        for task in tasks:
            task.future.set_result({name: value[start:start + task.size]
                                    for name, value in outputs.items()})
            start += task.size


def _batch_size(inputs: dict[str, np.ndarray]) -> int:
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in inputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise InvalidArgumentError("With batching enabled every input must have the same first "
                                   f"(batch) dimension, got shapes {[np.shape(v) for v in inputs.values()]}")
    return sizes.pop()
