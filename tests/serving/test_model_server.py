"""The development server's REST and gRPC APIs, called exactly as TF Serving's docs call them, against
a real server subprocess serving `served_model_base`; and its flags, which are TF Serving's."""
import base64
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from serving.model_server import MAX_REQUEST_BYTES
from tests.helpers import REPO
from tests.helpers.images import BLUE, RED, hostile_images, image_bytes
from tests.helpers.servers import IS_STANDIN, MODEL_NAME, running_server, subprocess_env


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target, options=[
            ("grpc.max_send_message_length", 32 << 20),
            ("grpc.max_receive_message_length", 32 << 20)]) as ch:
        yield ch


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def model_url(server, suffix=""):
    return f"{server.rest_url}/v1/models/{MODEL_NAME}{suffix}"


def assert_still_serving(server, reference):
    image = image_bytes(BLUE)
    response = requests.post(model_url(server, ":predict"), json={"instances": [b64(image)]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["caption"] == reference.caption([image])[0].caption


# --- status and metadata -------------------------------------------------------------------------
def test_status_like_tf_serving(server):
    for suffix in ("", "/versions/1"):
        response = requests.get(model_url(server, suffix), timeout=10)
        assert response.status_code == 200
        assert response.json() == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_metadata_lists_the_contract_signatures(server):
    response = requests.get(model_url(server, "/metadata"), timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"]["name"] == MODEL_NAME and body["model_spec"]["version"] == "1"
    signatures = body["metadata"]["signature_def"]["signature_def"]
    for name in ("serving_default", "beam_search"):
        image_input = signatures[name]["inputs"]["image_bytes"]
        assert image_input["dtype"] == "DT_STRING"
        assert image_input["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
        beams = {"alternatives": "DT_STRING", "alternative_scores": "DT_FLOAT"} if name == "beam_search" else {}
        assert {k: v["dtype"] for k, v in signatures[name]["outputs"].items()
                if k != "attention"} == {"caption": "DT_STRING", "log_prob": "DT_FLOAT", "error": "DT_STRING", **beams}
        for output in beams:  # [batch, beam_width]
            size = [int(d["size"]) for d in signatures[name]["outputs"][output]["tensor_shape"]["dim"]]
            assert size[0] == -1 and len(size) == 2 and size[1] >= 1
    features = signatures["caption_features"]["inputs"]["features"]
    assert features["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in features["tensor_shape"]["dim"]] == ["-1", "2048"]


# --- predict, as the REST docs write it ------------------------------------------------------------
def test_row_format_with_b64(server, reference):
    images = [image_bytes(RED), image_bytes(BLUE, fmt="JPEG")]
    body = json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]})
    response = requests.post(model_url(server, ":predict"), data=body, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = reference.caption(images)
    assert [(p["caption"], p["error"]) for p in predictions] == [(e.caption, e.error) for e in expected]
    assert [p["log_prob"] for p in predictions] == pytest.approx([e.log_prob for e in expected], abs=1e-5)
    if IS_STANDIN:
        assert [p["caption"] for p in predictions] == ["a red image", "a blue image"]


def test_row_format_with_named_inputs(server, reference):
    image = image_bytes(RED)
    response = requests.post(model_url(server, ":predict"),
                             json={"instances": [{"image_bytes": b64(image)}]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["caption"] == reference.caption([image])[0].caption


def test_columnar_format_with_signature_name_and_version_path(server, reference):
    images = [image_bytes(BLUE), image_bytes(RED)]
    body = {"signature_name": "beam_search", "inputs": {"image_bytes": [b64(i) for i in images]}}
    response = requests.post(model_url(server, "/versions/1:predict"), json=body, timeout=30)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    expected = reference.caption(images, "beam_search")
    assert outputs["caption"] == [e.caption for e in expected]
    assert outputs["error"] == ["", ""]
    assert outputs["caption"] != [e.caption for e in reference.caption(images)]  # beam != greedy wording
    assert outputs["alternatives"] == [[c for c, _ in e.alternatives] for e in expected]
    assert np.allclose(outputs["alternative_scores"], [[s for _, s in e.alternatives] for e in expected], atol=1e-5)


def test_beam_search_alternatives_in_rows_and_over_grpc(server, channel, reference):
    """[batch, beam_width] outputs come back per row over REST and as [batch, beam_width] tensors
    over gRPC; a bad image gets "" and 0 in every column (the client makes that [])."""
    images = [image_bytes(RED), b"not an image", image_bytes(BLUE)]
    expected = reference.run("beam_search", {"image_bytes": np.array(images, dtype=object)})
    response = requests.post(model_url(server, ":predict"), timeout=30, json={
        "signature_name": "beam_search", "instances": [b64(i) for i in images]})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert [row["alternatives"] for row in rows] == [[c.decode() for c in r] for r in expected["alternatives"]]
    assert np.allclose([row["alternative_scores"] for row in rows], expected["alternative_scores"], atol=1e-5)
    assert rows[1]["alternatives"] == [""] * len(rows[0]["alternatives"]) and not any(rows[1]["alternative_scores"])
    assert all(row["alternatives"][0] == row["caption"] for row in rows)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = "beam_search"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    alternatives = tf.make_ndarray(response.outputs["alternatives"])
    assert alternatives.shape == expected["alternatives"].shape and alternatives.shape[0] == 3
    assert (alternatives == expected["alternatives"]).all()
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["alternative_scores"]),
                               expected["alternative_scores"], atol=1e-5)
    if IS_STANDIN:
        assert rows[0]["alternatives"][:2] == ["a picture that is mostly red", "a picture that is mostly orange"]


def test_columnar_unnamed_input_and_caption_features(server, reference):
    features = np.zeros([2, 2048], np.float32)
    features[0, :3] = [1.0, 1.0, 0.0]
    body = {"signature_name": "caption_features", "inputs": features.tolist()}
    response = requests.post(model_url(server, ":predict"), json=body, timeout=30)
    assert response.status_code == 200, response.text
    expected = reference.run("caption_features", {"features": features})
    assert response.json()["outputs"]["caption"] == [c.decode() for c in expected["caption"]]


def test_hostile_images_give_per_item_errors(server, reference):
    from data.images import ERROR_CORRUPT, ERROR_EMPTY, ERROR_FORMAT, ERROR_PIXELS
    hostile = hostile_images()
    images = [image_bytes(RED), *hostile.values()]
    response = requests.post(model_url(server, ":predict"),
                             json={"instances": [b64(i) for i in images]}, timeout=60)
    assert response.status_code == 200, response.text
    errors = [p["error"] for p in response.json()["predictions"]]
    assert errors == ["", ERROR_EMPTY, ERROR_FORMAT, ERROR_CORRUPT, ERROR_PIXELS]
    assert response.json()["predictions"][0]["caption"] == reference.caption(images[:1])[0].caption
    assert_still_serving(server, reference)


BAD_REQUESTS = {
    "malformed_json": (":predict", '{"instances": [', 400, "JSON"),
    "unknown_model": ("/../nope:predict", {"instances": []}, 404, "nope"),
    "unknown_version": ("/versions/99:predict", {"instances": []}, 404, "99"),
    "unknown_label": ("/labels/canary:predict", {"instances": []}, 404, "canary"),
    "unknown_signature": (":predict", {"signature_name": "nope", "instances": []}, 400, "nope"),
    "wrong_input_name": (":predict", {"inputs": {"images": [{"b64": ""}]}}, 400, "images"),
    "not_base64": (":predict", {"instances": [{"b64": "not base64!"}]}, 400, "base64"),
    "rows_and_columns": (":predict", {"instances": [], "inputs": []}, 400, "instances"),
    "number_for_string": (":predict", {"instances": [3.5]}, 400, "image_bytes"),
    "ragged_features": (":predict", {"signature_name": "caption_features", "inputs": [[1.0], [1.0, 2.0]]},
                        400, "features"),
    "body_not_object": (":predict", [1, 2], 400, "object"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_tf_serving_errors(server, reference, case):
    suffix, body, status, mentions = BAD_REQUESTS[case]
    url = model_url(server, suffix).replace(f"{MODEL_NAME}/../", "")
    if isinstance(body, str):
        response = requests.post(url, data=body, timeout=30)
    else:
        response = requests.post(url, json=body, timeout=30)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    assert mentions in response.json()["error"]
    assert_still_serving(server, reference)


def test_oversized_body_is_refused(server, reference):
    big = b"\xff\xd8\xff" + os.urandom(MAX_REQUEST_BYTES)
    response = requests.post(model_url(server, ":predict"), json={"instances": [b64(big)]}, timeout=60)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]
    assert_still_serving(server, reference)


def test_unknown_model_status_and_paths(server):
    response = requests.get(f"{server.rest_url}/v1/models/nope", timeout=10)
    assert response.status_code == 404 and "nope" in response.json()["error"]
    response = requests.get(model_url(server, "/versions/abc"), timeout=10)
    assert response.status_code == 400 and "Malformed request" in response.json()["error"]


def test_metadata_of_a_pinned_version(server):
    response = requests.get(model_url(server, "/versions/1/metadata"), timeout=10)
    assert response.status_code == 200 and response.json()["model_spec"]["version"] == "1"


# --- gRPC, with tf.make_tensor_proto as TF Serving's docs do ----------------------------------------
def test_grpc_predict(channel, reference):
    images = [image_bytes(RED), image_bytes(BLUE), b""]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, timeout=30)
    captions = [c.decode() for c in tf.make_ndarray(response.outputs["caption"])]
    errors = [e.decode() for e in tf.make_ndarray(response.outputs["error"])]
    expected = reference.caption(images)
    assert captions == [e.caption for e in expected] and errors == [e.error for e in expected]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["log_prob"]),
                               [e.log_prob for e in expected], atol=1e-5)
    assert response.model_spec.version.value == 1


def test_grpc_metadata_and_status(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL_NAME
    response = stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "beam_search", "caption_features"} <= set(signatures.signature_def)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL_NAME
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=10)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


@pytest.mark.parametrize("case, code", [("unknown_model", grpc.StatusCode.NOT_FOUND),
                                        ("unknown_version", grpc.StatusCode.NOT_FOUND),
                                        ("unknown_signature", grpc.StatusCode.INVALID_ARGUMENT),
                                        ("wrong_input_name", grpc.StatusCode.INVALID_ARGUMENT),
                                        ("wrong_dtype", grpc.StatusCode.INVALID_ARGUMENT)])
def test_grpc_errors(channel, case, code):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "nope" if case == "unknown_model" else MODEL_NAME
    if case == "unknown_version":
        request.model_spec.version.value = 99
    request.model_spec.signature_name = "nope" if case == "unknown_signature" else "serving_default"
    name = "images" if case == "wrong_input_name" else "image_bytes"
    value = tf.make_tensor_proto([1.0, 2.0]) if case == "wrong_dtype" else tf.make_tensor_proto([b""])
    request.inputs[name].CopyFrom(value)
    with pytest.raises(grpc.RpcError) as raised:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert raised.value.code() == code


def test_grpc_oversized_message(channel):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([b"\xff\xd8\xff" + bytes(MAX_REQUEST_BYTES)]))
    with pytest.raises(grpc.RpcError) as raised:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_hostile_images(channel):
    from data.images import ERROR_PIXELS
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(list(hostile_images().values())))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    errors = [e.decode() for e in tf.make_ndarray(response.outputs["error"])]
    assert all(errors) and errors[-1] == ERROR_PIXELS


# --- load ----------------------------------------------------------------------------------------
def test_load_8_clients_x_50_requests(server, reference):
    colours = [RED, BLUE, (30, 180, 30), (240, 220, 30)]
    images = [image_bytes(c) for c in colours]
    expected = [e.caption for e in reference.caption(images)]

    def client(worker: int):
        latencies, failures = [], []
        with requests.Session() as session:
            for i in range(50):
                k = (worker + i) % len(images)
                started = time.perf_counter()
                response = session.post(model_url(server, ":predict"),
                                        json={"instances": [b64(images[k])]}, timeout=60)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200 or response.json()["predictions"][0]["caption"] != expected[k]:
                    failures.append(response.text[:200])
        return latencies, failures

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    elapsed = time.perf_counter() - started
    latencies = sorted(l for lat, _ in results for l in lat)
    failures = [f for _, fail in results for f in fail]
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    print(f"\nLOAD 8 clients x 50 requests: {len(failures)} failures, p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, {len(latencies) / elapsed:.0f} requests/s")
    assert not failures, failures[:3]
    assert len(latencies) == 400


# --- flags: tensorflow_model_server's names; the rest is the container's job ---------------------
def run_server_command(*flags) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.model_server", *flags], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_help_says_development_server_and_names_the_container():
    result = run_server_command("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "DEVELOPMENT" in text and "tensorflow/serving:2.21.0" in text
    for flag in ("--port", "--rest_api_port", "--model_name", "--model_base_path", "--model_config_file",
                 "--file_system_poll_wait_seconds"):
        assert flag in result.stdout


def refused_flags(capsys, *flags) -> str:
    """stderr of the command's parse_args(FLAGS) in this process, which must exit 2 (the
    command itself runs in its own interpreter in test_help_says_development_server_...)."""
    from serving.model_server import parse_args
    with pytest.raises(SystemExit) as done:
        parse_args(list(flags))
    assert done.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--enable_batching=true", "--monitoring_config_file=m.config",
                                  "--batching_parameters_file=b.config"])
def test_other_tf_serving_flags_are_refused_with_the_container_command(flag, capsys):
    stderr = refused_flags(capsys, "--model_name=captioner", "--model_base_path=/nowhere", flag)
    assert "TF Serving feature" in stderr and "tensorflow/serving:2.21.0" in stderr
    assert flag in stderr.splitlines()[-1]


def test_mixed_precision_takes_only_what_tensorflow_model_server_takes(capsys):
    stderr = refused_flags(capsys, "--model_name=captioner", "--model_base_path=/nowhere",
                           "--mixed_precision=float16")
    assert "--mixed_precision must be one of" in stderr and "'float16'" in stderr


@pytest.mark.slow
def test_model_config_file_with_one_model(served_model_base, tmp_path, reference):
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "%s" base_path: "%s" model_platform: '
                      '"tensorflow" } }' % (MODEL_NAME, served_model_base))
    with running_server(str(tmp_path / "server.log"), f"--model_config_file={config}") as server:
        assert_still_serving(server, reference)
    config.write_text('model_config_list { config { name: "a" base_path: "/a" } '
                      'config { name: "b" base_path: "/b" } }')
    result = run_server_command(f"--model_config_file={config}")
    assert result.returncode == 1 and "lists 2 models" in result.stderr
