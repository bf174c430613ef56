"""notebooks/storyteller.ipynb: executed end to end in quick mode with nbclient on an ipykernel
kernel, and the stored file's hygiene (no outputs, no execution counts).

The kernel: a "python3" kernelspec for THIS interpreter (ipykernel's write_kernel_spec, argv =
sys.executable -m ipykernel_launcher) written into the test's tmp folder, found by a
KernelSpecManager that looks only there. So the test needs no `python -m ipykernel install` on a
clean CI machine, and a "python3" kernelspec installed for some other Python (one without
TensorFlow, say) can never be picked up instead.
"""
import json
import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from tests.helpers import REPO

NOTEBOOK = REPO / "notebooks" / "storyteller.ipynb"
CELL_TIMEOUT = 900  # seconds per cell: training or starting the server on 2 busy cores is slow
SERVED_CAPTION = re.compile(r"^served caption \(REST\): (.*)$", re.MULTILINE)


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def cell_tagged(nb, tag: str):
    cells = [cell for cell in nb.cells if tag in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r} in {NOTEBOOK}, found {len(cells)}"
    return cells[0]


def stream_text(cell, name: str = "stdout") -> str:
    return "".join(out.get("text", "") for out in cell.outputs
                   if out.output_type == "stream" and out.name == name)


def has_png(cell) -> bool:
    return any("image/png" in out.get("data", {}) for out in cell.outputs
               if out.output_type in ("display_data", "execute_result"))


def test_stored_notebook_has_no_outputs_and_settings_first():
    nb = read_notebook()
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{NOTEBOOK} has no code cells"
    with_outputs = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not with_outputs, f"code cells {with_outputs} were stored with outputs or execution counts"
    assert nb.metadata.kernelspec.name == "python3"
    settings = code[0].source
    assert settings.startswith("DATA = None"), "the first code cell must be the settings cell"
    for name in ("ENCODER_WEIGHTS", "PRESET", "EPOCHS", "WORKDIR", "STORYTELLER_NOTEBOOK_QUICK",
                 "STORYTELLER_NOTEBOOK_WORKDIR"):
        assert name in settings, f"the settings cell does not mention {name}"


def kernel_manager(folder: Path):
    """An AsyncKernelManager for a "python3" ipykernel on this interpreter (see the module doc)."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    kernels = folder / "kernels"
    write_kernel_spec(kernels / "python3")
    specs = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed in quick mode; WORKDIR and the kernel's cwd are in a tmp folder."""
    from nbclient import NotebookClient

    tmp = tmp_path_factory.mktemp("notebook")
    workdir = tmp / "work"
    nb = read_notebook()
    env = dict(os.environ, STORYTELLER_NOTEBOOK_QUICK="1", STORYTELLER_NOTEBOOK_WORKDIR=str(workdir),
               STORYTELLER_REPO=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(nb, km=kernel_manager(tmp), kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(tmp)}})
    start = time.monotonic()
    try:
        client.execute(env=env)  # raises CellExecutionError (with the traceback) on a failing cell
    finally:
        elapsed = time.monotonic() - start
        nbformat.write(nb, tmp / "storyteller.executed.ipynb")  # to open when something failed
        print(f"\nnotebook executed in {elapsed:.0f} s; executed copy: {tmp / 'storyteller.executed.ipynb'}")
        print(json.dumps(cell_seconds(nb), indent=1))
    return nb, workdir


def cell_seconds(nb) -> dict:
    """Seconds per tagged or numbered code cell, from the timing nbclient records in metadata."""
    from datetime import datetime
    times = {}
    for i, cell in enumerate(nb.cells):
        timing = cell.metadata.get("execution", {})
        if cell.cell_type != "code" or "shell.execute_reply" not in timing:
            continue
        started = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        ended = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
        label = ",".join(cell.metadata.get("tags", [])) or f"cell {i}"
        times[label] = round((ended - started).total_seconds(), 1)
    return times


@pytest.mark.slow
def test_notebook_runs_without_errors(executed):
    nb, workdir = executed
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors, f"cells raised: {[(e.ename, e.evalue) for e in errors]}"
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == "code")
    # Everything it made is in WORKDIR (a tmp folder here), none of it in the repository.
    for made in ("builtin/captions.txt", "features", "run/loss_curve.png",
                 "run/evaluation/samples.png", "models/captioner/1/saved_model.pb", "server.log",
                 "features-attention", "run-attention/evaluation/samples.png",
                 "models/attention/1/saved_model.pb"):
        assert (workdir / made).exists(), f"{workdir / made} missing"


@pytest.mark.slow
def test_notebook_shows_loss_curve_samples_and_scores(executed):
    nb, _ = executed
    assert has_png(cell_tagged(nb, "loss-curve")), "the loss curve PNG was not displayed"
    assert has_png(cell_tagged(nb, "samples")), "the sample grid PNG was not displayed"
    table = stream_text(cell_tagged(nb, "scores"))
    for row in ("greedy", "beam search", "majority baseline"):
        # BLEU-1..4, METEOR ("-" without Java), ROUGE-L, CIDEr-D
        assert re.search(rf"^{row}\s+(\d\.\d{{3}}\s+){{4}}(\d\.\d{{3}}|-)\s+\d\.\d{{3}}\s+\d+\.\d{{3}}$",
                         table, re.MULTILINE), table
        assert re.search(rf"^\s*{row}  states right: colours .* all [\d.]+% of \d+ images$", table,
                         re.MULTILINE), table
    session = cell_tagged(nb, "session-model")
    assert len(re.findall(r"^  greedy: \S", stream_text(session), re.MULTILINE)) == 2, stream_text(session)


@pytest.mark.slow
def test_notebook_prints_a_served_caption_and_stops_the_server(executed):
    nb, _ = executed
    cell = cell_tagged(nb, "served-caption")
    text = stream_text(cell)
    found = SERVED_CAPTION.findall(text)
    assert len(found) == 1 and found[0].strip(), f"no served caption in:\n{text}"
    assert "server stopped, exit code 0" in text, text
    assert any("image/jpeg" in out.get("data", {}) or "image/png" in out.get("data", {})
               for out in cell.outputs if out.output_type == "display_data"), "image not shown"


@pytest.mark.slow
def test_notebook_compares_the_attention_preset_and_shows_served_maps(executed):
    nb, _ = executed
    table = stream_text(cell_tagged(nb, "attention-train"))
    for row in ("pooled greedy", "pooled beam", "attention greedy", "attention beam"):
        assert re.search(rf"^{row}\s+\d\.\d{{3}}\s+\d+\.\d{{3}}\s+\d+\.\d$", table, re.MULTILINE), table
    assert has_png(cell_tagged(nb, "attention-samples")), "the attention samples were not shown"
    served = cell_tagged(nb, "attention-served")
    text = stream_text(served)
    assert "'attention'" in text and "(2, 30, 7, 7) float32" in text, text
    strips = [out for out in served.outputs if out.output_type == "display_data"
              and "image/png" in out.get("data", {})]
    assert len(strips) == 2, "expected one attention strip per test image"
