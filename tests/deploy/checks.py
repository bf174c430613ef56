"""What the deploy tests check in deploy/'s manifests, as functions that return the problems they
find ([] when there are none), so the tests run them on the files as shipped and on deliberately
broken copies. Nothing here talks to a cluster: schemas, and agreement with the project's own
files (serving/*.config, the clients' defaults, requirements.txt, TF Serving's and model.train's
flags)."""
import copy
import dataclasses
import inspect
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from tests.helpers import REPO

DEPLOY = Path(REPO) / "deploy"
SERVING = Path(REPO) / "serving"
HERE = Path(__file__).parent
# The newest Kubernetes minor whose official schemas kubernetes-validate 1.37.0 bundles.
KUBERNETES_VERSION = "1.37.0"
MODEL_NAME = "captioner"
CONFIG_FILES = ("models.config", "batching.config", "monitoring.config")


# --- reading the files -------------------------------------------------------------------------

def read_yaml(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def kustomization(folder: str) -> dict:
    [doc] = read_yaml(DEPLOY / folder / "kustomization.yaml")
    return doc


def objects(folder: str) -> dict[str, dict]:
    """The objects of a kustomization's own resource files, by "Kind/name"."""
    found = {}
    for resource in kustomization(folder).get("resources", []):
        path = DEPLOY / folder / resource
        if path.is_file():
            for obj in read_yaml(path):
                found[f"{obj['kind']}/{obj['metadata']['name']}"] = obj
    return found


def all_objects() -> dict[str, dict]:
    """Every object deploy/ ships, by "folder:Kind/name"."""
    return {f"{folder}:{key}": obj
            for folder in ("serving", "kserve", "training") for key, obj in objects(folder).items()}


def tensorflow_pin() -> str:
    text = (Path(REPO) / "requirements.txt").read_text()
    [version] = re.findall(r"^tensorflow==(\S+)", text, flags=re.M)
    return version


def tf_serving_flag_names() -> set[str]:
    lines = (HERE / "tensorflow_model_server_flags.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def container(workload: dict, name: str | None = None) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def flag_values(args: list[str]) -> dict[str, str]:
    """--name=value arguments as {name: value}; any other form is reported as its own entry."""
    values = {}
    for arg in args:
        match = re.fullmatch(r"--(\w+)=(.*)", arg)
        values[match[1] if match else f"<not --name=value: {arg}>"] = match[2] if match else ""
    return values


# --- schemas -----------------------------------------------------------------------------------

def kubernetes_problems(obj: dict) -> list[str]:
    """The official schema of Kubernetes KUBERNETES_VERSION, strict: unknown fields fail."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {error.message} at {where}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


def strict_schema(schema):
    """A CRD's openAPIV3Schema that also refuses unknown fields, as a cluster does (the API
    server prunes them; kubectl's default field validation, strict, refuses them).
    JSON Schema allows any extra property unless told otherwise, and CRD schemas say so only
    sometimes; so every object schema that lists `properties` gets additionalProperties: false,
    unless it declares its own additionalProperties or x-kubernetes-preserve-unknown-fields (a
    free-form object)."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "patternProperties"):  # maps of field name -> schema
        if key in out:
            out[key] = {name: strict_schema(s) for name, s in out[key].items()}
    for key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), (dict, list)):
            out[key] = strict_schema(out[key])
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_schema(name: str) -> dict:
    """Test data: one version's openAPIV3Schema as published in its project's CRD (the file
    names the repository, commit and path it was taken from)."""
    return json.loads((HERE / "schemas" / f"{name}.json").read_text())


def crd_problems(obj: dict, crd: dict) -> list[str]:
    group, version = obj["apiVersion"].split("/")
    if (group, version, obj["kind"]) != (crd["group"], crd["version"], crd["kind"]):
        return [f"{obj['apiVersion']} {obj['kind']} is not {crd['group']}/{crd['version']} {crd['kind']}"]
    validator = jsonschema.Draft202012Validator(strict_schema(crd["openAPIV3Schema"]))
    return [f"{obj['kind']}/{obj['metadata'].get('name')}: {error.message} at "
            + ("/".join(str(p) for p in error.absolute_path) or "(top)")
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))]


# --- agreement with the project ----------------------------------------------------------------

def client_defaults() -> dict:
    """Model name and ports serving.client uses when given none (it does not import TensorFlow)."""
    from serving import client
    grpc_target = inspect.signature(client.GrpcClient.__init__).parameters["target"].default
    return {"model": client.ClientSettings().model,
            "rest_port": int(client.DEFAULT_REST.rsplit(":", 1)[1]),
            "grpc_port": int(grpc_target.rsplit(":", 1)[1])}


def models_config():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    text = (SERVING / "models.config").read_text()
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig()).model_config_list


def serving_problems(deployment: dict, service: dict) -> list[str]:
    """The TF Serving Deployment and Service against serving/*.config, the clients' defaults,
    the TensorFlow pin and TF Serving's flags."""
    problems = []
    defaults = client_defaults()
    [model] = models_config().config
    main = container(deployment, "tf-serving")
    args = flag_values(main.get("args", []))
    pin = tensorflow_pin()

    if main["image"] != f"tensorflow/serving:{pin}":
        problems.append(f"image {main['image']} is not tensorflow/serving:{pin} (requirements.txt's "
                        "tensorflow pin: the server must run the TF version the model is exported with)")
    unknown = sorted(set(args) - tf_serving_flag_names())
    if unknown:
        problems.append(f"tensorflow_model_server has no flag(s) {unknown}")
    if model.name != defaults["model"] or f"/v1/models/{model.name} " not in json.dumps(main["readinessProbe"]):
        problems.append(f"models.config serves {model.name!r}, the client asks for {defaults['model']!r}, "
                        "the readiness probe must ask for the same model")
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    wanted = {"grpc": defaults["grpc_port"], "http": defaults["rest_port"]}
    if ports != wanted:
        problems.append(f"container ports {ports} are not the client's defaults {wanted}")
    for flag, name in (("port", "grpc"), ("rest_api_port", "http")):
        if args.get(flag) != str(wanted[name]):
            problems.append(f"--{flag}={args.get(flag)} is not the {name} port {wanted[name]}")
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    if service_ports != {name: (port, name) for name, port in wanted.items()}:
        problems.append(f"Service ports {service_ports} are not {wanted} onto the named container ports")
    if service["spec"]["selector"].items() - deployment["spec"]["template"]["metadata"]["labels"].items():
        problems.append("the Service's selector does not select the Deployment's pods")
    problems += probe_problems(main, wanted)
    problems += mount_problems(deployment, main, args, model.base_path)
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    metrics_path = re.search(r'path:\s*"([^"]+)"', (SERVING / "monitoring.config").read_text())[1]
    if (annotations.get("prometheus.io/port"), annotations.get("prometheus.io/path")) != (
            str(wanted["http"]), metrics_path):
        problems.append("Prometheus annotations must name the REST port and monitoring.config's path "
                        f"{metrics_path}")
    return problems


def probe_problems(main: dict, ports: dict) -> list[str]:
    problems = []
    for probe in ("startupProbe", "livenessProbe"):
        if main.get(probe, {}).get("grpc", {}).get("port") != ports["grpc"]:
            problems.append(f"{probe} must be a gRPC health probe on port {ports['grpc']}")
    if "--enable_grpc_healthcheck_service=true" not in main.get("args", []):
        problems.append("gRPC probes need --enable_grpc_healthcheck_service=true")
    command = main.get("readinessProbe", {}).get("exec", {}).get("command", [])
    if f"/dev/tcp/127.0.0.1/{ports['http']}" not in " ".join(command):
        problems.append(f"the readiness probe must ask the REST port {ports['http']}")
    return problems


def mount_problems(deployment: dict, main: dict, args: dict, base_path: str) -> list[str]:
    """Each config flag names a file of the ConfigMap's mount; models.config's base_path is on
    the models volume."""
    problems = []
    mounts = {m["name"]: m["mountPath"] for m in main.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_volume = next((n for n, v in volumes.items() if "configMap" in v), None)
    generated = {f["name"]: [Path(x).name for x in f["files"]]
                 for f in kustomization("serving").get("configMapGenerator", [])}
    if config_volume is None or volumes[config_volume]["configMap"]["name"] not in generated:
        return ["the config volume must be the kustomization's generated ConfigMap"]
    files = generated[volumes[config_volume]["configMap"]["name"]]
    for flag, name in (("model_config_file", "models.config"), ("batching_parameters_file", "batching.config"),
                       ("monitoring_config_file", "monitoring.config")):
        if args.get(flag) != f"{mounts.get(config_volume)}/{name}" or name not in files:
            problems.append(f"--{flag}={args.get(flag)} is not {name} in the mounted ConfigMap")
    model_mount = next((mounts.get(n) for n, v in volumes.items() if "persistentVolumeClaim" in v), None)
    if not model_mount or not base_path.startswith(model_mount.rstrip("/") + "/"):
        problems.append(f"models.config's base_path {base_path} is not on the models volume ({model_mount})")
    return problems


def dev_server_flag_problems(args: list[str]) -> list[str]:
    """The flags the development server shares with tensorflow_model_server parse with its own
    parser (serving.model_server.parse_args), types included."""
    from serving.model_server import ServerSettings, parse_args
    shared = {f.name for f in dataclasses.fields(ServerSettings)}
    mine = [a for a in args if a.startswith("--") and a[2:].split("=")[0] in shared]
    try:
        parse_args(mine)
    except SystemExit:
        return [f"serving.model_server refuses {mine}"]
    return []


def gpu_deployment() -> tuple[dict, list[str]]:
    """deploy/serving-gpu's Deployment as kustomize builds it: the base Deployment with the
    overlay's image tag and the patch's container limits (the only two things the overlay sets;
    anything else in the patch is reported)."""
    overlay = kustomization("serving-gpu")
    [patch] = read_yaml(DEPLOY / "serving-gpu" / overlay["patches"][0]["path"])
    base = copy.deepcopy(objects("serving")[f"Deployment/{patch['metadata']['name']}"])
    [patched] = patch["spec"]["template"]["spec"]["containers"]
    problems = [f"the patch sets {sorted(set(patched) - {'name', 'resources'})} too"] if set(patched) - {
        "name", "resources"} else []
    main = container(base, patched["name"])
    main["resources"].setdefault("limits", {}).update(patched["resources"]["limits"])
    [image] = overlay["images"]
    if main["image"].split(":")[0] == image["name"]:
        main["image"] = f"{image['name']}:{image['newTag']}"
    return base, problems


def kserve_problems(isvc: dict) -> list[str]:
    problems = []
    model = isvc["spec"]["predictor"]["model"]
    # KServe's TF Serving runtime passes --model_name={{.Name}}: the object's name is the model's.
    if isvc["metadata"]["name"] != client_defaults()["model"]:
        problems.append(f"InferenceService {isvc['metadata']['name']!r} serves a model of that name; "
                        f"the client asks for {client_defaults()['model']!r}")
    if model["modelFormat"]["name"] != "tensorflow":
        problems.append("modelFormat must be tensorflow (KServe's TF Serving runtime)")
    if model.get("runtimeVersion") != tensorflow_pin():
        problems.append(f"runtimeVersion {model.get('runtimeVersion')} is not the tensorflow pin {tensorflow_pin()}")
    if not re.match(r"(pvc|gs|s3|https?)://", model.get("storageUri", "")):
        problems.append(f"storageUri {model.get('storageUri')!r} is no scheme KServe downloads")
    return problems


def training_problems(job: dict, service: dict) -> list[str]:
    """The Indexed Job and its headless Service against each other, model.train's parser,
    model/cluster.py and the training image."""
    from model.cluster import HOSTS_VARIABLE, INDEX_VARIABLE
    problems = []
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    main = container(job)
    env = {e["name"]: e.get("value") for e in main.get("env", [])}
    hosts = env.get(HOSTS_VARIABLE, "").split(",")
    port = main["ports"][0]["containerPort"]
    expected = [f"{job['metadata']['name']}-{i}.{pod.get('subdomain')}:{port}" for i in range(spec["completions"])]
    if spec.get("completionMode") != "Indexed" or spec.get("parallelism") != spec["completions"]:
        problems.append("an Indexed Job running every worker at once (parallelism == completions)")
    if hosts != expected:
        problems.append(f"{HOSTS_VARIABLE} {hosts} is not the Job's pods' names {expected}")
    if {"TF_CONFIG", INDEX_VARIABLE} & set(env):
        problems.append(f"TF_CONFIG and {INDEX_VARIABLE} come from the pod, not the manifest")
    if (service["metadata"]["name"] != pod.get("subdomain") or service["spec"].get("clusterIP") != "None"
            or service["spec"]["selector"] != {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
            or [p["port"] for p in service["spec"]["ports"]] != [port]):
        problems.append("the headless Service must be the pods' subdomain, select the Job's pods "
                        f"and expose the worker port {port}")
    if main.get("command") != ["python", "-m", "model.train"]:
        problems.append(f"command {main.get('command')} is not python -m model.train")
    problems += train_flag_problems(main.get("args", []))
    if main["image"].rsplit(":", 1)[1] != f"{tensorflow_pin()}-gpu":
        problems.append(f"image {main['image']} is not tagged {tensorflow_pin()}-gpu (deploy/Dockerfile)")
    if "nvidia.com/gpu" not in main.get("resources", {}).get("limits", {}):
        problems.append("each worker requests a GPU")
    mounts = [m["mountPath"] for m in main.get("volumeMounts", [])]
    if main.get("workingDir") not in mounts:
        problems.append("the working directory (runs/, cache/) must be the shared volume")
    return problems


def train_flag_problems(args: list[str]) -> list[str]:
    """The arguments parse with model.train's own parser and ask for a multi-worker run."""
    from model.train import parse_args
    try:
        parsed = parse_args(args)
    except SystemExit:
        return [f"python -m model.train refuses {args}"]
    return [] if parsed.get("distribute") == "multiworker" else ["--distribute multiworker is missing"]


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    default = re.search(r"^ARG BASE_TAG=(\S+)", text, flags=re.M)
    if not default or default[1] != tensorflow_pin():
        problems.append(f"ARG BASE_TAG={default and default[1]} is not the tensorflow pin {tensorflow_pin()}")
    if not re.search(r"^FROM tensorflow/tensorflow:\$\{BASE_TAG\}\s*$", text, flags=re.M):
        problems.append("FROM must be tensorflow/tensorflow:${BASE_TAG}")
    if not re.search(r"^RUN pip install .*-r requirements\.txt", text, flags=re.M):
        problems.append("the image installs requirements.txt")
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    if not users or users[-1] in ("root", "0"):
        problems.append("the image must end as a non-root USER")
    return problems
