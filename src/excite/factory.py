"""Building models: from a registered name, a :class:`~excite.core.spec.ModelSpec`, a model file, or any
model reference a user can type (``resnet50``, ``runs/eca/best.safetensors``, ``net.py:Net``,
``pkg.mod:factory``, ``timm:resnet50``, ``torchvision:resnet50``).

Every command that takes a model goes through :func:`resolve_model`, so a model flows from each
command to the next: whatever one command writes, the others read. Registered models are found through
the registry's index, which imports a family's module when one of its models is built.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from excite.attention import blend_from_identity
from excite.attention.stn import resolve_stn_option, with_stn
from excite.core.combinations import check_attention_settings
from excite.core.errors import ExciteError, check_range
from excite.core.registry import attention_class, check_kwargs, model_entry
from excite.core.spec import ModelSpec, parse_input_size, parse_reference
from excite.core.trust import check_spec
from excite.files.keymap import SOURCES, detect_source, load_checkpoint, map_keys
from excite.files.modelfile import read_model_file, read_state_dict, save_model
from excite.files.weights import find_weights, fit_attention, load_pretrained
from excite.models.features import FeatureExtractor
from excite.models.optimize import optimize_for_inference
from excite.plug.attach import attach

__all__ = ["build_model", "convert", "create_model", "load_model", "resolve_model"]

MODEL_FILE_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".th", ".pt", ".ckpt", ".bin")
_SPEC_FIELDS = ("attention", "attention_kwargs", "num_classes", "in_chans", "attention_init", "out_indices")


def create_model(
    name: str | ModelSpec,
    *,
    attention: str | Callable[..., nn.Module] | None = None,
    attention_kwargs: dict | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    checkpoint: str | os.PathLike | None = None,
    pretrained=False,
    attention_init: str | None = None,
    features_only: bool = False,
    out_indices=None,
    **options,
) -> nn.Module:
    """Build a registered backbone with any attention module.

    Args:
        name: a name from :func:`excite.list_models`, or a :class:`~excite.ModelSpec` (then the keyword
            arguments given override its fields, and ``options`` are merged into its options).
        attention: a name from :func:`excite.list_attention`, a class/factory ``cls(channels, **kw)``, or
            ``None`` for the architecture as published (no attention for ResNets and MobileNetV2, SE
            for EfficientNet). ``"none"`` removes attention everywhere, EfficientNet's SE included.
        attention_kwargs: keyword arguments for every attention module. A list value with one entry
            per stage gives each stage its own setting (``{"k_size": [3, 5, 5, 7]}``).
        num_classes: classifier outputs; ``None`` gives the model's dataset default (1000 for ImageNet
            models, 10 for the CIFAR ResNets). 0 removes the classifier (features only).
        in_chans: input channels.
        checkpoint: optional weights to load: an excite model file, or another project's checkpoint
            (see :func:`excite.load_checkpoint`); a file that does not fit names the tensors that differ.
        pretrained: public weights from the table (:func:`excite.list_weights`, ``excite weights list``):
            ``True`` (the model's first entry), a tag (``"torchvision"``, ``"torchvision-v2"``,
            ``"eca-official"``, ``"timm"``) or a :class:`~excite.files.weights.WeightEntry`. Downloaded once
            into the cache folder (``$EXCITE_HOME``) and hash-checked. Attention the file does not hold
            starts as the identity, so the model computes exactly the pretrained function until trained;
            ``model.excite_pretrained`` reports what was loaded and what is new.
        attention_init: ``"identity"`` blends every attention module in from zero (a learnable
            ``<name>_scale`` each, as :func:`excite.attach` ``init="identity"``); the default for attention
            added onto pretrained weights.
        features_only: return a :class:`~excite.models.features.FeatureExtractor`: a list of stage feature
            maps (``model.feature_info``: module, channels, reduction) for a detector's neck.
        out_indices: the stages to return (default all; ``excite.feature_info(model)`` lists them).
        **options: architecture options of the builder (``variant="v1"``, ``width_mult=0.75`` ...).

    The returned model carries its description as ``model.excite_spec`` (``None`` when ``attention``
    or a setting is a Python object that cannot be written to a file).
    """
    if isinstance(name, (ModelSpec, dict)):
        if checkpoint is not None or pretrained not in (False, None):
            raise ExciteError("checkpoint= and pretrained= take a model name; load a description's weights "
                              "with excite.load_model(path)")
        overrides = dict(attention=attention, attention_kwargs=attention_kwargs, num_classes=num_classes,
                         in_chans=in_chans if in_chans != 3 else None, attention_init=attention_init,
                         out_indices=out_indices)
        return build_model(_override(name, overrides, options, features_only))
    weights, allow_dropped = None, False
    if pretrained is not False and pretrained is not None:
        if checkpoint is not None:
            raise ExciteError("pass pretrained= or checkpoint=, not both")
        weights = find_weights(name, pretrained)
        attention, attention_kwargs, attention_init, allow_dropped = fit_attention(
            weights, attention, attention_kwargs, attention_init)
    _check_arguments(attention, attention_kwargs, attention_init, features_only, out_indices, in_chans)
    entry = model_entry(name)
    if num_classes is None:
        num_classes = inspect.signature(entry.fn).parameters["num_classes"].default
    check_range("num_classes", num_classes, low=0, integer=True)
    model = _build_registered(entry, attention, attention_kwargs, num_classes, in_chans, options)
    if attention_init == "identity":
        blend_from_identity(model)
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    if weights is not None:
        model.excite_pretrained = load_pretrained(model, weights, allow_dropped=allow_dropped)
    if features_only:
        model = _features(model, out_indices)
        out_indices = model.out_indices
    model.excite_spec = _describe(name, attention, attention_kwargs, options, num_classes, in_chans,
                                  attention_init if attention_init == "identity" else None,
                                  out_indices if features_only else None)
    return model


def _override(spec: ModelSpec | dict, fields: dict, options: dict, features_only: bool) -> ModelSpec:
    """``spec`` with the fields given (not ``None``) replaced and ``options`` merged into its options."""
    spec = ModelSpec.from_dict(spec) if isinstance(spec, dict) else spec
    merged = {**spec.options, **options, **({"features_only": True} if features_only else {})}
    return spec.replace(**{k: v for k, v in fields.items() if v is not None}, options=merged)


def _features(model: nn.Module, out_indices) -> FeatureExtractor:
    features = FeatureExtractor(model, out_indices)
    if hasattr(model, "excite_pretrained"):
        features.excite_pretrained = model.excite_pretrained
    return features


def _check_arguments(attention, attention_kwargs, attention_init, features_only, out_indices, in_chans) -> None:
    """The settings every registered model shares, each checked before anything is built."""
    if attention_init not in (None, "default", "identity"):
        raise ExciteError(f"attention_init={attention_init!r} is not valid; expected 'identity' or 'default'")
    if out_indices is not None and not features_only:
        raise ExciteError("out_indices applies to features_only=True")
    check_range("in_chans", in_chans, low=1, integer=True)
    if isinstance(attention, str):
        attention_class(attention)  # validate early, with suggestions
    if attention_kwargs is not None and not isinstance(attention_kwargs, dict):
        raise ExciteError(f"attention_kwargs must be a dict, got {type(attention_kwargs).__name__}")


def _build_registered(entry, attention, attention_kwargs, num_classes: int, in_chans: int, options: dict) -> nn.Module:
    """Call the builder; ``stn=`` puts a Spatial Transformer (Jaderberg et al. 2015) in front of any model or
    after any stage, unless the builder takes the option itself (``stn_cnn``, ``resnet20_stn``)."""
    options = dict(options)
    takes_stn = "stn" in inspect.signature(entry.fn).parameters
    stn = options.pop("stn", None) if not takes_stn else None
    check_kwargs(entry.fn, options, f"model {entry.name!r}")
    model = entry.fn(attention=attention, attention_kwargs=dict(attention_kwargs or {}), num_classes=num_classes,
                     in_chans=in_chans, **options)
    model.default_input_size = (in_chans, *entry.default_input_size[1:])
    if stn is not None:
        option = resolve_stn_option(stn)
        if option is not None:
            with_stn(model, option[0], **option[1])
    return model


def _describe(name, attention, attention_kwargs, options, num_classes, in_chans, attention_init=None,
              out_indices=None) -> ModelSpec | None:
    """The model's description, or ``None`` when a setting is a Python object (a class, a lambda)."""
    if attention is not None and not isinstance(attention, str):
        return None
    try:
        spec = ModelSpec(arch=name, attention=attention, attention_kwargs=dict(attention_kwargs or {}),
                         options=dict(options), num_classes=num_classes, in_chans=in_chans,
                         attention_init=attention_init, out_indices=out_indices)
        spec.to_json()
    except ExciteError:
        return None
    return spec


def build_model(spec: ModelSpec | dict, *, base_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build the (untrained) network a description names; ``model.excite_spec`` is ``spec``.

    ``base_dir``: where to look for a ``file.py:Class`` reference that is not found from the current
    folder (the folder of the model file it came from).
    """
    if isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    kind, where, name = parse_reference(spec.arch)
    if kind == "registered":
        options = dict(spec.options)  # `-O features_only=true -O out_indices=[2,3]` on the command line
        features_only = bool(options.pop("features_only", False)) or spec.out_indices is not None
        out_indices = spec.out_indices if spec.out_indices is not None else options.pop("out_indices", None)
        options.pop("out_indices", None)
        model = create_model(spec.arch, attention=spec.attention, attention_kwargs=spec.attention_kwargs,
                             num_classes=spec.num_classes, in_chans=spec.in_chans, attention_init=spec.attention_init,
                             features_only=features_only, out_indices=out_indices, **options)
        model.excite_spec = spec.replace(attach=[], optimized=False)
    else:
        if spec.attention not in (None, "none") or spec.attention_kwargs:
            raise ExciteError(f"{spec.arch}: attention for a model excite did not define is attached "
                              "(ModelSpec.attach), not built in")
        if spec.out_indices is not None or spec.attention_init is not None:
            raise ExciteError(f"{spec.arch}: features_only and attention_init apply to registered models")
        model = _external(kind, where, name, spec, base_dir)
        model.default_input_size = spec.input_size or getattr(model, "default_input_size", (spec.in_chans, 224, 224))
        model.excite_spec = spec.replace(attach=[], optimized=False)
    if spec.input_size:
        model.default_input_size = spec.input_size
    for call in spec.attach:
        call = dict(call)
        attach(model, call.pop("attention"), profile=False, **call)  # records itself in excite_spec.attach
    if spec.optimized:
        model = optimize_for_inference(model.eval())
    model.excite_spec = spec
    return model


def _external(kind: str, where: str, name: str, spec: ModelSpec, base_dir) -> nn.Module:
    """A model excite did not define: the user's code, timm or torchvision."""
    if kind in ("timm", "torchvision"):
        try:
            package = importlib.import_module(kind)
        except ImportError as e:
            raise ExciteError(f"model {spec.arch!r} needs the {kind} package, which cannot be imported here "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); pip install {kind}") from None
        kwargs = dict(spec.options)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        if kind == "timm":
            if spec.in_chans != 3:
                kwargs["in_chans"] = spec.in_chans
            factory = lambda: package.create_model(name, pretrained=False, **kwargs)  # noqa: E731
        else:
            factory = lambda: package.models.get_model(name, weights=None, **kwargs)  # noqa: E731
        try:
            model = factory()
        except (RuntimeError, KeyError, ValueError) as e:  # both raise these for unknown names
            raise ExciteError(f"model {spec.arch!r}: {kind} cannot build {name!r} ({str(e).splitlines()[0]})") from None
    else:
        fn = _import_attr(kind, where, name, spec.arch, base_dir)
        kwargs = dict(spec.options)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # a builtin without a signature: call it and see
            params = None
        if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            if "num_classes" not in params and spec.options.get("num_classes") is None:
                kwargs.pop("num_classes", None)  # a factory without num_classes builds its own head
            bad = [k for k in kwargs if k not in params]
            if bad:
                raise ExciteError(f"model {spec.arch!r} takes no argument {bad[0]!r}; its parameters: "
                                  f"{', '.join(params) or 'none'}")
        try:
            model = fn(**kwargs)
        except Exception as e:  # the user's constructor failed: their code, named in one line
            raise ExciteError(f"model {spec.arch!r}: building it failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ExciteError(f"model {spec.arch!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def _import_attr(kind: str, where: str, name: str, ref: str, base_dir):
    """Import ``where`` (a ``.py`` file or a module) and return its attribute ``name``. Runs its code."""
    if kind == "file":
        path = Path(where)
        if not path.is_file() and base_dir is not None and (Path(base_dir) / where).is_file():
            path = Path(base_dir) / where
        if not path.is_file():
            raise FileNotFoundError(2, "No such file or directory", where)
        path = path.resolve()
        # One module per file (by its absolute path), so a model file and its class stay consistent.
        mod_name = f"excite_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[mod_name] = module
            try:
                loader.loader.exec_module(module)
            except Exception as e:  # the user's code failed: name it in one line (their bug, not ours)
                sys.modules.pop(mod_name, None)
                raise ExciteError(f"model {ref!r}: importing {where} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ExciteError(f"model {ref!r}: cannot import module {where!r} ({e})") from None
        except Exception as e:  # the user's module raised while importing
            raise ExciteError(f"model {ref!r}: importing {where} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ExciteError(f"model {ref!r}: {where} has no class or function {name!r}")
    return fn


def _load_weights(model: nn.Module, path) -> dict:
    """Load an excite model file's tensors (strict) or another project's checkpoint into ``model``."""
    mf = read_model_file(path)
    if mf.spec is None:  # not an excite file: map other projects' key names
        return load_checkpoint(model, path)
    load_tensors(model, mf.tensors, str(path))
    return {"source": "excite", "loaded": len(mf.tensors)}


def load_tensors(model: nn.Module, tensors: dict, what: str = "weights") -> None:
    """``model.load_state_dict(tensors)``, with one line naming the tensors that do not fit."""
    target = model.state_dict()
    missing = [k for k in target if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in tensors if k not in target]
    mismatched = [f"{k} {tuple(tensors[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in target if k in tensors and tensors[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", mismatched)):
            if items:
                shown = ", ".join(items[:4]) + (f", ... (+{len(items) - 4} more)" if len(items) > 4 else "")
                parts.append(f"{len(items)} {title}: {shown}")
        raise ExciteError(f"{what} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=False)


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu", trust_code=None) -> nn.Module:
    """Rebuild the model a model file describes and load its weights (no pickle, no code but the
    model's own: a ``file.py:Class`` model imports that file).

    Works on everything excite writes (``train``'s best/last, ``convert``, ``attach``, optimized models,
    :func:`excite.save_model`) and on files of earlier excite versions. ``model.excite_file`` holds the
    header (excite version, training config, final metrics, provenance).

    The header is untrusted: a ``file.py:Class`` or ``module:factory`` it names runs only when listed in
    ``trust_code`` (e.g. ``["net.py:Net"]``, see :mod:`excite.core.trust`); otherwise one line refuses it.
    """
    mf = read_model_file(path)
    check_spec(mf.spec, path, trust_code=trust_code, base_dir=Path(path).parent)  # before any code runs
    if mf.spec is None:
        raise ExciteError(f"{path} holds weights but no model description; load it into a model with "
                          "excite.create_model(NAME, checkpoint=PATH), or write one with `excite convert`")
    if str(device) == "meta":
        with torch.device("meta"):
            model = build_model(mf.spec, base_dir=Path(path).parent)
    else:
        model = build_model(mf.spec, base_dir=Path(path).parent)
        load_tensors(model, mf.tensors, str(path))
        model.to(device)
    model.excite_file = {"path": str(path), **mf.header}
    return model


def is_model_file(ref: str) -> bool:
    """Whether ``ref`` names a file (an existing path, or one with a weights suffix)."""
    return os.path.exists(ref) or str(ref).lower().endswith(MODEL_FILE_SUFFIXES)


def reference_spec(ref: str, *, attention: str | None = None, attention_kwargs: dict | None = None,
                   options: dict | None = None, num_classes: int | None = None, in_chans: int = 3,
                   input_size=None) -> ModelSpec:
    """The description of a model reference plus command-line settings (not for model files).

    For a model excite did not define, ``attention`` (when not ``None``/``"none"``) becomes an
    :func:`excite.attach` call with identity initialisation, so the user's network keeps its function.
    """
    kind, _, _ = parse_reference(ref)
    size = parse_input_size(input_size, in_chans=in_chans) if input_size is not None else None
    if size is not None and in_chans == 3:  # `--input-size 1x28x28` is the command line's way to one channel
        in_chans = size[0]
    if kind == "registered":
        model_entry(ref)  # unknown names: one line with suggestions
        check_attention_settings(ref, attention, attention_kwargs)
        return ModelSpec(arch=ref, attention=attention, attention_kwargs=dict(attention_kwargs or {}),
                         options=dict(options or {}), num_classes=num_classes, in_chans=in_chans, input_size=size)
    calls = []
    if attention not in (None, "none"):
        attention_class(attention)
        calls.append({"attention": attention, "init": "identity", **(attention_kwargs or {})})
    elif attention_kwargs:
        raise ExciteError("attention settings were given without --attention")
    return ModelSpec(arch=ref, options=dict(options or {}), num_classes=num_classes, in_chans=in_chans,
                     input_size=size, attach=calls)


def resolve_model(ref: str | ModelSpec, *, attention: str | None = None, attention_kwargs: dict | None = None,
                  options: dict | None = None, num_classes: int | None = None, in_chans: int = 3,
                  input_size=None, device: str = "cpu", pretrained=None, trust_code=None) -> nn.Module:
    """Whatever the user typed -> a model: the one function every command uses.

    ``ref``: a registered name, a model file (``.safetensors``; other projects' ``.pth`` need
    ``excite convert`` first), ``file.py:Class``, ``module:factory``, ``timm:NAME`` or
    ``torchvision:NAME``, or a :class:`~excite.ModelSpec` (the settings given then override its
    fields, and ``options`` are merged into its options). The settings apply to references, not to
    model files, which describe their model themselves. ``device="meta"`` builds without memory or
    weights (for counting). ``pretrained``: public weights for a registered name (see
    :func:`create_model`). ``trust_code``: the code references a model file's header may run (see
    :func:`load_model`).
    """
    if isinstance(ref, ModelSpec):
        spec = _override(ref, dict(attention=attention, attention_kwargs=attention_kwargs, num_classes=num_classes,
                                   in_chans=in_chans if in_chans != 3 else None,
                                   input_size=input_size), options or {}, False)
        return _from_spec(spec.validate(), device, pretrained)
    if pretrained not in (None, False) and (is_model_file(ref) or parse_reference(ref)[0] != "registered"):
        raise ExciteError(f"--pretrained applies to a registered model name, not {ref!r}; "
                          "a model file already holds its weights")
    if is_model_file(ref):
        given = {k: v for k, v in dict(attention=attention, attention_kwargs=attention_kwargs, options=options,
                                         num_classes=num_classes).items() if v}
        if given:
            raise ExciteError(f"{ref} is a model file and describes its own model; "
                              f"{', '.join(sorted(given))} apply to a model name")
        model = load_model(ref, device=device, trust_code=trust_code)
        if input_size is not None:
            chans = model.default_input_size[0]
            size = parse_input_size(input_size, in_chans=chans)
            if size[0] != chans:
                raise ExciteError(f"input size {'x'.join(map(str, size))}: {ref} takes {chans}-channel inputs")
            model.default_input_size = size
        return model
    spec = reference_spec(ref, attention=attention, attention_kwargs=attention_kwargs, options=options,
                          num_classes=num_classes, in_chans=in_chans, input_size=input_size)
    return _from_spec(spec, device, pretrained)


def _from_spec(spec: ModelSpec, device, pretrained) -> nn.Module:
    """Build ``spec`` on ``device``, with public weights when ``pretrained`` (a registered name only)."""
    if pretrained not in (None, False):
        if spec.attach or parse_reference(spec.arch)[0] != "registered":
            raise ExciteError(f"pretrained= applies to a registered model name without attach calls, "
                              f"not {spec.arch!r}")
        model = create_model(spec.arch, attention=spec.attention, attention_kwargs=spec.attention_kwargs or None,
                             num_classes=spec.num_classes, in_chans=spec.in_chans, pretrained=pretrained,
                             **spec.options)
        if spec.input_size:
            model.default_input_size = spec.input_size
    elif str(device) == "meta":
        with torch.device("meta"):
            return build_model(spec)
    else:
        model = build_model(spec)
    return model.to(device) if str(device) != "cpu" else model


def convert(
    src: str | Path, dst: str | Path, *, model: str | ModelSpec, source: str = "auto", attention: str | None = None,
    attention_kwargs: dict | None = None, num_classes: int | None = None, **options,
) -> dict:
    """Load ``src`` (any supported source) into the registered ``model`` (a name or a
    :class:`~excite.ModelSpec` of one; the keyword settings override its fields) and write ``dst``, a
    model file (safetensors with the model description and provenance in its header: no sidecar).

    ``num_classes=None`` takes the classifier size from the checkpoint (or the spec's). The header's
    provenance holds the source naming, the file name, its SHA-256 and the torch version. Returns the
    load summary with the output path (``weights``) and the written description (``spec``) added.
    Nothing is written unless every tensor fits.
    """
    if source not in SOURCES:
        raise ExciteError(f"unknown checkpoint source {source!r}; valid: {', '.join(SOURCES)}")
    if not str(dst).endswith(".safetensors"):
        raise ExciteError(f"{dst}: model files are written as .safetensors; use that suffix")
    if isinstance(model, ModelSpec) and num_classes is None:
        num_classes = model.num_classes
    if num_classes is None:
        state = read_state_dict(src)
        with torch.device("meta"):
            probe = create_model(model, attention=attention, attention_kwargs=attention_kwargs, **options)
        mapped = map_keys(state, detect_source(state) if source == "auto" else source, target=probe.state_dict())
        head = probe.get_classifier() if hasattr(probe, "get_classifier") else None
        name = next((n for n, m in probe.named_modules() if m is head), None)
        weight = mapped.get(f"{name}.weight") if name else None
        num_classes = int(weight.shape[0]) if weight is not None else None
    net = create_model(model, attention=attention, attention_kwargs=attention_kwargs, num_classes=num_classes,
                       **options)
    summary = load_checkpoint(net, src, source=source, strict=True)
    digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()
    weights = save_model(net, dst, provenance=dict(source=summary["source"], file=Path(src).name, sha256=digest,
                                                   torch=torch.__version__))
    summary.update(weights=str(weights), spec=net.excite_spec)
    return summary
