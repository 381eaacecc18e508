"""What the tests sweep, derived from the registry: a new model family or attention module is tested by
being registered, with no list to edit here."""

from __future__ import annotations

import sys
from pathlib import Path

from excite.core.registry import list_attention, list_models, model_entry

# Test modules share look-alikes and file makers across the layer folders (`from test_data import
# make_cifar` in tests/training): every folder is importable, whichever file runs alone.
sys.path[:0] = [str(d) for d in sorted(Path(__file__).parent.iterdir()) if d.is_dir() and d.name[0] not in "._"]


def _one_per_family() -> dict[str, str]:
    """The smallest model (by parameters, then name) of every registered family."""
    best: dict[str, str] = {}
    for name in list_models():
        entry = model_entry(name)
        current = best.get(entry.family)
        if current is None or (entry.params or 0) < (model_entry(current).params or 0):
            best[entry.family] = name
    return best


ONE_PER_FAMILY = _one_per_family()
FAMILIES = sorted(ONE_PER_FAMILY)
# Every attention module a user can name, "none" (no module) aside.
ATTENTION_MODULES = [a for a in list_attention() if a != "none"]
