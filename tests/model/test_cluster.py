"""model/cluster.py: the worker-only TF_CONFIG an Indexed Job's pod environment describes."""
import json

import pytest

from model.cluster import export_tf_config, tf_config_from_env

HOSTS = "train-0.train:2222,train-1.train:2222,train-2.train:2222"


def test_pod_i_is_worker_i_of_every_listed_worker():
    for index in range(3):
        assert tf_config_from_env({"WORKER_HOSTS": HOSTS, "JOB_COMPLETION_INDEX": str(index)}) == {
            "cluster": {"worker": HOSTS.split(",")}, "task": {"type": "worker", "index": index}}


@pytest.mark.parametrize("env", [{}, {"PATH": "/bin"},
                                 {"TF_CONFIG": '{"cluster": {}}', "WORKER_HOSTS": HOSTS, "JOB_COMPLETION_INDEX": "0"}])
def test_nothing_to_derive(env):
    """A single-machine run, or a TF_CONFIG someone wrote (an operator's): left alone."""
    assert tf_config_from_env(env) is None


@pytest.mark.parametrize("env, message", [
    ({"JOB_COMPLETION_INDEX": "0"}, "JOB_COMPLETION_INDEX is set but WORKER_HOSTS is not"),
    ({"WORKER_HOSTS": HOSTS}, "WORKER_HOSTS is set but JOB_COMPLETION_INDEX is not"),
    ({"WORKER_HOSTS": HOSTS, "JOB_COMPLETION_INDEX": "3"}, "'3' is not an index into the 3 workers"),
    ({"WORKER_HOSTS": HOSTS, "JOB_COMPLETION_INDEX": "-1"}, "'-1' is not an index"),
    ({"WORKER_HOSTS": "train-0.train,train-1.train", "JOB_COMPLETION_INDEX": "0"}, "must be host:port"),
    ({"WORKER_HOSTS": "a:1,a:1", "JOB_COMPLETION_INDEX": "0"}, "lists a worker twice"),
])
def test_a_broken_manifest_says_what_is_wrong(env, message):
    with pytest.raises(ValueError, match=message):
        tf_config_from_env(env)


def test_export_writes_tf_config_once():
    environ = {"WORKER_HOSTS": HOSTS, "JOB_COMPLETION_INDEX": "1"}
    export_tf_config(environ)
    assert json.loads(environ["TF_CONFIG"])["task"] == {"type": "worker", "index": 1}
    written = environ["TF_CONFIG"]
    export_tf_config(environ)  # a TF_CONFIG present wins, even its own
    assert environ["TF_CONFIG"] == written
    single = {}
    export_tf_config(single)
    assert single == {}
