"""Version pickup while the server runs: new versions load, half-written folders wait, the
model_version_policy unloads old versions, warmup records run, a broken version does not take the
model down."""
import base64
import os
import shutil

import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving.standin_model import publish_version
from tests.serving_fixtures import (MODEL_NAME, RED, available_versions, copy_model_base, image_bytes,  # noqa: F401
                                    reference, running_server, served_model_base, wait_for)


def write_warmup(version_dir: str, records: int = 2) -> None:
    """assets.extra/tf_serving_warmup_requests: a TFRecord of PredictionLog, as TF Serving reads it."""
    folder = os.path.join(version_dir, "assets.extra")
    os.makedirs(folder, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(folder, "tf_serving_warmup_requests")) as writer:
        for _ in range(records):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL_NAME
            request.model_spec.signature_name = "serving_default"
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image_bytes(RED)]))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def predict_caption(rest_url: str, path: str = "") -> requests.Response:
    body = {"instances": [{"b64": base64.b64encode(image_bytes(RED)).decode()}]}
    return requests.post(f"{rest_url}/v1/models/{MODEL_NAME}{path}:predict", json=body, timeout=30)


def statuses(rest_url: str) -> dict[int, dict]:
    body = requests.get(f"{rest_url}/v1/models/{MODEL_NAME}", timeout=10).json()
    return {int(s["version"]): s for s in body["model_version_status"]}


def test_versions_are_picked_up_and_retired(served_model_base, reference, tmp_path):
    base = copy_model_base(served_model_base, str(tmp_path / "captioner"), versions=[1])
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "%s" base_path: "%s" model_platform: "tensorflow" '
                      'model_version_policy { latest { num_versions: 2 } } '
                      'version_labels { key: "stable" value: 2 } } }' % (MODEL_NAME, base))
    expected = reference.captions([image_bytes(RED)])[0][0]
    with running_server(str(tmp_path / "server.log"), f"--model_config_file={config}",
                        "--file_system_poll_wait_seconds=0.3") as server:
        assert available_versions(server.rest_url) == [1]
        assert predict_caption(server.rest_url, "/labels/stable").status_code == 404  # not loaded yet

        # A half-written version (no saved_model.pb yet) and temp/non-numeric folders are ignored.
        half = os.path.join(base, "3")
        shutil.copytree(os.path.join(base, "1"), half, ignore=shutil.ignore_patterns("saved_model.pb"))
        write_warmup(half)
        os.makedirs(os.path.join(base, ".tmp-9"))
        os.makedirs(os.path.join(base, "latest"))
        # A new version published atomically (written beside, renamed into place) is loaded.
        publish_version(base, 2, source_dir=os.path.join(base, "1"))
        wait_for(lambda: available_versions(server.rest_url) == [1, 2], message="version 2 to load")
        assert predict_caption(server.rest_url, "/labels/stable").json()["predictions"][0]["caption"] == expected
        assert statuses(server.rest_url)[2]["state"] == "AVAILABLE"
        assert 3 not in statuses(server.rest_url)

        # Completing version 3 loads it (after its warmup) and the policy (latest 2) drops version 1.
        shutil.copy(os.path.join(base, "1", "saved_model.pb"), os.path.join(half, "saved_model.pb"))
        wait_for(lambda: available_versions(server.rest_url) == [2, 3], message="version 3 to replace 1")
        assert "ran 2 warmup records for captioner version 3" in server.log_text()
        assert predict_caption(server.rest_url).json()["predictions"][0]["caption"] == expected
        assert predict_caption(server.rest_url, "/versions/3").status_code == 200
        assert predict_caption(server.rest_url, "/versions/1").status_code == 404

        # A broken version is reported (state END with its error) and the others keep serving.
        broken = os.path.join(base, "4")
        os.makedirs(broken)
        with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
            f.write(b"this is not a SavedModel")
        wait_for(lambda: 4 in statuses(server.rest_url), message="version 4 to fail")
        status = statuses(server.rest_url)[4]
        assert status["state"] == "END" and status["status"]["error_code"] != "OK"
        assert status["status"]["error_message"]
        assert available_versions(server.rest_url) == [2, 3]
        response = predict_caption(server.rest_url)
        assert response.status_code == 200
        assert response.json()["predictions"][0]["caption"] == expected
        assert "failed to load captioner version 4" in server.log_text()


@pytest.mark.parametrize("policy, expected", [("latest { num_versions: 1 }", [3]),
                                              ("all { }", [1, 2, 3]),
                                              ("specific { versions: 1 versions: 3 }", [1, 3])])
def test_version_policies(policy, expected):
    from serving.config_protos import ModelConfig
    from google.protobuf import text_format
    from serving.model_registry import aspired_versions
    config = text_format.Parse(f'name: "m" base_path: "/x" model_version_policy {{ {policy} }}', ModelConfig())
    assert sorted(aspired_versions(config.model_version_policy, [1, 2, 3])) == expected
    assert sorted(aspired_versions(ModelConfig().model_version_policy, [1, 2, 3])) == [3]  # default


def test_loaded_version_runs_by_tensor_name_and_times_out(served_model_base, reference):
    from serving.errors import DeadlineExceededError
    from serving.model_registry import LoadedVersion
    loaded = LoadedVersion(MODEL_NAME, 1, os.path.join(served_model_base, "1"))
    try:
        signature = loaded.signature("")  # "" means serving_default, as in TF Serving
        images = [image_bytes(RED)]
        outputs = loaded.run(signature, {"image_bytes": np.array(images, dtype=object)})
        assert outputs["caption"][0].decode() == reference.captions(images)[0][0]
        big = [image_bytes(RED, size=(2000, 1500), fmt="JPEG")] * 16
        with pytest.raises(DeadlineExceededError):
            loaded.run(signature, {"image_bytes": np.array(big, dtype=object)}, timeout=0.001)
    finally:
        loaded.unload()
