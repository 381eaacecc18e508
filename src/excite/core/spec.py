"""One description of a model: what to build, with which attention and options, at which input size.

A :class:`ModelSpec` is the spine every command shares (as nanoGPT's ``model_args`` or Hugging Face's
``config.json``): :func:`excite.create_model` records it on every model it builds (``model.excite_spec``),
every model file excite writes carries it in its header, and :func:`excite.build_model` rebuilds the
same network from it. It is plain JSON, so a file written today can be read without excite's classes.

``arch`` is the model reference the user typed (see :func:`parse_reference`):

=========================== =====================================================================
``resnet50``                a registered model (:func:`excite.list_models`)
``path/to/net.py:Net``      a class or factory in the user's file (its code is imported and run)
``package.module:factory``  a class or factory in an importable module (its code is run)
``timm:NAME``               ``timm.create_model(NAME)`` when timm is importable
``torchvision:NAME``        ``torchvision.models.get_model(NAME)`` when torchvision is importable
=========================== =====================================================================

This module imports neither torch nor any model code, so the command line can parse and check a
description before paying for torch's import.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from excite.core.errors import ExciteError

SPEC_VERSION = 1
EXTERNAL = ("timm", "torchvision")


@dataclass
class ModelSpec:
    """A JSON-serialisable description of a model.

    Attributes:
        arch: the model reference (a registered name, ``file.py:Class``, ``module:factory``,
            ``timm:NAME`` or ``torchvision:NAME``).
        attention: ``None`` builds the architecture as published (EfficientNet keeps its SE);
            ``"none"`` removes attention everywhere; otherwise a registered attention name. For a model
            that excite did not define, a name is attached with :func:`excite.attach`.
        attention_kwargs: settings of every attention module; a list gives one value per stage.
        options: the builder's own options (``variant``, ``preact``, ``block_form``, ``width_mult`` ...)
            or the keyword arguments of a user's factory.
        num_classes: classifier outputs; ``None`` keeps the architecture's default.
        in_chans: input channels.
        input_size: ``(C, H, W)`` the model is meant for; ``None`` takes the architecture's default.
        attach: :func:`excite.attach` calls applied after building, in order (each a dict of its
            arguments), so an attached network can be rebuilt before its weights are loaded.
        optimized: the weights are those of :func:`excite.optimize_for_inference` (BatchNorm folded).
        attention_init: ``"identity"`` when every attention module is blended in from zero (a learnable
            ``<name>_scale`` per module, so the network starts as its backbone: attention added onto
            pretrained weights); ``None`` for the modules' own initialisation.
        out_indices: ``None`` for the classifier; a list of stage indices for a feature extractor
            (``create_model(..., features_only=True)``) returning those stages' feature maps.

    The last two fields are written only when set, so descriptions without them read and write as before.
    """

    arch: str
    attention: str | None = None
    attention_kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    num_classes: int | None = None
    in_chans: int = 3
    input_size: tuple[int, int, int] | None = None
    attach: list = field(default_factory=list)
    optimized: bool = False
    attention_init: str | None = None
    out_indices: list | None = None

    def __post_init__(self):
        self.validate()

    # -- checking -----------------------------------------------------------------------------------
    def validate(self) -> "ModelSpec":
        """Check types and ranges; raise one :class:`ExciteError` line naming the bad field."""
        if not isinstance(self.arch, str) or not self.arch.strip():
            raise ExciteError(f"model reference must be a non-empty string, got {self.arch!r}")
        if self.attention is not None and not isinstance(self.attention, str):
            raise ExciteError(f"attention must be a name or None, got {type(self.attention).__name__}")
        for name in ("attention_kwargs", "options"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ExciteError(f"{name} must be a dict with string keys, got {value!r}")
        if self.num_classes is not None and (not _is_int(self.num_classes) or self.num_classes < 0):
            raise ExciteError(f"num_classes={self.num_classes!r} is out of range; expected an integer >= 0")
        if not _is_int(self.in_chans) or self.in_chans < 1:
            raise ExciteError(f"in_chans={self.in_chans!r} is out of range; expected an integer >= 1")
        if self.input_size is not None:
            self.input_size = parse_input_size(self.input_size, in_chans=self.in_chans)
        if not isinstance(self.attach, list) or not all(isinstance(a, dict) and "attention" in a for a in self.attach):
            raise ExciteError(f"attach must be a list of attach() argument dicts, got {self.attach!r}")
        if not isinstance(self.optimized, bool):
            raise ExciteError(f"optimized must be true or false, got {self.optimized!r}")
        if self.attention_init not in (None, "default", "identity"):
            raise ExciteError(f"attention_init={self.attention_init!r} is not valid; expected 'identity' or none")
        if self.out_indices is not None:
            if isinstance(self.out_indices, tuple):
                self.out_indices = list(self.out_indices)
            if not isinstance(self.out_indices, list) or not self.out_indices or not all(
                    _is_int(i) and i >= 0 for i in self.out_indices):
                raise ExciteError(f"out_indices={self.out_indices!r}: expected a non-empty list of stage indices >= 0")
        parse_reference(self.arch)
        return self

    # -- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        for optional in _OPTIONAL:  # written only when set: older descriptions stay byte for byte
            if d[optional] is None:
                del d[optional]
        d["spec_version"] = SPEC_VERSION
        return d

    def to_json(self) -> str:
        try:
            return json.dumps(self.to_dict(), sort_keys=True)
        except TypeError as e:  # a callable in attention_kwargs, an nn.Module class as attention ...
            raise ExciteError(f"this model's description is not JSON-serialisable ({e}); "
                              "use registered names and plain values to save it") from None

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Read a description, refusing unknown keys (a typo must not be silently dropped)."""
        if not isinstance(d, dict):
            raise ExciteError(f"a model description must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        version = d.pop("spec_version", SPEC_VERSION)
        if not _is_int(version) or version < 1:
            raise ExciteError(f"model description version {version!r} is not valid; expected an integer >= 1")
        if version > SPEC_VERSION:
            raise ExciteError(f"model description version {version!r} is newer than this excite reads "
                              f"({SPEC_VERSION}); upgrade excite")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ExciteError(f"unknown model description key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        if "arch" not in d:
            raise ExciteError("model description has no 'arch' (the model reference)")
        if d.get("input_size") is not None:
            d["input_size"] = tuple(d["input_size"]) if isinstance(d["input_size"], list) else d["input_size"]
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ExciteError(f"model description is not valid JSON ({e.msg})") from None

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)


_OPTIONAL = ("attention_init", "out_indices")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_reference(ref: str) -> tuple[str, str, str]:
    """Split a model reference into ``(kind, where, name)``.

    ``kind`` is ``"registered"``, ``"file"`` (``path.py:Name``), ``"module"`` (``pkg.mod:Name``),
    ``"timm"`` or ``"torchvision"``. A model *file* path is not a reference kind: callers check
    for an existing file first.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ExciteError(f"model reference must be a non-empty string, got {ref!r}")
    head, sep, tail = ref.partition(":")
    if sep and head in EXTERNAL:
        if not tail:
            raise ExciteError(f"model reference {ref!r} names no model; e.g. {head}:resnet50")
        return head, head, tail
    if ":" in ref:
        where, _, name = ref.rpartition(":")
        if not where or not name or not name.isidentifier():
            raise ExciteError(f"model reference {ref!r} is not FILE.py:NAME or MODULE:NAME (NAME a class or function)")
        return ("file" if where.endswith(".py") else "module"), where, name
    return "registered", "", ref


# The smallest height and width any command takes (profile, bench, export, attach alike): the
# CIFAR ResNets reduce 8x8 to 2x2, and below that most models' strided layers see 1x1 maps.
MIN_SIDE = 8


def parse_input_size(value, *, in_chans: int = 3) -> tuple[int, int, int]:
    """``224``, ``"224"``, ``"224x192"``, ``"3x224x224"``, ``(224, 192)`` or ``(3, 224, 224)`` -> ``(C, H, W)``.

    One parser for every command and file, so ``--input-size`` means the same everywhere.
    """
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise ExciteError(f"input size {value!r} is not N, HxW or CxHxW (e.g. 224, 224x224, 3x224x224)") from None
    elif _is_int(value):
        dims = [value]
    elif isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        dims = list(value)
    else:
        raise ExciteError(f"input size {value!r} is not N, HxW or CxHxW (e.g. 224, 224x224, 3x224x224)")
    if len(dims) == 1:
        dims = [in_chans, dims[0], dims[0]]
    elif len(dims) == 2:
        dims = [in_chans, *dims]
    if len(dims) != 3:
        raise ExciteError(f"input size {value!r} has {len(dims)} dimensions; expected N, HxW or CxHxW")
    if not 1 <= dims[0] <= 4096 or any(not MIN_SIDE <= d <= 16384 for d in dims[1:]):
        raise ExciteError(f"input size {value!r} is out of range; expected channels in [1, 4096] and height and "
                          f"width in [{MIN_SIDE}, 16384]")
    return tuple(dims)
