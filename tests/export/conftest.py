"""Fixtures of the export tests."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def precision_export(trained_run, tmp_path_factory):
    """precision ("float16" | "bfloat16") -> the trained run exported computing in it, made once
    per session: what the test of 16-bit captions agreeing with float32's needs (the contract
    tests of 16-bit exports take untrained ones: tests/conftest.py untrained_export)."""
    from export.saved_model import ExportConfig, export_run
    made = {}

    def export(precision: str) -> Path:
        if precision not in made:
            base = tmp_path_factory.mktemp(f"models-{precision}") / "captioner"
            made[precision] = export_run(trained_run.run, base, "auto",
                                         ExportConfig(precision=precision))
        return made[precision]
    return export
