"""Speed and memory measurements (``mmprompt speed``, alias ``mmprompt bench``): training step, evaluation
throughput and peak memory of a method on its default path and on its official-semantics reference path.

Not to be confused with ``mmprompt benchmark``, which runs the paper's protocols for accuracy.
"""

from __future__ import annotations

from .core import (
    PATHS,
    SCHEMA,
    BenchSettings,
    PathResult,
    check_settings,
    measure_path,
    path_config,
    path_encoder,
    run_benchmark,
    synthetic_classnames,
)

__all__ = [
    "PATHS",
    "SCHEMA",
    "BenchSettings",
    "PathResult",
    "check_settings",
    "measure_path",
    "path_config",
    "path_encoder",
    "run_benchmark",
    "synthetic_classnames",
]
