"""Imports flow data -> model -> export -> serving and stay light: in fresh interpreters, neither
the export and serving modules nor `python -m serving.model_server --help` load training,
metrics, plots or the feature cache; the development server loads nothing from model/ and not the
client (they share serving.protocol); the client side (serving.client, serving.app and the
contract they share) loads neither TensorFlow nor the loaders' code."""
import json
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.servers import subprocess_env

HEAVY = {"model.train", "model.metrics", "model.plots", "data.feature_cache"}
PROJECT = re.compile(r"(data|model|export|serving)(\.|$)")
STAGE_MODULES = sorted(f"{folder}.{path.stem}" for folder in ("export", "serving")
                       for path in (REPO / folder).glob("*.py") if path.stem != "__init__")
CLIENT_SIDE = ["serving.client", "serving.app", "serving.protocol", "export.contract"]
LOADER_SIDE = {"export.loaded_model", "export.artifact", "export.cc_loader"}


def loaded_by(modules: list[str]) -> set[str]:
    """Every module a fresh interpreter holds after importing `modules`, one after the other."""
    code = f"import json, sys\nfor m in {modules!r}: __import__(m)\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.slow
def test_every_export_and_serving_module_imports_without_the_heavy_ones():
    loaded = loaded_by(STAGE_MODULES)
    assert {"export.contract", "export.loaded_model", "export.cc_loader", "serving.app",
            "serving.model_server"} <= loaded
    assert not HEAVY & loaded, HEAVY & loaded


def test_the_client_side_loads_neither_tensorflow_nor_the_loaders():
    # One interpreter for them all: whatever one of them imports when imported is loaded here too.
    loaded = loaded_by(CLIENT_SIDE)
    heavy = sorted(m for m in loaded if m in LOADER_SIDE or m.split(".")[0] in ("tensorflow", "keras"))
    assert heavy == []


@pytest.mark.slow
def test_model_server_help_loads_neither_model_code_nor_the_client():
    # -X importtime names every module the real command imports, in a fresh interpreter.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "serving.model_server", "--help"],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DEVELOPMENT" in result.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    project = sorted(m for m in imported if PROJECT.match(m))
    print(f"\npython -m serving.model_server --help loads {len(project)} project modules: {project}")
    assert not HEAVY & set(project)
    assert not [m for m in project if m == "model" or m.startswith("model.")], project
    assert "serving.client" not in project and "serving.protocol" in project
