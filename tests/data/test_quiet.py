"""The commands' output belongs to the product: every command hides TensorFlow's start-up noise
(data/quiet.py's quiet_command, under its `__main__` guard) and STORYTELLER_VERBOSE=1 brings it
back; whatever else reaches stderr meanwhile is kept. Importing the project's modules, as a
library user does, changes nothing in the importing program.

Interpreters are few: the guards are checked in the source, one command shows the import hook at
work (and once more verbose), the C++ loader's command its library load, and one interpreter
imports every module."""
import ast
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

NOISE = re.compile(r"oneDNN|cuda|absl|cpu_feature_guard|is deprecated|Reading SavedModel", re.IGNORECASE)
PACKAGES = ("data", "model", "export", "serving", "benchmarks")
SOURCES = sorted(path for package in PACKAGES for path in (REPO / package).glob("*.py")) + [REPO / "demo.py"]
# The environment variables the project reads; a user's program may have none of them.
PROJECT_SETTINGS = ("TF_CPP_MIN_LOG_LEVEL", "STORYTELLER_VERBOSE", "GRADIO_ANALYTICS_ENABLED")


def run(*command: str, verbose: bool = False) -> subprocess.CompletedProcess:
    """Python as a user runs it: none of the logging settings the test suite makes."""
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_SETTINGS}
    env.update(PYTHONPATH=str(REPO), **({"STORYTELLER_VERBOSE": "1"} if verbose else {}))
    return subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line)]


def module_name(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def top_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, top-level package) of each import that runs when the module is imported."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def is_library(package: str) -> bool:
    """Not the standard library: importing it may load TensorFlow (every project package can)."""
    return package not in sys.stdlib_module_names and package != "__future__"


def main_guards(tree: ast.Module) -> list[ast.If]:
    return [node for node in tree.body if isinstance(node, ast.If)
            and "__name__" in {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}]


def calls(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == name for n in ast.walk(node))


def test_every_command_quiets_itself_before_any_library_import():
    commands = {}
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        guards = main_guards(tree)
        if guards:  # a command: `python -m ...` or `python demo.py`
            quieting = [g.lineno for g in guards if calls(g, "quiet_command")]
            first_library = min((line for line, package in top_level_imports(tree) if is_library(package)),
                                default=None)
            commands[module_name(path)] = bool(quieting) and (first_library is None or quieting[0] < first_library)
    assert {"data.inspect", "model.train", "export.inspect", "serving.client", "demo"} <= set(commands)
    assert [name for name, quiet in commands.items() if not quiet] == []


def test_importing_the_modules_changes_neither_imports_nor_logging_nor_the_environment():
    # The libraries the modules import are imported first: what they change on import is theirs.
    libraries = sorted({package for path in SOURCES for _, package in top_level_imports(ast.parse(path.read_text()))
                        if is_library(package) and package not in PACKAGES})
    modules = [module_name(path) for path in SOURCES if path.stem != "__init__"]
    code = (f"import json, logging, os, sys, warnings\nfor m in {libraries!r}: __import__(m)\n"
            "import absl.logging\n"
            "def state():\n"
            "    loggers = [logging.getLogger(), logging.getLogger('tensorflow')]\n"
            "    return {'meta_path': [repr(type(f)) for f in sys.meta_path], 'environ': dict(os.environ),\n"
            "            'logging': [[l.level, len(l.handlers)] for l in loggers],\n"
            "            'absl': absl.logging.get_verbosity(), 'warnings': len(warnings.filters)}\n"
            f"before = state()\nfor m in {modules!r}: __import__(m)\n"
            "print(json.dumps([before, state()]))")
    result = run("-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = json.loads(result.stdout.splitlines()[-1])
    environ = before.pop("environ"), after.pop("environ")
    assert [name for name in environ[0].keys() | environ[1].keys()  # names only: values may be secret
            if environ[0].get(name) != environ[1].get(name)] == []
    assert after == before


@pytest.mark.slow
def test_a_command_prints_no_tensorflow_noise():
    # data.inspect imports TensorFlow before parsing its flags.
    result = run("-m", "data.inspect", "--help")
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-3000:]
    assert result.stderr == ""


@pytest.mark.slow
def test_storyteller_verbose_brings_the_noise_back():
    result = run("-m", "data.inspect", "--help", verbose=True)
    assert result.returncode == 0, result.stderr[-3000:]
    # TensorFlow names oneDNN only on CPUs where it turns it on by default (AVX-512 and newer):
    # the lines every machine without a GPU prints are cuda's and absl's.
    for needed in ("cuda", "absl"):
        assert needed in result.stderr, result.stderr


def test_the_cc_loader_command_loads_tensorflows_library_quietly():
    result = run("-m", "export.cc_loader", "/no/such/export")
    assert result.returncode == 2 and "/no/such/export" in result.stderr
    assert noise(result.stderr) == [], result.stderr


def test_only_the_noise_is_dropped():
    # The start-up lines as TensorFlow 2.21 prints them, between lines that concern the user.
    code = ("import os, warnings\n"
            "from data.quiet import dropping_noise\n"
            "with dropping_noise():\n"
            "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
            "written to STDERR\\n'\n"
            "             b'I0000 00:00:1.2 1 port.cc:153] oneDNN custom operations are on.\\n'\n"
            "             b'E0000 00:00:1.2 1 some_op.cc:7] a real C++ error\\n')\n"
            "    warnings.warn('a real Python warning')\n"
            "print('done')")
    quiet, verbose = run("-c", code), run("-c", code, verbose=True)
    assert quiet.returncode == verbose.returncode == 0 and quiet.stdout == "done\n"
    assert "a real C++ error" in quiet.stderr and "a real Python warning" in quiet.stderr
    assert "oneDNN" not in quiet.stderr and "absl" not in quiet.stderr
    assert "oneDNN" in verbose.stderr and "absl" in verbose.stderr
