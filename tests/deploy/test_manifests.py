"""deploy/'s Kubernetes manifests, checked without a cluster: every built-in object against the
official schemas of Kubernetes 1.37 (kubernetes-validate, strict: unknown fields fail), the
InferenceService against KServe's published CRD schema (made strict the same way), and what the
manifests say against the project: serving/*.config, serving.client's defaults, the TensorFlow pin,
tensorflow_model_server's flags, model.train's parser, model/cluster.py, deploy/Dockerfile. The
readiness probe's script runs for real (bash) against an HTTP server answering TF Serving's
status JSON. Broken copies of the manifests must fail the same checks."""
import copy
import http.server
import socket
import subprocess
import threading

import pytest

from model.cluster import tf_config_from_env
from tests.deploy import checks
from tests.deploy.checks import DEPLOY, SERVING

OBJECTS = checks.all_objects()
BUILT_IN = sorted(key for key, obj in OBJECTS.items() if "." not in obj["apiVersion"].split("/")[0])
ISVC_SCHEMA = "inferenceservice-v1beta1"


def serving_objects() -> tuple[dict, dict]:
    found = checks.objects("serving")
    return found["Deployment/captioner"], found["Service/captioner"]


def training_objects() -> tuple[dict, dict]:
    found = checks.objects("training")
    return found["Job/captioner-train"], found["Service/captioner-train"]


def isvc() -> dict:
    return checks.objects("kserve")["InferenceService/captioner"]


def count_fields(value) -> int:
    """Leaf values (scalars) in an object: how much a schema check covered."""
    if isinstance(value, dict):
        return sum(count_fields(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_fields(v) for v in value)
    return 1


# --- schemas -----------------------------------------------------------------------------------

def test_every_object_has_a_schema_check():
    custom = sorted(set(OBJECTS) - set(BUILT_IN))
    assert custom == ["kserve:InferenceService/captioner"], custom
    print(f"{len(OBJECTS)} objects, {count_fields(list(OBJECTS.values()))} fields: {sorted(OBJECTS)}")


@pytest.mark.parametrize("key", BUILT_IN)
def test_kubernetes_schema(key):
    assert checks.kubernetes_problems(OBJECTS[key]) == []


def test_gpu_overlay():
    deployment, problems = checks.gpu_deployment()
    assert problems == []
    assert checks.kubernetes_problems(deployment) == []
    main = checks.container(deployment, "tf-serving")
    assert main["image"] == f"tensorflow/serving:{checks.tensorflow_pin()}-gpu"
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_inferenceservice_crd_schema():
    assert checks.crd_problems(isvc(), checks.crd_schema(ISVC_SCHEMA)) == []


def test_the_published_crd_schema_alone_accepts_a_misspelt_field():
    """Why strict_schema exists: KServe's schema lists the model's properties without
    additionalProperties: false, so plain JSON Schema lets `storageURI` through."""
    import jsonschema
    broken = copy.deepcopy(isvc())
    broken["spec"]["predictor"]["model"]["storageURI"] = broken["spec"]["predictor"]["model"].pop("storageUri")
    published = checks.crd_schema(ISVC_SCHEMA)["openAPIV3Schema"]
    assert not list(jsonschema.Draft202012Validator(published).iter_errors(broken))
    assert checks.crd_problems(broken, checks.crd_schema(ISVC_SCHEMA))


def test_strict_schema_keeps_free_form_objects_open():
    schema = checks.strict_schema({"type": "object", "properties": {
        "fixed": {"type": "object", "properties": {"a": {"type": "string"}}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "properties": {"type": "object", "properties": {"b": {"type": "string"}}}}})  # a field named "properties"
    import jsonschema
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"free": {"x": 1}, "map": {"k": "v"}, "properties": {"b": "c"}}))
    assert [e.message for e in validator.iter_errors({"fixed": {"a": "x", "z": 1}})] == [
        "Additional properties are not allowed ('z' was unexpected)"]
    assert len(list(validator.iter_errors({"propertiez": {}, "properties": {"q": 1}}))) == 2


# --- kustomize layout and the ConfigMap's files ---------------------------------------------------

@pytest.mark.parametrize("folder", ["serving", "serving-gpu", "kserve", "training"])
def test_kustomization_lists_every_file(folder):
    kustomization = checks.kustomization(folder)
    listed = set(kustomization.get("resources", [])) | {p["path"] for p in kustomization.get("patches", [])}
    for path in listed:
        assert (DEPLOY / folder / path).exists(), path
    on_disk = {p.name for p in (DEPLOY / folder).glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk <= listed, f"{folder}: {sorted(on_disk - listed)} are not in kustomization.yaml"


def test_configmap_files_are_the_serving_configs():
    [generator] = checks.kustomization("serving")["configMapGenerator"]
    assert sorted(generator["files"]) == sorted(f"config/{name}" for name in checks.CONFIG_FILES)
    for name in checks.CONFIG_FILES:
        copy_bytes = (DEPLOY / "serving" / "config" / name).read_bytes()
        assert copy_bytes == (SERVING / name).read_bytes(), (
            f"deploy/serving/config/{name} differs from serving/{name}: cp serving/*.config deploy/serving/config/")


# --- agreement with the project ------------------------------------------------------------------

def test_tf_serving_agrees_with_the_project():
    deployment, service = serving_objects()
    assert checks.serving_problems(deployment, service) == []


def test_tf_serving_args_parse_with_the_development_server():
    deployment, _ = serving_objects()
    args = checks.container(deployment, "tf-serving")["args"]
    assert checks.dev_server_flag_problems(args) == []


def test_autoscaler_and_disruption_budget_target_the_deployment():
    found = checks.objects("serving")
    deployment, hpa, pdb = found["Deployment/captioner"], found["HorizontalPodAutoscaler/captioner"], \
        found["PodDisruptionBudget/captioner"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "captioner"}
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # Utilization is relative to the CPU request: without one the HPA cannot scale.
    assert "cpu" in checks.container(deployment, "tf-serving")["resources"]["requests"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("workload", ["serving:Deployment/captioner", "training:Job/captioner-train"])
def test_non_root(workload):
    pod = OBJECTS[workload]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    if workload.startswith("serving"):
        assert checks.container(OBJECTS[workload])["securityContext"]["readOnlyRootFilesystem"] is True


def test_kserve_agrees_with_the_project():
    assert checks.kserve_problems(isvc()) == []


def test_training_job_agrees_with_the_project():
    job, service = training_objects()
    assert checks.training_problems(job, service) == []


def test_training_pods_derive_a_worker_only_tf_config():
    """The environment Kubernetes gives pod i (the manifest's env + JOB_COMPLETION_INDEX=i):
    model/cluster.py turns it into TF_CONFIG with every worker and no chief."""
    job, _ = training_objects()
    env = {e["name"]: e["value"] for e in checks.container(job)["env"]}
    completions = job["spec"]["completions"]
    for index in range(completions):
        tf_config = tf_config_from_env({**env, "JOB_COMPLETION_INDEX": str(index)})
        assert tf_config["task"] == {"type": "worker", "index": index}
        assert list(tf_config["cluster"]) == ["worker"]
        assert tf_config["cluster"]["worker"][index].startswith(f"captioner-train-{index}.captioner-train:")
    with pytest.raises(ValueError, match="not an index into the 2 workers"):
        tf_config_from_env({**env, "JOB_COMPLETION_INDEX": str(completions)})


def test_dockerfile_and_dockerignore():
    assert checks.dockerfile_problems((DEPLOY / "Dockerfile").read_text()) == []
    ignored = set((DEPLOY.parent / ".dockerignore").read_text().split())
    assert {"datasets/", "cache/", "runs/", "models/", ".git"} <= ignored


# --- the readiness probe's script, run ---------------------------------------------------------

def status_json(state: str) -> bytes:
    """GET /v1/models/captioner's body for one version in `state`, printed from TF Serving's own
    GetModelStatusResponse proto the way its REST API prints it (JSON with whitespace)."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_status_pb2
    response = get_model_status_pb2.GetModelStatusResponse()
    version = response.model_version_status.add(version=1)
    version.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
    version.status.error_message = ""
    return json_format.MessageToJson(response, preserving_proto_field_name=True, indent=1).encode()


@pytest.fixture
def status_server():
    """127.0.0.1 HTTP server answering GET /v1/models/captioner with the state a test sets
    (200 whatever the state, as TF Serving does) and 404 for any other model."""
    answer = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            found = self.path == "/v1/models/captioner"
            body = status_json(answer["state"]) if found else b'{"error": "Could not find any versions of model"}'
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1], answer
    server.shutdown()
    server.server_close()


def readiness_command(port: int, model: str = "captioner") -> list[str]:
    deployment, _ = serving_objects()
    command = checks.container(deployment, "tf-serving")["readinessProbe"]["exec"]["command"]
    assert "/dev/tcp/127.0.0.1/8501" in command[-1] and "/v1/models/captioner " in command[-1]
    return command[:-1] + [command[-1].replace("/8501", f"/{port}").replace("/captioner ", f"/{model} ")]


@pytest.mark.parametrize("state, ready", [("AVAILABLE", True), ("LOADING", False), ("START", False),
                                          ("UNLOADING", False), ("END", False)])
def test_readiness_probe_passes_only_when_available(status_server, state, ready):
    port, answer = status_server
    answer["state"] = state
    result = subprocess.run(readiness_command(port), capture_output=True, timeout=10)
    assert (result.returncode == 0) == ready, (state, result)


def test_readiness_probe_fails_for_an_unknown_model_or_no_server(status_server):
    port, answer = status_server
    answer["state"] = "AVAILABLE"
    assert subprocess.run(readiness_command(port, "other"), capture_output=True, timeout=10).returncode != 0
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert subprocess.run(readiness_command(closed), capture_output=True, timeout=10).returncode != 0


# --- deliberately broken manifests fail ----------------------------------------------------------

def broken_deployment(change):
    deployment, service = serving_objects()
    deployment = copy.deepcopy(deployment)
    change(checks.container(deployment, "tf-serving"))
    return deployment, service


def set_arg(main, flag, value):
    main["args"] = [a for a in main["args"] if not a.startswith(f"--{flag}=")] + [f"--{flag}={value}"]


def set_port(main, name, port):
    next(p for p in main["ports"] if p["name"] == name)["containerPort"] = port


def serving_check(deployment_service):
    return checks.serving_problems(*deployment_service)


def isvc_with(change):
    broken = copy.deepcopy(isvc())
    change(broken["spec"]["predictor"]["model"])
    return broken


def training_with(change):
    job, service = training_objects()
    job = copy.deepcopy(job)
    change(job)
    return job, service


BROKEN = {
    "unknown field in the Deployment": (
        lambda: broken_deployment(lambda c: c.update(imagePullPolice="Always"))[0],
        checks.kubernetes_problems, "'imagePullPolice' was unexpected"),
    "unknown field in the Job": (
        lambda: training_with(lambda j: j["spec"].update(completionsMode="Indexed"))[0],
        checks.kubernetes_problems, "'completionsMode' was unexpected"),
    "wrong type in the Service": (
        lambda: {**OBJECTS["serving:Service/captioner"], "spec": {"ports": [{"port": "eighty"}]}},
        checks.kubernetes_problems, "'eighty' is not of type 'integer'"),
    "unknown field in the InferenceService": (
        lambda: isvc_with(lambda m: m.update(storageURI=m.pop("storageUri"))),
        lambda obj: checks.crd_problems(obj, checks.crd_schema(ISVC_SCHEMA)), "'storageURI' was unexpected"),
    "wrong REST container port": (
        lambda: broken_deployment(lambda c: set_port(c, "http", 8080)),
        serving_check, "are not the client's defaults"),
    "wrong --rest_api_port": (
        lambda: broken_deployment(lambda c: set_arg(c, "rest_api_port", "8080")),
        serving_check, "--rest_api_port=8080 is not the http port 8501"),
    "wrong serving image tag": (
        lambda: broken_deployment(lambda c: c.update(image="tensorflow/serving:2.20.0")),
        serving_check, "is not tensorflow/serving:2.21.0"),
    "misspelt TF Serving flag": (
        lambda: broken_deployment(lambda c: set_arg(c, "enable_batchng", "true")),
        serving_check, "tensorflow_model_server has no flag(s) ['enable_batchng']"),
    "wrong KServe runtimeVersion": (
        lambda: isvc_with(lambda m: m.update(runtimeVersion="2.20.0")),
        checks.kserve_problems, "runtimeVersion 2.20.0 is not the tensorflow pin 2.21.0"),
    "wrong training image tag": (
        lambda: training_with(lambda j: checks.container(j).update(image="neural-storyteller:2.20.0-gpu")),
        lambda js: checks.training_problems(*js), "is not tagged 2.21.0-gpu"),
    "one worker too many": (
        lambda: training_with(lambda j: j["spec"].update(completions=3, parallelism=3)),
        lambda js: checks.training_problems(*js), "is not the Job's pods' names"),
    "unknown model.train flag": (
        lambda: training_with(lambda j: checks.container(j)["args"].append("--num-epochs=3")),
        lambda js: checks.training_problems(*js), "python -m model.train refuses"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_manifest_fails(name):
    make, check, expected = BROKEN[name]
    problems = check(make())
    assert any(expected in problem for problem in problems), problems
    print(f"{name}: {problems}")
