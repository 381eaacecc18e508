"""Ablation studies: a grid of training runs, a crash-safe SQLite results store, statistics over
seeds and reports laid out like the papers' tables."""

from .inspect import inspect_checkpoint, record_attention_stats
from .report import write_report
from .runner import run_study
from .spec import Run, Study, Variant, builtin_studies, load_study
from .stats import paired_ttest, summarize

__all__ = ["Run", "Study", "Variant", "builtin_studies", "inspect_checkpoint", "load_study", "paired_ttest",
           "record_attention_stats", "run_study", "summarize", "write_report"]
