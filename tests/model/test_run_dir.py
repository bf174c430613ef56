"""The run folder's contract (model/run_dir.py) on untrained runs (tests/conftest.py): what training
writes is what load_run reads and export_run exports, for both model families."""
import json

import numpy as np
import pytest

from model.run_dir import load_run
from tests.helpers import FAMILY_PARAMS


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_load_run_reads_an_untrained_run(untrained_run_factory, family):
    run = load_run(untrained_run_factory(family))
    settings = run.settings
    assert settings["model"]["family"] == family and run.model_config.family == family
    assert settings["train"]["preset"] == family
    assert set(settings) == {"data", "stage", "encoder", "model", "train", "scst", "decode",
                             "vocabulary"}
    assert settings["stage"] == {"name": "cross-entropy"}  # started from no other run
    assert run.encoder_config.weights == "random"
    assert settings["vocabulary"]["size"] == len(run.vocabulary) == run.model_config.vocab_size
    assert settings["vocabulary"]["min_count"] == 2
    captioner = run.load_captioner()
    norm = captioner.feature_norm  # both presets standardise; not adapted: the initial values
    np.testing.assert_array_equal(norm.mean.numpy(), 0.0)
    np.testing.assert_array_equal(norm.std.numpy(), 1.0)
    features = np.zeros([1, *run.model_config.feature_shape], np.float32)
    logits = captioner({"features": features, "tokens": np.ones([1, 3], np.int32)})
    assert logits.shape == (1, 3, len(run.vocabulary))


def test_load_run_names_settings_its_dataclass_does_not_have(untrained_run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("vocab.txt", "vocab.json", "best.weights.h5"):
        (run_dir / name).write_bytes((untrained_run / name).read_bytes())
    settings = json.loads((untrained_run / "settings.json").read_text())
    settings["model"]["attention"] = True  # the bool that ModelConfig.family replaced
    (run_dir / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"settings.json: model settings \['attention'\] are not "
                                         r"fields of ModelConfig \(expected among \[.*'family'"):
        load_run(run_dir)


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_export_run_exports_an_untrained_run(untrained_export, family):
    """The session's untrained export of the family (tests/conftest.py: export_run on the run
    above, into a new model base), which the export and serving tests use too."""
    from export.artifact import SessionModel, export_settings
    from tests.helpers.images import image_bytes

    version = untrained_export(family).path
    assert version.name == "1" and (version / "saved_model.pb").is_file()
    assert sorted(p.name for p in version.parent.iterdir()) == ["1"]  # "auto": the first version
    assert export_settings(version)["model"]["family"] == family
    model = SessionModel(version)
    try:
        out = model.run("serving_default", {"image_bytes": np.array([image_bytes()], object)})
    finally:
        model.close()
    assert out["error"].tolist() == [b""] and out["caption"].shape == (1,)
    assert ("attention" in out) == (family == "attention")
