"""Deployment files for the TF Serving container: models.config parses with TF Serving's own
ModelServerConfig (tensorflow-serving-api), batching.config and monitoring.config hold only TF
Serving's field names (the wheel ships no message for them), docker-compose.yml and the README pin the
2.21 images. (That the clients stay TensorFlow-free is test_stage_imports.py's.)"""
import os
import re

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
from tests.helpers import REPO

SERVING = os.path.join(REPO, "serving")
# BatchingParameters fields (tensorflow_serving/servables/tensorflow/session_bundle_config.proto);
# the first four are Int64Value wrappers, written `name { value: N }`.
WRAPPED = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"}
BATCHING_FIELDS = WRAPPED | {"thread_pool_name", "allowed_batch_sizes", "pad_variable_length_inputs"}


def parse_models_config(text: str):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def flat_fields(path: str) -> dict[str, list[str]]:
    """name -> values of a flat text-format message of scalars and `{ value: N }` wrappers."""
    fields = {}
    with open(path) as f:
        for line in filter(None, (line.split("#")[0].strip() for line in f)):
            match = re.fullmatch(r"(\w+)\s*(?::\s*(\S+)|\{\s*value:\s*(\S+)\s*\})", line)
            assert match, f"{path}: cannot read {line!r}"
            fields.setdefault(match[1], []).append((match[2] or match[3], match[3] is not None))
    return fields


def test_models_config():
    with open(os.path.join(SERVING, "models.config")) as f:
        [model] = parse_models_config(f.read()).model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("captioner", "/models/captioner", "tensorflow")
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2


@pytest.mark.parametrize("path", ["serving/models.config", "deploy/serving/config/models.config"])
def test_development_server_reads_the_projects_models_config(path, caplog):
    """The development server takes the container's --model_config_file as it is: the one model's
    name and base path, and a warning that the version policy is TF Serving's alone."""
    from serving.model_server import ServerSettings, model_source
    settings = ServerSettings(model_config_file=os.path.join(REPO, path))
    assert model_source(settings) == ("captioner", "/models/captioner")
    assert "version policy and labels are TF Serving features" in caplog.text


def test_batching_config():
    fields = flat_fields(os.path.join(SERVING, "batching.config"))
    assert set(fields) <= BATCHING_FIELDS, set(fields) - BATCHING_FIELDS
    for name, values in fields.items():
        assert all(wrapped == (name in WRAPPED) for _, wrapped in values), name
    sizes = [int(v) for v, _ in fields["allowed_batch_sizes"]]
    assert sizes == sorted(sizes) and sizes[-1] == int(fields["max_batch_size"][0][0])
    assert int(fields["batch_timeout_micros"][0][0]) > 0


def test_monitoring_config():
    with open(os.path.join(SERVING, "monitoring.config")) as f:
        text = re.sub(r"#.*", "", f.read())
    assert re.fullmatch(r'\s*prometheus_config\s*\{\s*enable:\s*true\s*'
                        r'path:\s*"/monitoring/prometheus/metrics"\s*\}\s*', text), text


def test_docker_compose():
    with open(os.path.join(SERVING, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    cpu, gpu = compose["services"]["serving"], compose["services"]["serving-gpu"]
    assert cpu["image"] == "tensorflow/serving:2.21.0"
    assert gpu["image"] == "tensorflow/serving:2.21.0-gpu"
    assert gpu["profiles"] == ["gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for service in (cpu, gpu):
        mounts = {container: host for host, container, _ in (v.rsplit(":", 2) for v in service["volumes"])}
        flags = dict(flag.lstrip("-").split("=", 1) for flag in service["command"])
        for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
            host_file = mounts[flags[flag]]  # each config flag names a file mounted from serving/
            assert os.path.exists(os.path.join(SERVING, host_file)), host_file
        assert flags["enable_batching"] == "true"
        assert mounts["/models/captioner"].startswith("${MODEL_DIR")


def test_deployment_files_have_the_bfloat16_variant():
    compose = yaml.safe_load((REPO / "serving" / "docker-compose.yml").read_text())
    plain, bf16 = compose["services"]["serving"], compose["services"]["serving-bf16"]
    assert bf16["profiles"] == ["bf16"] and bf16["image"] == plain["image"]  # CPU image
    assert bf16["command"] == plain["command"] + ["--mixed_precision=bfloat16"]
    assert bf16["volumes"] == plain["volumes"]
    readme = (REPO / "docs" / "serving.md").read_text()
    assert "  --mixed_precision=bfloat16\n```" in readme and "--profile bf16" in readme


def test_readme_has_the_docker_and_curl_commands():
    with open(os.path.join(REPO, "docs", "serving.md")) as f:
        text = f.read()
    for needed in ("tensorflow/serving:2.21.0 \\", "tensorflow/serving:2.21.0-gpu", "--gpus all",
                   "/v1/models/captioner/metadata", ":predict", '"b64"', '"signature_name"',
                   '"inputs"', "/versions/1:predict", "development server"):
        assert needed in text, needed
