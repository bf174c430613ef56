"""An exported graph's ops, and which of them a process with nothing but TensorFlow does not know."""
import json
import subprocess
import sys

from export import contract

SIGNATURES = set(contract.SIGNATURES)  # of every export


def graph_ops(meta_graph) -> set[str]:
    ops = {node.op for node in meta_graph.graph_def.node}
    for function in meta_graph.graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def unregistered_ops(ops: set[str]) -> list[str]:
    """The ops unknown to the registry of a process that imported nothing but tensorflow."""
    check = ("import json, sys, tensorflow as tf\n"
             "from tensorflow.python.framework import op_def_registry\n"
             "ops = json.loads(sys.stdin.read())\n"
             "print(json.dumps([op for op in ops if op_def_registry.get(op) is None]))")
    result = subprocess.run([sys.executable, "-c", check], input=json.dumps(sorted(ops)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
