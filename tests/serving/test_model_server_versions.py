"""Version pickup while the development server runs under load: a version published atomically is
served after a poll, its warmup records run first, and no request fails meanwhile; a pinned version
keeps working; half-written and temp folders are ignored; a broken version is reported and never
served. 127.0.0.1 only; bounded in time (MAX_SECONDS) and clients (CLIENTS)."""
import concurrent.futures
import os
import shutil
import threading
import time

import numpy as np
import pytest
import requests

from export.artifact import publish_version, write_warmup
from serving.client import RestClient
from serving.protocol import ServingError
from tests.helpers.images import RED, image_bytes
from tests.helpers.servers import MODEL_NAME, copy_model_base, running_server, wait_for

POLL_SECONDS = 1.0  # --file_system_poll_wait_seconds: the documented wait before a new folder is seen
CLIENTS = 8
MAX_SECONDS = 90    # for the new version to be served; the load test never runs longer than this + 5 s


def statuses(rest_url: str) -> dict[int, dict]:
    body = requests.get(f"{rest_url}/v1/models/{MODEL_NAME}", timeout=10).json()
    return {int(s["version"]): s for s in body.get("model_version_status", [])}


def served_version(rest_url: str) -> int:
    """The version an unpinned request gets now (metadata goes through the same lookup as predict)."""
    return int(requests.get(f"{rest_url}/v1/models/{MODEL_NAME}/metadata", timeout=10)
               .json()["model_spec"]["version"])


def publish_copy(base, source, version: int, warmup_records: int = 0) -> None:
    """A copy of `source` as a new version, with warmup records, published atomically."""
    def write(folder, _):
        shutil.copytree(source, folder)
        request = ("serving_default", {"image_bytes": np.array([image_bytes(RED)], dtype=object)})
        write_warmup(folder, [request] * warmup_records)
    publish_version(base, write, version)


def load(rest_url: str, expected: str, stop: threading.Event, version: int | None) -> tuple[int, list]:
    """1-image predicts back to back until `stop`; (requests, failures)."""
    image, count, failures = image_bytes(RED), 0, []
    with RestClient(rest_url, retries=0, timeout=60, version=version) as client:
        while not stop.is_set():
            count += 1
            try:
                result = client.caption([image])[0]
                if result.caption != expected:
                    failures.append(f"caption {result.caption!r}")
            except ServingError as error:
                failures.append(str(error))
    return count, failures


@pytest.mark.slow
def test_new_version_is_served_without_a_failed_request(served_model_base, reference, tmp_path):
    base = copy_model_base(served_model_base, str(tmp_path / MODEL_NAME), versions=[1])
    expected = reference.caption([image_bytes(RED)])[0].caption
    with running_server(str(tmp_path / "server.log"), f"--file_system_poll_wait_seconds={POLL_SECONDS}",
                        base=base) as server:
        # A half-written version (no saved_model.pb yet) and temp / non-numeric folders are ignored.
        shutil.copytree(os.path.join(base, "1"), os.path.join(base, "3"),
                        ignore=shutil.ignore_patterns("saved_model.pb"))
        os.makedirs(os.path.join(base, ".tmp-9-1"))
        os.makedirs(os.path.join(base, "latest"))

        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            # client 0 pins version 1 for the whole run; the others follow the newest version
            futures = [pool.submit(load, server.rest_url, expected, stop, 1 if i == 0 else None)
                       for i in range(CLIENTS)]
            try:
                time.sleep(2)  # the load is running
                started = time.monotonic()
                publish_copy(base, os.path.join(base, "1"), 2, warmup_records=2)
                wait_for(lambda: served_version(server.rest_url) == 2, timeout=MAX_SECONDS,
                         interval=0.1, message="version 2 to be served")
                pickup = time.monotonic() - started
                time.sleep(2)  # and keeps running on version 2
            finally:
                stop.set()
            results = [f.result(timeout=120) for f in futures]
        requests_sent = sum(count for count, _ in results)
        failures = [f for _, fails in results for f in fails]
        print(f"\nVERSION PICKUP under {CLIENTS} clients: {requests_sent} requests, {len(failures)} "
              f"failures, version 2 served {pickup:.1f} s after publishing (poll {POLL_SECONDS} s)")
        assert not failures, failures[:3]
        assert results[0][0] > 0 and requests_sent > CLIENTS
        assert "ran 2 warmup records; captioner version 2 is AVAILABLE" in server.log_text()
        assert 3 not in statuses(server.rest_url)

        # The pinned version stays loaded beside the newest; an absent version is NOT_FOUND.
        assert sorted(statuses(server.rest_url)) == [1, 2]
        with RestClient(server.rest_url, version=99, retries=0) as pinned:
            try:
                pinned.caption([image_bytes(RED)])
                raise AssertionError("version 99 answered")
            except ServingError as error:
                assert error.http_status == 404 and "99" in error.message

        # A broken version is reported (state END with its error); the newest good one keeps serving.
        os.makedirs(os.path.join(base, "4"))
        with open(os.path.join(base, "4", "saved_model.pb"), "wb") as f:
            f.write(b"this is not a SavedModel")
        wait_for(lambda: 4 in statuses(server.rest_url), timeout=60, message="version 4 to fail")
        status = statuses(server.rest_url)[4]
        assert status["state"] == "END" and status["status"]["error_message"]
        assert served_version(server.rest_url) == 2
        with RestClient(server.rest_url) as client:
            assert client.caption([image_bytes(RED)])[0].caption == expected
        assert "failed to load captioner version 4" in server.log_text()
