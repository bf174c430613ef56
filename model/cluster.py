"""TF_CONFIG for a multi-worker run whose launcher does not write one.

Kubeflow's TFJob writes TF_CONFIG into each worker; a plain Kubernetes Indexed Job
(deploy/training/) gives each pod only its completion index. For that case the Job's manifest
lists every worker's address in WORKER_HOSTS (the pods' stable DNS names behind a headless
Service, in index order) and Kubernetes sets JOB_COMPLETION_INDEX; the TF_CONFIG below is derived
from those two and nothing else:

    {"cluster": {"worker": WORKER_HOSTS}, "task": {"type": "worker", "index": JOB_COMPLETION_INDEX}}

A worker-only cluster, no "chief": worker 0 acts as chief, as with the operators' TF_CONFIG.
"""
import json
import os
from typing import Mapping

INDEX_VARIABLE = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
HOSTS_VARIABLE = "WORKER_HOSTS"          # set by the manifest: host:port,host:port,...


def tf_config_from_env(env: Mapping[str, str]) -> dict | None:
    """The TF_CONFIG dictionary this process's environment describes, or None when there is
    nothing to derive: TF_CONFIG already set (it wins: an operator or the user wrote it), or
    neither variable set (a single-machine run). One of the two without the other is a broken
    manifest, not a single-machine run: ValueError naming what is missing."""
    if env.get("TF_CONFIG"):
        return None
    index, hosts = env.get(INDEX_VARIABLE), env.get(HOSTS_VARIABLE)
    if index is None and hosts is None:
        return None
    if index is None or not hosts:
        given, missing = ((HOSTS_VARIABLE, INDEX_VARIABLE) if index is None
                          else (INDEX_VARIABLE, HOSTS_VARIABLE))
        raise ValueError(f"{given} is set but {missing} is not: a multi-worker pod needs both "
                         "(or a TF_CONFIG)")
    workers = [host.strip() for host in hosts.split(",")]
    for host in workers:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"{HOSTS_VARIABLE} entries must be host:port, got {host!r} in {hosts!r}")
    if len(set(workers)) != len(workers):
        raise ValueError(f"{HOSTS_VARIABLE} lists a worker twice: {hosts!r}")
    if not index.isdigit() or int(index) >= len(workers):
        raise ValueError(f"{INDEX_VARIABLE}={index!r} is not an index into the {len(workers)} "
                         f"workers of {HOSTS_VARIABLE}={hosts!r}: Job completions and the host "
                         "list must agree")
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": int(index)}}


def export_tf_config(environ=os.environ) -> None:
    """Writes the derived TF_CONFIG into `environ` (if there is one to derive), so that every
    TensorFlow component that reads TF_CONFIG sees the same cluster as with an operator-written
    one. Called by model.train just before it builds MultiWorkerMirroredStrategy."""
    tf_config = tf_config_from_env(environ)
    if tf_config is not None:
        environ["TF_CONFIG"] = json.dumps(tf_config)
