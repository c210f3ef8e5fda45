"""The bundled demo model (trained by `engine.demo.train`) and its synthetic tasks."""
import os

from engine.models.model_config import ModelLoadError

BUNDLED_MODEL_DIR = os.path.join(os.path.dirname(__file__), "model")


def bundled_model_dir() -> str:
    if not os.path.isfile(os.path.join(BUNDLED_MODEL_DIR, "config.json")):
        raise ModelLoadError("no model given and the bundled demo model is not in this checkout: pass --model DIR")
    return BUNDLED_MODEL_DIR
