"""HEAR downstream evaluation: task folders, embedding, batched MLP probes, metrics, tables."""

from mwmae.evaluation.embed import embed_task, embed_tasks, load_hear_model
from mwmae.evaluation.probe import (
    BatchedProbe,
    Member,
    ProbeConfig,
    TrainSettings,
    kit_grid,
    preset_grid,
)
from mwmae.evaluation.protocol import EvalOptions, evaluate_embeddings, evaluate_task
from mwmae.evaluation.report import compare, overall_scores, results_table
from mwmae.evaluation.stored import export_heareval, load_split_embeddings
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
    "embed_tasks",
    "evaluate_embeddings",
    "evaluate_task",
    "export_heareval",
    "load_hear_model",
    "load_split_embeddings",
    "kit_grid",
    "load_task",
    "overall_scores",
    "preset_grid",
    "results_table",
]
