"""Ablation studies: a grid of training runs, a crash-safe SQLite results store, statistics over
seeds and reports laid out like the papers' tables."""

from .spec import Run, Study, Variant, builtin_studies, load_study
from .stats import paired_ttest, summarize

__all__ = ["Run", "Study", "Variant", "builtin_studies", "load_study", "paired_ttest", "summarize"]
