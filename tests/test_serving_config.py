"""Deployment files: the text-format configs parse with TF Serving's proto messages (a typo fails
here), docker-compose.yml and the README pin the 2.21 images, and the clients stay TensorFlow-free."""
import os
import subprocess
import sys

import pytest
import yaml

from serving.config_protos import (BatchingParameters, MonitoringConfig, load_batching_parameters,
                                   load_model_server_config, load_monitoring_config)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = os.path.join(REPO, "serving")


def test_models_config():
    config = load_model_server_config(os.path.join(SERVING, "models.config"))
    [model] = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("captioner", "/models/captioner", "tensorflow")
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2


def test_batching_config():
    params = load_batching_parameters(os.path.join(SERVING, "batching.config"))
    assert params.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    sizes = list(params.allowed_batch_sizes)
    assert sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value
    assert params.batch_timeout_micros.value > 0
    assert params.num_batch_threads.value >= 1 and params.max_enqueued_batches.value >= 1


def test_monitoring_config():
    config = load_monitoring_config(os.path.join(SERVING, "monitoring.config"))
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


@pytest.mark.parametrize("loader, text, error", [
    (load_model_server_config, 'model_config_list { config { name: "m" base_pth: "/x" } }', "base_pth"),
    (load_model_server_config, 'model_config_list { config { name: "m" } }', "base_path"),
    (load_batching_parameters, "max_batch_size { value: 32 }\nbatch_timeout_micro { value: 1 }", "batch_timeout_micro"),
    (load_batching_parameters, "max_batch_size { value: 32 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16", "max_batch_size"),
    (load_batching_parameters, "max_batch_size: 32", "max_batch_size"),  # a wrapper, needs { value: }
    (load_monitoring_config, "prometheus_config { enabled: true }", "enabled"),
])
def test_typos_fail(tmp_path, loader, text, error):
    path = tmp_path / "bad.config"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        loader(str(path))


def test_messages_match_upstream_field_numbers():
    """The BatchingParameters/MonitoringConfig messages (real or transcribed) keep the wire format."""
    numbers = {f.name: f.number for f in BatchingParameters.DESCRIPTOR.fields}
    assert {k: numbers[k] for k in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                                    "num_batch_threads", "allowed_batch_sizes")} == {
        "max_batch_size": 1, "batch_timeout_micros": 2, "max_enqueued_batches": 3,
        "num_batch_threads": 4, "allowed_batch_sizes": 6}
    assert MonitoringConfig.DESCRIPTOR.fields_by_name["prometheus_config"].number == 1


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


def test_readme_has_the_docker_and_curl_commands():
    with open(os.path.join(SERVING, "README-deploy.md")) as f:
        text = f.read()
    for needed in ("tensorflow/serving:2.21.0 \\", "tensorflow/serving:2.21.0-gpu", "--gpus all",
                   "/v1/models/captioner/metadata", ":predict", '"b64"', '"signature_name"',
                   '"inputs"', "/versions/1:predict", "development and tests"):
        assert needed in text, needed


@pytest.mark.parametrize("module", ["serving.client", "serving.app", "serving.errors"])
def test_clients_do_not_import_tensorflow(module):
    code = (f"import sys, {module}; "
            "sys.exit(1 if any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules) else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0, f"{module} imports TensorFlow\n{result.stderr[-2000:]}"


def test_model_server_help_says_development_only():
    result = subprocess.run([sys.executable, "-m", "serving.model_server", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "DEVELOPMENT AND TESTS" in text and "tensorflow/serving:2.21.0" in text
    for flag in ("--port", "--rest_api_port", "--model_name", "--model_base_path", "--model_config_file",
                 "--enable_batching", "--batching_parameters_file", "--file_system_poll_wait_seconds",
                 "--rest_api_timeout_in_ms", "--host", "--max_request_bytes"):
        assert flag in result.stdout
