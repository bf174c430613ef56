"""Fixtures of the serving tests: the model folder they serve, an in-process reference, the server
of it and the attention stand-in's server.

`served_model_base` is THE model folder every serving test uses (a base path holding version 1).
By default it is the stand-in model (tests/serving/standin_model.py) built once per session; set
SERVING_MODEL_BASE=/path/to/models/captioner to run the same tests on the real export. Tests compare
served captions with `reference` (the same SavedModel run in-process through TF Serving's session
path), so they hold for either model; checks that only make sense for the stand-in's colour captions
are guarded by `IS_STANDIN`.
"""
import os

import pytest

from tests.helpers.servers import IS_STANDIN, MODEL_NAME, running_server  # noqa: F401

_cache = {}


@pytest.fixture(scope="session")
def served_model_base(tmp_path_factory) -> str:
    """Model base path with version 1: the real export if SERVING_MODEL_BASE is set, else the
    stand-in, built once per test session."""
    if not IS_STANDIN:
        return os.environ["SERVING_MODEL_BASE"]
    if "base" not in _cache:
        from tests.serving.standin_model import publish_standin
        base = str(tmp_path_factory.mktemp("standin") / MODEL_NAME)
        publish_standin(base, 1)
        _cache["base"] = base
    return _cache["base"]


@pytest.fixture(scope="session")
def attention_model_base(tmp_path_factory) -> str:
    """Model base path with version 1 of the attention stand-in (serves `attention` maps)."""
    if "attention_base" not in _cache:
        from tests.serving.standin_model import publish_standin
        base = str(tmp_path_factory.mktemp("standin_attention") / MODEL_NAME)
        publish_standin(base, 1, attention=True)
        _cache["attention_base"] = base
    return _cache["attention_base"]


@pytest.fixture(scope="session")
def server(served_model_base, tmp_path_factory):
    """serving.model_server serving `served_model_base` (REST and gRPC) for the session: the one
    server the model server's, the client's and the app's tests talk to (the tests that send it
    abuse check it still serves; its clean shutdown is checked when the session ends)."""
    log = str(tmp_path_factory.mktemp("server") / "server.log")
    with running_server(log, base=served_model_base) as s:
        yield s


@pytest.fixture(scope="session")
def attention_server(attention_model_base, tmp_path_factory):
    """serving.model_server serving the attention stand-in (REST and gRPC), for the session."""
    log = str(tmp_path_factory.mktemp("attention_server") / "server.log")
    with running_server(log, base=attention_model_base) as server:
        yield server


@pytest.fixture(scope="session")
def reference(served_model_base):
    """The served model run in this process exactly as TF Serving runs it (export.artifact's
    SessionModel): the answers served ones must equal."""
    from export.artifact import SessionModel, latest_version
    with SessionModel(latest_version(served_model_base)) as model:
        yield model


@pytest.fixture(scope="session")
def attention_reference(attention_model_base):
    """The attention stand-in run in this process as TF Serving runs it (as `reference`)."""
    from export.artifact import SessionModel, latest_version
    with SessionModel(latest_version(attention_model_base)) as model:
        yield model
