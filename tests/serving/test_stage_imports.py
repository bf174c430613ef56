"""Imports flow data -> model -> export -> serving and stay light: in fresh interpreters, neither
the export and serving modules nor `python -m serving.model_server --help` load training,
metrics, plots or the feature cache; the development server loads nothing from model/ and not the
client (they share serving.protocol)."""
import json
import re
import subprocess
import sys

from tests.helpers import REPO
from tests.helpers.servers import subprocess_env

HEAVY = {"model.train", "model.metrics", "model.plots", "data.feature_cache"}
PROJECT = re.compile(r"(data|model|export|serving)(\.|$)")
STAGE_MODULES = sorted(f"{folder}.{path.stem}" for folder in ("export", "serving")
                       for path in (REPO / folder).glob("*.py") if path.stem != "__init__")


def test_every_export_and_serving_module_imports_without_the_heavy_ones():
    code = f"import json, sys\nfor m in {STAGE_MODULES!r}: __import__(m)\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert {"export.contract", "export.cc_loader", "serving.app", "serving.model_server"} <= loaded
    assert not HEAVY & loaded, HEAVY & loaded


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
