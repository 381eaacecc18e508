"""Study definitions: a TOML file (or a built-in name) expanded into a grid of runs.

A study is ``models x variants x seeds`` on one dataset with one recipe, where a *variant* is an
attention module with its settings (kernel size, reduction ratio, groups, gate, arrangement) and
optional architecture options (ResNeXt cardinality and width). Each variant may carry the paper's
published number, so that reports print it beside ours.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ExciteError, unknown_name

BUILTIN_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Variant:
    """One row of the paper's table: an attention module with settings and architecture options."""

    label: str
    attention: str = "none"
    attention_kwargs: dict = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)
    published: float | None = None  # the paper's number for this row (top-1 %), if any


@dataclass(frozen=True)
class Run:
    """One grid point. ``key`` identifies it in the results database."""

    model: str
    variant: Variant
    seed: int
    dataset: str
    recipe: dict

    @property
    def key(self) -> str:
        # JSON with sorted keys so the same settings always give the same key (no duplicates on rerun).
        parts = dict(m=self.model, v=self.variant.label, a=self.variant.attention, ak=self.variant.attention_kwargs,
                     mk=self.variant.model_kwargs, d=self.dataset, s=self.seed)
        return json.dumps(parts, sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict:
        return dict(model=self.model, variant=asdict(self.variant), seed=self.seed, dataset=self.dataset,
                    recipe=self.recipe)


@dataclass
class Study:
    """A parsed study: what to train, on what, how often."""

    name: str
    variants: list[Variant]
    models: list[str]
    seeds: list[int]
    dataset: str = "digits"
    recipe: dict = field(default_factory=dict)
    baseline: str | None = None  # label of the variant the paired tests compare against
    title: str = ""
    source: str = ""  # the paper table the study mirrors and where the published numbers come from
    metric: str = "top1"

    def runs(self) -> list[Run]:
        """The grid, in a stable order: model, then variant, then seed."""
        return [Run(m, v, s, self.dataset, self.recipe) for m in self.models for v in self.variants for s in self.seeds]

    def to_dict(self) -> dict:
        return dict(name=self.name, title=self.title, source=self.source, models=self.models, seeds=self.seeds,
                    dataset=self.dataset, recipe=self.recipe, baseline=self.baseline, metric=self.metric,
                    variants=[asdict(v) for v in self.variants])


def builtin_studies() -> list[str]:
    """Names of the studies shipped with the package (``src/excite/study/*.toml``)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def load_study(name_or_path, *, overrides: dict | None = None) -> Study:
    """Load a study from a TOML path or a built-in name; ``overrides`` replaces top-level keys
    (``seeds``, ``models``, ``dataset``, ``recipe``) after loading."""
    path = Path(str(name_or_path))
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(2, "No such study file", str(path))
        text = path.read_text()
    else:
        if str(name_or_path) not in builtin_studies():
            raise unknown_name("study", str(name_or_path), builtin_studies())
        text = (BUILTIN_DIR / f"{name_or_path}.toml").read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ExciteError(f"study {name_or_path}: invalid TOML: {e}") from None
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return study_from_dict(raw, where=str(name_or_path))


def study_from_dict(raw: dict, *, where: str = "study") -> Study:
    """Validate a parsed study dictionary (TOML layout, or :meth:`Study.to_dict`)."""
    known = {"name", "title", "source", "models", "seeds", "dataset", "recipe", "baseline", "metric", "variant", "variants"}
    for k in raw:
        if k not in known:
            raise ExciteError(f"{where}: unknown key {k!r}; valid: {', '.join(sorted(known))}")
    rows = raw.get("variant", raw.get("variants"))
    if not rows:
        raise ExciteError(f"{where}: needs at least one [[variant]] table")
    variants = []
    for row in rows:
        extra = set(row) - {"label", "attention", "attention_kwargs", "model_kwargs", "published"}
        if extra or "label" not in row:
            raise ExciteError(f"{where}: a [[variant]] needs 'label' and takes only attention, attention_kwargs, "
                              f"model_kwargs, published (got {', '.join(sorted(row))})")
        variants.append(Variant(row["label"], row.get("attention", "none"), dict(row.get("attention_kwargs", {})),
                                dict(row.get("model_kwargs", {})), row.get("published")))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ExciteError(f"{where}: variant labels must be unique, got {labels}")
    models = raw.get("models", ["resnet20"])
    models = [models] if isinstance(models, str) else list(models)
    seeds = raw.get("seeds", [0, 1, 2])
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not models or not seeds:
        raise ExciteError(f"{where}: 'models' and 'seeds' must not be empty")
    recipe = raw.get("recipe", {})
    recipe = {"name": recipe} if isinstance(recipe, str) else dict(recipe)
    baseline = raw.get("baseline", labels[0])
    if baseline is not None and baseline not in labels:
        raise ExciteError(f"{where}: baseline {baseline!r} is not a variant label; valid: {', '.join(labels)}")
    return Study(name=raw.get("name", Path(where).stem), variants=variants, models=models, seeds=seeds,
                 dataset=raw.get("dataset", "digits"), recipe=recipe, baseline=baseline, title=raw.get("title", ""),
                 source=raw.get("source", ""), metric=raw.get("metric", "top1"))
