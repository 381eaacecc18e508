"""Ablation studies: a grid of training runs, a crash-safe SQLite results store, statistics over
seeds and reports laid out like the papers' tables."""

from excite.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "Run": ".spec",
    "Study": ".spec",
    "Variant": ".spec",
    "builtin_studies": ".spec",
    "load_study": ".spec",
    "inspect_checkpoint": ".inspect",
    "record_attention_stats": ".inspect",
    "write_report": ".report",
    "run_study": ".runner",
    "run_study_ray": ".ray_runner",
    "paired_ttest": ".stats",
    "summarize": ".stats",
})
