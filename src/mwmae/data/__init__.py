"""Built-in data: a deterministic synthetic pretraining corpus and HEAR-layout downstream tasks
(`mwmae.data.synth`)."""

from mwmae.data.synth import (
    SIZES,
    TASK_NAMES,
    generate,
    generate_corpus,
    generate_tasks,
    read_manifest,
)

__all__ = ["SIZES", "TASK_NAMES", "generate", "generate_corpus", "generate_tasks", "read_manifest"]
