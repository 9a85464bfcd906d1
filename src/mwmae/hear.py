"""HEAR common API for mwmae models (usable by hear-eval-kit and hear-validator as a module).

    from mwmae import hear
    model = hear.load_model("path/to/model")           # save_pretrained folder or official run
    emb, ts = hear.get_timestamp_embeddings(audio, model)    # audio: (n, samples) float32, 16 kHz
    scene = hear.get_scene_embeddings(audio, model)

Embeddings follow the MW-MAE reference runtime (see `mwmae.embeddings`): 40 ms steps for 4-frame
patches, the frequency patches of a step concatenated, timestamps i * duration / T' from 0 ms.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mwmae import embeddings as _emb
from mwmae import features
from mwmae.errors import InputError, MissingFileError
from mwmae.models import MaskedAutoencoder

_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HEARModel(nn.Module):
    """A loaded encoder with the attributes the HEAR API asks for."""

    sample_rate = features.SAMPLE_RATE

    def __init__(
        self,
        model: MaskedAutoencoder,
        precision: str = "float32",
        max_units_per_batch: int = 64,
        chunk_seconds: float = _emb.DEFAULT_CHUNK_SECONDS,
    ) -> None:
        super().__init__()
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
        self.model = model.eval()
        self.precision = precision
        self.max_units_per_batch = max_units_per_batch
        self.chunk_seconds = chunk_seconds  # long audio is encoded this many seconds at a time
        self.scene_embedding_size = int(model.embedding_size)
        self.timestamp_embedding_size = int(model.embedding_size)


def load_model(
    model_file_path: str = "", precision: str = "float32", device: str | None = None
) -> HEARModel:
    """Load a `save_pretrained` folder, or an official MW-MAE run directory / Flax checkpoint.
    A missing path is a `MissingFileError` and weights holding NaN or Inf an `IntegrityError`
    naming the tensor (`mwmae.errors`: one line on the command line)."""
    from mwmae.hub import from_pretrained, is_pretrained_dir

    if not model_file_path:
        raise InputError(
            "load_model needs a model path: a save_pretrained folder or an official "
            "MW-MAE run directory / checkpoint"
        )
    path = Path(model_file_path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such model file or folder")
    if is_pretrained_dir(path):
        model = from_pretrained(path)
    else:
        from mwmae.convert import from_official

        model = from_official(path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return HEARModel(model.to(device), precision=precision)


def _validate(audio: torch.Tensor, model: HEARModel) -> None:
    """The HEAR API's contract (a float32 (n, samples) tensor); `mwmae.embeddings` then checks
    the samples themselves, once."""
    if not isinstance(model, HEARModel):
        raise TypeError(f"model must come from mwmae.hear.load_model, got {type(model).__name__}")
    features.check_waveform(
        audio, "audio", ndim=2, dtype=torch.float32, tensor_only=True, finite=False
    )


def get_timestamp_embeddings(
    audio: torch.Tensor, model: HEARModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (n, T', D), timestamps (n, T') in ms) for 16 kHz audio (n, n_samples)."""
    _validate(audio, model)
    return _emb.timestamp_embeddings(model.model, audio, **_run_options(model))


def get_scene_embeddings(audio: torch.Tensor, model: HEARModel) -> torch.Tensor:
    """(n, D): mean over time of the timestamp embeddings (accumulated in bounded memory)."""
    _validate(audio, model)
    return _emb.scene_embeddings(model.model, audio, **_run_options(model))


def _run_options(model: HEARModel) -> _emb.EmbeddingOptions:
    return {
        "max_units_per_batch": model.max_units_per_batch,
        "autocast_dtype": _PRECISIONS[model.precision],
        "chunk_seconds": model.chunk_seconds,
    }
