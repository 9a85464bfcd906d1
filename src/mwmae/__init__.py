"""mwmae: multi-window masked autoencoders (MW-MAE) and MAE-AST for audio, in PyTorch.

Three lines to embeddings::

    import mwmae
    model = mwmae.from_pretrained("path/to/model")        # or mwmae.from_official(run_dir)
    emb, timestamps = mwmae.timestamp_embeddings(model, audio)   # audio: (n, samples) at 16 kHz
"""

__version__ = "0.1.0"

from mwmae.embeddings import scene_embeddings, timestamp_embeddings  # noqa: E402
from mwmae.hub import from_pretrained  # noqa: E402
from mwmae.models import (  # noqa: E402
    MaskedAutoencoder,
    ModelConfig,
    create_model,
    default_window_sizes,
    list_models,
)


def from_official(path, step=None):
    """Convert an official MW-MAE (JAX/Flax) checkpoint or run directory into a model."""
    from mwmae.convert import from_official as _from_official

    return _from_official(path, step=step)


__all__ = [
    "MaskedAutoencoder",
    "ModelConfig",
    "create_model",
    "default_window_sizes",
    "from_official",
    "from_pretrained",
    "list_models",
    "scene_embeddings",
    "timestamp_embeddings",
]
