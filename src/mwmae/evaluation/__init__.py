"""HEAR downstream evaluation: task folders, embedding, batched MLP probes, metrics, tables."""

from mwmae.evaluation.embed import embed_task, export_heareval, load_split_embeddings
from mwmae.evaluation.probe import (
    BatchedProbe,
    Member,
    ProbeConfig,
    TrainSettings,
    kit_grid,
    preset_grid,
)
from mwmae.evaluation.run import (
    EvalOptions,
    compare,
    evaluate_embeddings,
    evaluate_task,
    overall_scores,
)
from mwmae.evaluation.tasks import Task, TaskError, TaskMetadata, load_task

__all__ = [
    "BatchedProbe",
    "EvalOptions",
    "Member",
    "ProbeConfig",
    "Task",
    "TaskError",
    "TaskMetadata",
    "TrainSettings",
    "compare",
    "embed_task",
    "evaluate_embeddings",
    "evaluate_task",
    "export_heareval",
    "load_split_embeddings",
    "kit_grid",
    "load_task",
    "overall_scores",
    "preset_grid",
]
