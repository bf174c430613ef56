"""serving.batching.Batcher on a real (numpy) run function: concurrent requests merge along
dimension 0, pad to the allowed sizes, split back in order; limits fail like TF Serving's."""
import threading
import time

import numpy as np
import pytest

from serving.batching import Batcher, BatchingSettings
from serving.errors import InvalidArgumentError, UnavailableError


class Recorder:
    """Doubles its input and records every batch size it was called with."""

    def __init__(self, delay: float = 0.0):
        self.sizes, self.delay = [], delay

    def __call__(self, inputs):
        self.sizes.append(len(inputs["x"]))
        time.sleep(self.delay)
        return {"y": inputs["x"] * 2, "first": np.repeat(inputs["x"][:1], len(inputs["x"]))}


def submit_concurrently(batcher, run, requests):
    results = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def go(i):
        barrier.wait()
        results[i] = batcher.submit("key", run, {"x": requests[i]}).result(timeout=10)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_merges_pads_and_splits():
    batcher = Batcher(BatchingSettings(max_batch_size=8, batch_timeout_micros=200_000,
                                       num_batch_threads=1, allowed_batch_sizes=(4, 8)))
    run = Recorder()
    requests = [np.arange(3) + 10 * i for i in range(2)]  # 2 requests x 3 rows -> one batch of 6 -> 8
    try:
        results = submit_concurrently(batcher, run, requests)
    finally:
        batcher.close()
    assert run.sizes == [8]
    for request, result in zip(requests, results):
        np.testing.assert_array_equal(result["y"], request * 2)
        assert len(result["first"]) == len(request)


def test_full_batches_close_at_max_size():
    batcher = Batcher(BatchingSettings(max_batch_size=4, batch_timeout_micros=500_000, num_batch_threads=2))
    run = Recorder()
    try:
        started = time.monotonic()
        submit_concurrently(batcher, run, [np.ones(1)] * 8)
        elapsed = time.monotonic() - started
    finally:
        batcher.close()
    assert sorted(run.sizes) == [4, 4]
    assert elapsed < 0.4  # full batches do not wait for the timeout


def test_timeout_closes_a_partial_batch():
    batcher = Batcher(BatchingSettings(max_batch_size=100, batch_timeout_micros=50_000, num_batch_threads=1))
    run = Recorder()
    try:
        result = batcher.submit("key", run, {"x": np.ones(2)}).result(timeout=5)
    finally:
        batcher.close()
    assert run.sizes == [2] and len(result["y"]) == 2


def test_limits():
    batcher = Batcher(BatchingSettings(max_batch_size=4, batch_timeout_micros=1_000_000,
                                       num_batch_threads=1, max_enqueued_batches=1))
    try:
        with pytest.raises(InvalidArgumentError, match="larger than maximum batch size"):
            batcher.submit("a", Recorder(), {"x": np.ones(5)})
        batcher.submit("a", Recorder(), {"x": np.ones(1)})  # opens the one allowed batch
        with pytest.raises(UnavailableError, match="queue"):
            batcher.submit("b", Recorder(), {"x": np.ones(1)})
    finally:
        batcher.close()


def test_an_error_fails_only_its_batch():
    def failing(inputs):
        raise InvalidArgumentError("boom")

    batcher = Batcher(BatchingSettings(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1))
    try:
        with pytest.raises(InvalidArgumentError, match="boom"):
            batcher.submit("bad", failing, {"x": np.ones(1)}).result(timeout=5)
        assert len(batcher.submit("good", Recorder(), {"x": np.ones(2)}).result(timeout=5)["y"]) == 2
    finally:
        batcher.close()


def test_settings_from_proto_defaults():
    from serving.config_protos import BatchingParameters
    params = BatchingParameters()
    params.max_batch_size.value = 16
    settings = BatchingSettings.from_proto(params)
    assert settings.max_batch_size == 16 and settings.batch_timeout_micros == 0
    assert settings.max_enqueued_batches == 10  # TF Serving's default
    assert BatchingSettings(allowed_batch_sizes=(4, 8, 16)).padded_size(5) == 8
