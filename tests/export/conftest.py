"""Fixtures of the export tests."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def precision_export(trained_run, tmp_path_factory):
    """precision ("float16" | "bfloat16") -> the trained run exported computing in it, made once
    per session and shared by the precision and C++-loader tests."""
    from export.saved_model import ExportConfig, export_run
    made = {}

    def export(precision: str) -> Path:
        if precision not in made:
            base = tmp_path_factory.mktemp(f"models-{precision}") / "captioner"
            made[precision] = export_run(trained_run.run, base, "auto",
                                         ExportConfig(precision=precision))
        return made[precision]
    return export
