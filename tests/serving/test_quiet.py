"""The commands' output belongs to the product: TensorFlow's start-up noise is dropped in every
entry point (data/quiet.py, called by the package __init__ files) and STORYTELLER_VERBOSE=1 brings
it back; whatever else reaches stderr meanwhile is kept."""
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.images import RED, image_bytes

NOISE = re.compile(r"oneDNN|cuda|absl|cpu_feature_guard|is deprecated", re.IGNORECASE)


def run(*command: str, verbose: bool = False) -> subprocess.CompletedProcess:
    """The command as a user runs it: none of the logging settings the test suite makes."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "STORYTELLER_VERBOSE")}
    env.update(PYTHONPATH=str(REPO), **({"STORYTELLER_VERBOSE": "1"} if verbose else {}))
    return subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def red_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("quiet") / "red.png"
    path.write_bytes(image_bytes(RED))
    return str(path)


def test_inspect_prints_no_tensorflow_noise(served_model_base, red_png):
    result = run("-m", "export.inspect", served_model_base, "--image", red_png)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{red_png}\t" in result.stdout
    assert not [line for line in result.stderr.splitlines() if NOISE.search(line)], result.stderr
    assert result.stderr == ""


def test_storyteller_verbose_brings_the_noise_back(served_model_base, red_png):
    result = run("-m", "export.inspect", served_model_base, "--image", red_png, verbose=True)
    assert result.returncode == 0, result.stderr[-3000:]
    # TensorFlow names oneDNN only on CPUs where it turns it on by default (AVX-512 and newer):
    # the lines every machine without a GPU prints are cuda's and absl's.
    for needed in ("cuda", "absl"):
        assert needed in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["-m", "serving.model_server", "--help"],
                                     pytest.param(["-m", "export.cc_loader", "/no/such/export"],
                                                  id="cc_loader")])
def test_other_entry_points_are_quiet(command):
    result = run(*command)
    assert not [line for line in result.stderr.splitlines() if NOISE.search(line)], result.stderr


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
