"""Looking inside trained models: attention entropy, PWCCA head similarity, figures.

`pwcca` / `pwcca_details` compare two representations; `attention_entropy` and
`head_similarity` probe a model; `mwmae.analysis.figures` draws the plots (imported on first
use, so importing this package does not import matplotlib).
"""

from mwmae.analysis.probes import (
    AttentionEntropy,
    HeadLabel,
    attention_entropy,
    capture_attention,
    head_outputs,
    head_similarity,
    window_similarity_summary,
)
from mwmae.analysis.pwcca import (
    PWCCAResult,
    ReducedRepresentation,
    pwcca,
    pwcca_details,
    pwcca_matrix,
    pwcca_reduced,
    reduce_representation,
)

_FIGURES = (
    "entropy_figure",
    "entropy_heads_figure",
    "reconstruction_figure",
    "save_reconstruction_figure",
    "similarity_figure",
)


def __getattr__(name: str):
    if name in _FIGURES:
        from mwmae.analysis import figures

        return getattr(figures, name)
    raise AttributeError(f"module 'mwmae.analysis' has no attribute {name!r}")


__all__ = [
    "AttentionEntropy",
    "HeadLabel",
    "PWCCAResult",
    "ReducedRepresentation",
    "attention_entropy",
    "capture_attention",
    "head_outputs",
    "head_similarity",
    "pwcca",
    "pwcca_details",
    "pwcca_matrix",
    "pwcca_reduced",
    "reduce_representation",
    "window_similarity_summary",
    *_FIGURES,
]
