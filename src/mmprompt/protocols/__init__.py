"""The paper's protocols over datasets and seeds, and their results (tables, CSV, plots).

* :func:`run_protocol` - any of them by name, with the sweep's options by keyword; the same function as
* :func:`run_base2novel` - base-to-novel generalisation (train on base classes, test on base and novel);
* :func:`run_cross_dataset` / :func:`run_domain_generalization` - train on ImageNet, test on targets;
* :func:`run_few_shot` - train and test on all classes;
* :func:`format_table`, :func:`aggregate`, :func:`harmonic_mean`, :func:`write_results`;
* a sweep is a list of :class:`RunSpec` (``plan_*``) executed by a launcher chosen with :class:`LaunchOptions`
  (``sequential`` or ``ray``); :mod:`~mmprompt.protocols.reproduce` runs the paper's whole grid.
"""

from __future__ import annotations

from .base2novel import plan_base2novel
from .few_shot import plan_few_shot
from .launch import LaunchOptions
from .plan import RunSpec
from .results import aggregate, format_table, harmonic_mean, plot_results, write_results
from .sweep import (
    run_base2novel,
    run_cross_dataset,
    run_domain_generalization,
    run_few_shot,
    run_protocol,
    run_transfer,
)
from .transfer import CROSS_DATASET_TARGETS, DG_TARGETS, plan_transfer

PROTOCOLS = ("base2novel", "cross-dataset", "domain-generalization", "few-shot")

__all__ = [
    "CROSS_DATASET_TARGETS",
    "DG_TARGETS",
    "PROTOCOLS",
    "LaunchOptions",
    "RunSpec",
    "aggregate",
    "format_table",
    "harmonic_mean",
    "plan_base2novel",
    "plan_few_shot",
    "plan_transfer",
    "plot_results",
    "run_base2novel",
    "run_cross_dataset",
    "run_domain_generalization",
    "run_few_shot",
    "run_protocol",
    "run_transfer",
    "write_results",
]
