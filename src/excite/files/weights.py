"""Public weight files by name: ``create_model("resnet50", pretrained="torchvision")``.

The table (``weights.json``, read without importing torch) lists, for the registered models that have
them, the public ImageNet weight files: torchvision's, the official ECA-Net releases (BangguWu/ECANet)
and timm's SE ResNets whose key layout maps onto this project's. Each entry records where the file is,
its SHA-256 as far as the publisher states it, the licence and the published top-1.

Hashes: torchvision and timm put the first 8+ hex digits of the file's SHA-256 in its name
(``resnet50-0676ba61.pth``) and ``torch.hub`` checks exactly that prefix; so does excite. The ECA-Net
files on Google Drive have no published hash: they are loaded (safely: ``weights_only``) and the SHA-256
excite computed is printed, so it can be recorded.

Downloads go to ``$EXCITE_HOME/weights`` (default ``~/.cache/excite/weights``, or
``$XDG_CACHE_HOME/excite/weights``), once: the file is written under a temporary name while it is hashed,
and renamed only when the hash matches, so a failed or corrupt download leaves nothing behind. A file
already in the folder is re-hashed before use. Nothing here downloads at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from excite.attention import is_attention
from excite.core.errors import ExciteError
from excite.core.spec import ModelSpec
from excite.core.registry import list_models
from excite.files.keymap import detect_source, map_keys, match_state_dict
from excite.files.modelfile import read_state_dict

__all__ = ["WeightEntry", "cache_dir", "download_weights", "find_weights", "list_weights", "load_pretrained"]

ENV_HOME = "EXCITE_HOME"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightEntry:
    """One public weight file.

    Attributes:
        model: the registered model name it fits (``"resnet50"``).
        tag: which release (``"torchvision"``, ``"torchvision-v2"``, ``"eca-official"``, ``"timm"``).
        source: the key naming of the file (a source of :func:`excite.load_checkpoint`).
        url: where it is published (``file://`` URLs work too, for tests and mirrors).
        file: the name it is cached under.
        sha256: the file's full SHA-256, or the prefix the publisher put in the file name; ``None`` if
            none is published.
        licence: the licence the publisher states, and the dataset terms.
        top1: the publisher's ImageNet-1k validation top-1 (%).
        reference: where the URL and top-1 are published.
        attention, attention_kwargs: the attention the weights include (``None``: as the architecture is
            published).
        key_fix: a renaming the file needs before the source's key map (``"densenet-legacy"``).
    """

    model: str
    tag: str
    source: str
    url: str
    file: str
    sha256: str | None
    licence: str
    top1: float | None
    reference: str = ""
    attention: str | None = None
    attention_kwargs: dict = field(default_factory=dict)
    key_fix: str | None = None

    @property
    def hash_kind(self) -> str:
        """``"full"``, ``"prefix"`` (the digits in the file name) or ``"none"``."""
        if not self.sha256:
            return "none"
        return "full" if len(self.sha256) == 64 else "prefix"

    @property
    def label(self) -> str:
        return f"{self.model}:{self.tag}"

    @property
    def spec(self) -> ModelSpec:
        """The description of the network these weights fit: ``excite.resolve_model(entry.spec,
        pretrained=entry)`` builds it with them loaded."""
        return ModelSpec(arch=self.model, attention=self.attention, attention_kwargs=dict(self.attention_kwargs))


_TABLE: list[WeightEntry] | None = None


def list_weights(model: str | None = None) -> list[WeightEntry]:
    """The table's entries (all, or those of ``model``), in table order."""
    global _TABLE
    if _TABLE is None:
        doc = json.loads(resources.files("excite.files").joinpath("weights.json").read_text())
        _TABLE = [WeightEntry(**e) for e in doc["weights"]]
    return [e for e in _TABLE if model is None or e.model == model]


def find_weights(model: str, pretrained) -> WeightEntry:
    """The entry ``pretrained`` names for ``model``: ``True`` (the model's first entry), a tag
    (``"torchvision"``), a :class:`WeightEntry` or a dict of its fields (a custom file)."""
    if isinstance(pretrained, WeightEntry):
        return pretrained
    if isinstance(pretrained, dict):
        try:
            return WeightEntry(**{"model": model, "tag": "custom", "source": "auto", "licence": "", "top1": None,
                                  "file": Path(str(pretrained.get("url", "weights.pth"))).name, "sha256": None,
                                  **pretrained})
        except TypeError as e:
            raise ExciteError(f"pretrained: not a weights entry ({e})") from None
    entries = list_weights(model)
    if model not in list_models():
        if entries:
            raise ExciteError(f"{model} has public weights ({', '.join(e.tag for e in entries)}) but is not a "
                              "registered model in this excite version; see `excite list models`")
        raise ExciteError(f"unknown model {model!r}; see `excite list models` and `excite weights list`")
    if not entries:
        have = sorted({e.model for e in list_weights()})
        raise ExciteError(f"no public weights for {model}; models with weights: {', '.join(have)}")
    if pretrained is True:
        return entries[0]
    if isinstance(pretrained, str):
        for e in entries:
            if e.tag == pretrained:
                return e
        raise ExciteError(f"no {pretrained!r} weights for {model}; available: {', '.join(e.tag for e in entries)}")
    raise ExciteError(f"pretrained={pretrained!r}: expected True, a weights tag ({', '.join(e.tag for e in entries)}) "
                      "or an entry")


def cache_dir() -> Path:
    """Where weight files are kept: ``$EXCITE_HOME/weights``, else ``$XDG_CACHE_HOME/excite/weights``,
    else ``~/.cache/excite/weights`` (the same rule as ``torch.hub``'s ``TORCH_HOME``)."""
    home = os.environ.get(ENV_HOME)
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "excite")
    return Path(home) / "weights"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()  # hashlib.file_digest is Python 3.11+; the project supports 3.10
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_hash(entry: WeightEntry, digest: str, where) -> None:
    if entry.sha256 and not digest.startswith(entry.sha256.lower()):
        raise ExciteError(f"{where}: SHA-256 {digest[:16]}... does not match the published "
                          f"{entry.sha256} of {entry.label}; the file is discarded")


def download_weights(entry: WeightEntry, *, folder: str | os.PathLike | None = None) -> Path:
    """The local path of ``entry``'s file: downloaded once into :func:`cache_dir` (or ``folder``), its
    hash checked. Raises :class:`ExciteError` in one line when offline or when the hash differs; a
    download that fails leaves no file behind."""
    folder = Path(folder) if folder is not None else cache_dir()
    dest = folder / entry.file
    if dest.is_file():
        try:
            _check_hash(entry, _sha256(dest), dest)
        except ExciteError:
            dest.unlink(missing_ok=True)  # a corrupt or foreign file: fetch it again below
        else:
            return dest
    folder.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(entry.url, timeout=60) as r, open(tmp, "wb") as f:
            head = b""
            while chunk := r.read(_CHUNK):
                head = head or chunk[:64]
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        digest = h.hexdigest()
        _check_hash(entry, digest, entry.url)
        if head.lstrip()[:1] == b"<":  # an HTML page: Google Drive's confirmation for large files, a login ...
            raise ExciteError(f"{entry.url} returned a web page, not the weights; download {entry.file} in a browser "
                              f"and put it at {dest}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise ExciteError(f"cannot download {entry.label} from {entry.url} ({reason}); offline? download it "
                          f"elsewhere and put it at {dest}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if entry.hash_kind == "none":
        print(f"excite: {entry.label} has no published hash; the downloaded file's SHA-256 is {digest}",
              file=sys.stderr)
    return dest


# torchvision's DenseNet files predate module names without dots: `denselayer1.norm.1.weight` is today's
# `denselayer1.norm1.weight` (torchvision's densenet._load_state_dict applies the same renaming).
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _fix_keys(state: dict, key_fix: str | None) -> dict:
    if key_fix is None:
        return state
    if key_fix == "densenet-legacy":
        out = {}
        for k, v in state.items():
            m = _DENSENET_LEGACY.match(k)
            out[m[1] + m[2] if m else k] = v
        return out
    raise ExciteError(f"unknown key_fix {key_fix!r} in the weights table")


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did: tensors loaded from the file, tensors that are new (attention
    added onto the backbone, identity blend scales, a resized classifier) and tensors of the file left
    out (attention the model does not have)."""

    weights: str
    file: str
    loaded: list[str]
    new: list[str]
    dropped: list[str]
    head: str  # "loaded", "new" (resized: num_classes differs) or "none"

    def __str__(self) -> str:
        parts = [f"{self.weights}: loaded {len(self.loaded)} tensors from {Path(self.file).name}"]
        if self.new:
            parts.append(f"new {len(self.new)} ({_short(self.new)})")
        if self.dropped:
            parts.append(f"left out {len(self.dropped)} ({_short(self.dropped)})")
        parts.append(f"classifier {self.head}")
        return "; ".join(parts)


def _short(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def load_pretrained(model, entry: WeightEntry, path: str | os.PathLike | None = None, *,
                    allow_dropped: bool = False) -> PretrainedReport:
    """Load ``entry``'s file (``path``, or the cached download) into ``model`` through the key maps.

    Every backbone tensor must load: only attention modules, their blend scales and the classifier
    (when ``num_classes`` differs from the file's) may be new; tensors in the file that the model lacks
    are an error unless ``allow_dropped`` (the model was asked for different attention).
    """

    path = Path(path) if path is not None else download_weights(entry)
    state = _fix_keys(read_state_dict(path), entry.key_fix)
    source = detect_source(state) if entry.source == "auto" else entry.source
    state = map_keys(state, source, target=model.state_dict().keys())
    missing, unexpected, mismatched = match_state_dict(model, state)
    head_mod = model.get_classifier() if hasattr(model, "get_classifier") else None
    head = {f"{n}.{p}" for n, m in model.named_modules() if m is head_mod and n for p, _ in m.named_parameters()}
    attn = [n + "." for n, m in model.named_modules() if n and is_attention(m)]
    target = model.state_dict()
    blend = {k for k in target if k.endswith("_scale") and target[k].ndim == 0}

    def is_new(k: str) -> bool:
        return k in blend or k in head or any(k.startswith(a) for a in attn)

    bad_shape = [m.split(" ")[0] for m in mismatched]
    fatal_missing = [k for k in missing if not is_new(k)]
    fatal_shape = [m for m, k in zip(mismatched, bad_shape) if k not in head]
    if fatal_missing or fatal_shape or (unexpected and not allow_dropped):
        why = []
        for title, items in (("missing", fatal_missing), ("unexpected", unexpected if not allow_dropped else []),
                             ("shape differs", fatal_shape)):
            if items:
                why.append(f"{len(items)} {title}: {_short(items, 4)}")
        raise ExciteError(f"{entry.label} weights ({path.name}) do not fit {type(model).__name__}: " + "; ".join(why))
    head_state = "none" if not head else ("new" if any(k in head for k in bad_shape) or any(k in head for k in missing)
                                          else "loaded")
    skip = set(bad_shape) | set(unexpected)
    loadable = {k: v for k, v in state.items() if k not in skip}
    with torch.no_grad():
        model.load_state_dict(loadable, strict=False)
    new = [k for k in target if k not in loadable and not k.endswith("num_batches_tracked")]
    return PretrainedReport(entry.label, str(path), sorted(loadable, key=list(target).index), new, list(unexpected),
                            head_state)


def fit_attention(entry: WeightEntry, attention, attention_kwargs, attention_init):
    """The attention settings a model built for ``entry`` gets: the file's own attention unless the
    caller asked for other attention, which then starts as the identity (the pretrained function).

    Returns ``(attention, attention_kwargs, attention_init, allow_dropped)``.
    """
    if entry.attention is not None:
        if attention in (None, entry.attention):
            kwargs = attention_kwargs if attention_kwargs else dict(entry.attention_kwargs)
            return entry.attention, kwargs, attention_init, False
        raise ExciteError(f"{entry.label} weights include {entry.attention} attention; build with "
                          f"attention={entry.attention!r} (or leave it unset), or start from plain weights "
                          f"({', '.join(e.tag for e in list_weights(entry.model) if e.attention is None) or 'none listed'})")
    if attention is None:
        return None, attention_kwargs, attention_init, False
    if attention == "none":
        return attention, attention_kwargs, attention_init, True
    return attention, attention_kwargs, attention_init or "identity", True


def format_table(entries: list[WeightEntry] | None = None, *, registered: set | None = None) -> str:
    """The table as text: one row per file, with its source, attention, top-1, hash and licence."""
    entries = list_weights() if entries is None else entries
    head = ("model", "tag", "source", "attention", "top-1", "sha256", "licence", "")
    rows = []
    for e in entries:
        att = e.attention or "-"
        if e.attention_kwargs:
            att += " " + ",".join(f"{k}={v}".replace(" ", "") for k, v in e.attention_kwargs.items())
        sha = {"full": (e.sha256 or "")[:12] + "...", "prefix": f"{e.sha256} (prefix)", "none": "unpublished"}[e.hash_kind]
        lic = e.licence.split(" ")[0]
        note = "" if registered is None or e.model in registered else "(model not registered)"
        rows.append((e.model, e.tag, e.source, att, f"{e.top1:g}" if e.top1 is not None else "-", sha, lic, note))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r):
        return "  ".join(v.rjust(w) if i == 4 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(head), *map(line, rows)])
