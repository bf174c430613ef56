"""TensorFlow's start-up noise, hidden in the project's commands; `STORYTELLER_VERBOSE=1` shows it.

Only commands change how their process imports and logs: every `python -m data.x / model.x /
export.x / serving.x / benchmarks.x` and demo.py calls `quiet_command()` under its
`if __name__ == "__main__":` guard, placed above its first import that could load TensorFlow
(importing those modules as a library changes nothing). It sets TF_CPP_MIN_LOG_LEVEL=2 (C++ INFO
and WARNING lines) where the user has not set it, and drops these lines, which no setting reaches
(C++ static initialisers print them while `import tensorflow` loads the libraries, before
TensorFlow reads its environment):

  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I... port.cc] oneDNN custom operations are on. ...
  I... cudart_stub.cc] Could not find cuda drivers on your machine, GPU will not be used.
  I... cpu_feature_guard.cc] This TensorFlow binary is optimized ... (and its second line)
  E... cuda_platform.cc] failed call to cuInit: ... (only on a machine without a CUDA driver)

They are dropped only while TensorFlow is imported (or `with dropping_noise():` around another
call that prints them, e.g. loading TensorFlow's C library); every other line written to stderr
meanwhile is passed on as it comes. Python warnings and errors are never touched. No TensorFlow
here: this must run before it is imported.
"""
import contextlib
import importlib.util
import os
import re
import sys
import threading

VERBOSE = "STORYTELLER_VERBOSE"  # =1: print everything TensorFlow prints
NOISE = re.compile(rb"All log messages before absl::InitializeLog\(\) is called"
                   rb"|port\.cc:\d+\] oneDNN custom operations are on"
                   rb"|cpu_feature_guard\.cc:\d+\]|^To enable the following instructions: .*rebuild TensorFlow")
NO_DRIVER = re.compile(rb"cudart_stub\.cc:\d+\] Could not find cuda drivers")
# Dropped only once TensorFlow said there is no CUDA driver: then it is that line's echo.
NO_DRIVER_ECHO = re.compile(rb"cuda_platform\.cc:\d+\] failed call to cuInit")
_no_driver = threading.Event()


def verbose() -> bool:
    return os.environ.get(VERBOSE, "") not in ("", "0")


def quiet_command() -> None:
    """For a command's process only, before TensorFlow is imported; does nothing with
    STORYTELLER_VERBOSE=1."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


@contextlib.contextmanager
def dropping_noise():
    """Within the block, the noise lines written to file descriptor 2 are dropped; every other line
    goes on to stderr as it comes (a reader thread, so a crash loses nothing already written)."""
    try:
        stderr = None if verbose() else os.dup(2)
    except OSError:  # no stderr to filter
        stderr = None
    if stderr is None:
        yield
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    reader = threading.Thread(target=_pass_on, args=(read_end, stderr), daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(stderr, 2)  # closes the pipe's last write end: the reader sees its end...
        reader.join(timeout=5)
        if not reader.is_alive():  # ...unless a child process started meanwhile holds a copy
            os.close(stderr)


def _pass_on(read_end: int, stderr: int) -> None:
    with open(read_end, "rb") as pipe:
        for line in pipe:
            if NO_DRIVER.search(line):
                _no_driver.set()
            elif not (NOISE.search(line) or (_no_driver.is_set() and NO_DRIVER_ECHO.search(line))):
                os.write(stderr, line)


class _QuietImport:
    """A meta-path finder that imports `tensorflow` itself inside dropping_noise(), once."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module = _quietly(spec.loader.exec_module)
        return spec


def _quietly(exec_module):
    def run(module):
        with dropping_noise():
            exec_module(module)
        if _no_driver.is_set():
            # TensorFlow's first device lookup would log the failed cuInit as an ERROR, outside
            # any window: looking the devices up now drops that echo too.
            with dropping_noise():
                module.config.list_physical_devices()
    return run
