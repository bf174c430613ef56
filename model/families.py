"""The model families by name (ModelConfig.family), and the captioner a config builds."""
import keras

from model.attention import AttentionCaptioner
from model.captioner import Captioner
from model.settings import ModelConfig

FAMILY_CLASSES = {"pooled": Captioner, "attention": AttentionCaptioner}


def build_captioner(config: ModelConfig) -> keras.Model:
    """The captioner of the config's family, with every weight created."""
    return FAMILY_CLASSES[config.family](config, name="captioner").build_for()
