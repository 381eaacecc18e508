"""Study definitions: a TOML file (or a built-in name) expanded into a grid of runs.

A study is ``models x variants x seeds`` on one dataset with one recipe, where a *variant* is an
attention module with its settings (kernel size, reduction ratio, groups, gate, arrangement) and
optional architecture options (ResNeXt cardinality and width). Each variant may carry the paper's
published number, so that reports print it beside ours.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomllib

from excite.core.errors import ExciteError, check_choice, check_range, unknown_name
from excite.core.registry import attention_class, model_entry
from excite.core.spec import ModelSpec, parse_reference
from excite.core.trust import check_study, read_text
from excite.data import DATASETS
from excite.factory import is_model_file
from excite.training.engine import make_config

BUILTIN_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Variant:
    """One row of the paper's table: an attention module with settings and architecture options."""

    label: str
    attention: str | None = None  # None: the architecture as published, as everywhere else
    attention_kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # the model builder's options (as ModelSpec.options)
    published: float | None = None  # the paper's number for this row (top-1 %), if any

    def spec(self, model: str) -> ModelSpec:
        """``model`` patched with this row's attention and options: the model the row trains."""
        return ModelSpec(model, attention=self.attention, attention_kwargs=dict(self.attention_kwargs),
                         options=dict(self.options))


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
                     mk=self.variant.options, d=self.dataset, s=self.seed)
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


def load_study(name_or_path, *, overrides: dict | None = None, trust_code=None) -> Study:
    """Load a study from a TOML path or a built-in name; ``overrides`` replaces top-level keys
    (``seeds``, ``models``, ``dataset``, ``recipe``) after loading.

    A TOML file is untrusted: a ``file.py:Class`` or ``module:factory`` model it names is refused unless
    listed in ``trust_code`` (models given in ``overrides`` are the caller's own)."""
    path = Path(str(name_or_path))
    source = None
    if path.suffix == ".toml" or path.exists():
        if path.is_dir():
            raise ExciteError(f"{path} is a folder, not a study file; give a .toml file or a built-in study name")
        if not path.is_file():
            raise FileNotFoundError(2, "No such study file", str(path))
        text, source = read_text(path), path
    else:
        if str(name_or_path) not in builtin_studies():
            raise unknown_name("study", str(name_or_path), builtin_studies())
        text = (BUILTIN_DIR / f"{name_or_path}.toml").read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ExciteError(f"study {name_or_path}: invalid TOML: {e}") from None
    except RecursionError:  # tomllib recurses per nesting level
        raise ExciteError(f"study {name_or_path}: invalid TOML: nested too deeply") from None
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    study = study_from_dict(raw, where=str(name_or_path))
    if source is not None:
        check_study(study, source, typed_models=bool((overrides or {}).get("models")), trust_code=trust_code)
    return study


# Recipe keys a study sets per run (from the grid), so a recipe may not set them.
_PER_RUN_KEYS = ("model", "attention", "attention_kwargs", "options", "dataset", "seed", "device", "out",
                 "resume", "recipe")


def _text(where: str, key: str, value, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ExciteError(f"{where}: {key}={value!r}: expected a{' non-empty' if not empty else ''} string")
    return value


def _table(where: str, key: str, value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ExciteError(f"{where}: {key}={value!r}: expected a table of settings, e.g. {key} = {{k_size = 3}}")
    return dict(value)


def _variant(where: str, i: int, row) -> Variant:
    if not isinstance(row, dict):
        raise ExciteError(f"{where}: variant {i + 1} is {row!r}; expected a [[variant]] table with a label")
    extra = set(row) - {"label", "attention", "attention_kwargs", "options", "published"}
    if extra or "label" not in row:
        raise ExciteError(f"{where}: a [[variant]] needs 'label' and takes only attention, attention_kwargs, "
                          f"options, published (got {', '.join(sorted(row))})")
    label = _text(where, f"variant {i + 1} label", row["label"], empty=False)
    attention = row.get("attention")
    if attention is not None:
        attention = _text(where, f"variant {label!r} attention", attention, empty=False)
        try:
            attention_class(attention)
        except ExciteError as e:
            raise ExciteError(f"{where}: variant {label!r}: {e}") from None
    published = row.get("published")
    if published is not None:
        check_range(f"{where}: variant {label!r} published", published, low=0, high=100)
    return Variant(label, attention, _table(where, f"variant {label!r} attention_kwargs", row.get("attention_kwargs", {})),
                   _table(where, f"variant {label!r} options", row.get("options", {})), published)


def _seeds(where: str, seeds) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        check_range(f"{where}: seeds", seeds, low=1, high=10_000, integer=True)
        return list(range(seeds))
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ExciteError(f"{where}: seeds={seeds!r}: expected a count (seeds = 3) or a list of integers (seeds = [0, 1, 2])")
    for i, s in enumerate(seeds):
        check_range(f"{where}: seeds[{i}]", s, low=0, high=2**63 - 1, integer=True)
    if len(set(seeds)) != len(seeds):
        raise ExciteError(f"{where}: seeds={list(seeds)!r} repeats a seed")
    return list(seeds)


def _models(where: str, models) -> list[str]:
    models = [models] if isinstance(models, str) else models
    if not isinstance(models, (list, tuple)) or not models or not all(isinstance(m, str) and m.strip() for m in models):
        raise ExciteError(f"{where}: models={models!r}: expected a list of model names, e.g. models = [\"resnet20\"]")

    for m in models:
        if not is_model_file(m) and parse_reference(m)[0] == "registered":
            try:
                model_entry(m)
            except ExciteError as e:
                raise ExciteError(f"{where}: {e}") from None
    return list(models)


def _recipe(where: str, recipe, dataset: str) -> dict:
    """A recipe name or a table ``{name = ..., KEY = value}`` of TrainConfig values, checked by
    ``TrainConfig.validate`` (the same rules as ``excite train``); ``toy_*`` keys are for test trainers."""
    if isinstance(recipe, str):
        recipe = {"name": recipe}
    recipe = _table(where, "recipe", recipe)
    bad = [k for k in recipe if k in _PER_RUN_KEYS]
    if bad:
        raise ExciteError(f"{where}: recipe sets {', '.join(bad)}, which the study sets per run "
                          "(models, [[variant]] tables, seeds, dataset)")

    values = {k: v for k, v in recipe.items() if k != "name" and not k.startswith("toy_")}
    name = recipe.get("name")
    if name is not None:
        _text(where, "recipe name", name, empty=False)
    try:
        make_config(dict(values, dataset=dataset), recipe=name)
    except ExciteError as e:
        raise ExciteError(f"{where}: recipe: {e}") from None
    return recipe


def study_from_dict(raw: dict, *, where: str = "study") -> Study:
    """Validate a parsed study dictionary (TOML layout, or :meth:`Study.to_dict`): every key's type and
    range, names against the registries, recipe values with ``TrainConfig.validate``; one line naming
    the key otherwise."""
    known = {"name", "title", "source", "models", "seeds", "dataset", "recipe", "baseline", "metric", "variant", "variants"}
    for k in raw:
        if k not in known:
            raise unknown_name(f"key in {where}:", k, known)
    rows = raw.get("variant", raw.get("variants"))
    if not rows:
        raise ExciteError(f"{where}: needs at least one [[variant]] table")
    if not isinstance(rows, list):
        raise ExciteError(f"{where}: variant={rows!r}: expected [[variant]] tables")
    variants = [_variant(where, i, row) for i, row in enumerate(rows)]
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ExciteError(f"{where}: variant labels must be unique, got {labels}")
    models = _models(where, raw.get("models", ["resnet20"]))
    seeds = _seeds(where, raw.get("seeds", [0, 1, 2]))

    dataset = raw.get("dataset", "digits")
    try:
        check_choice("dataset", dataset, DATASETS)
    except ExciteError as e:
        raise ExciteError(f"{where}: {e}") from None
    recipe = _recipe(where, raw.get("recipe", {}), dataset)
    baseline = raw.get("baseline", labels[0])
    if baseline is not None and baseline not in labels:
        raise ExciteError(f"{where}: baseline {baseline!r} is not a variant label; valid: {', '.join(labels)}")
    name = _text(where, "name", raw.get("name", Path(where).stem), empty=False)
    return Study(name=name, variants=variants, models=models, seeds=seeds, dataset=dataset, recipe=recipe,
                 baseline=baseline, title=_text(where, "title", raw.get("title", "")),
                 source=_text(where, "source", raw.get("source", "")),
                 metric=_text(where, "metric", raw.get("metric", "top1"), empty=False))
