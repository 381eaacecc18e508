"""Fuzzed readers: every file excite reads is untrusted input.

Property-based (Hypothesis) over the model-file reader, the study TOML loader, the ``--config`` loader
and the checkpoint key mapper, with random bytes, truncated files, valid files with one field changed,
huge declared sizes and deep JSON. Each must answer with an ``ExciteError`` (one line in the CLI) or
succeed: never another exception, never code run (the mutated references point at a file whose import
would create a marker), never more memory than a bound. A few command-line cases check the one line
and exit 2 in a fresh process. Bounded in time: a fixed number of examples each, no deadline.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

import excite
from excite.core.errors import ExciteError

# 40 fixed examples per property in the suite (seconds each); EXCITE_FUZZ_EXAMPLES=N runs N random ones.
_DEEPER = int(os.environ.get("EXCITE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_DEEPER or 40, deadline=None, derandomize=not _DEEPER,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Reading any input here must not grow the process by more than this (the files are at most ~1 MB).
MEMORY_BOUND_MB = 512


class Lab(dict):
    """The fixture's files; a short repr, so a failing example prints readably."""

    def __repr__(self) -> str:
        return f"Lab({self['dir']})"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A folder with the marker's would-be code (``evil.py``) and a valid training checkpoint's bytes."""
    d = tmp_path_factory.mktemp("fuzz")
    marker = d / "PWNED"
    (d / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                               "def Net(**kw):\n    raise SystemExit('code ran')\n")
    model = excite.create_model("resnet20", num_classes=4)
    state = {"optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
             "rng": torch.get_rng_state(), "step": 3, "best": 50.0, "history": [{"epoch": 1, "top1": 50.0}]}
    path = excite.save_model(model, d / "valid.safetensors", training={"dataset": "digits"},
                             metrics={"top1": 50.0}, train_state=state)
    return Lab(dir=d, marker=marker, valid=path.read_bytes())


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


@pytest.fixture(autouse=True)
def bounded_memory_and_no_code(lab):
    """Around each property: the process's peak memory grows by less than the bound, the marker never appears."""
    before = _peak_mb()
    yield
    assert _peak_mb() - before < MEMORY_BOUND_MB
    assert not lab["marker"].exists(), "code named in a file ran"


def _read(path: Path, *, build: bool = True) -> None:
    """Read (and, when the file describes one, build on the meta device) the model ``path`` holds."""
    from excite.files.modelfile import read_model_file

    try:
        mf = read_model_file(path)
        if build and mf.spec is not None:
            excite.load_model(path, device="meta")
    except ExciteError as e:
        assert "\n" not in str(e) and str(e), repr(e)


def _split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


# --- the model-file reader ---------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(lab, data):
    path = lab["dir"] / "random.safetensors"
    path.write_bytes(data)
    _read(path)


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_files(lab, cut):
    path = lab["dir"] / "truncated.safetensors"
    path.write_bytes(lab["valid"][:int(len(lab["valid"]) * cut)])
    _read(path)


@FUZZ
@given(where=st.integers(0, 4095), value=st.integers(0, 255))
def test_one_byte_changed_in_the_header(lab, where, value):
    data = bytearray(lab["valid"])
    where = where % (8 + int.from_bytes(data[:8], "little"))
    data[where] = value
    path = lab["dir"] / "flipped.safetensors"
    path.write_bytes(bytes(data))
    _read(path)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
CODE_REFS = st.sampled_from(["evil.py:Net", "{dir}/evil.py:Net", "evil:Net", "subprocess:run", "os:system",
                             "builtins:eval", "timm:resnet50", "torchvision:resnet18", "resnet20", "no_such_model"])
SPEC_FIELDS = ("arch", "attention", "attention_kwargs", "options", "num_classes", "in_chans", "input_size",
               "attach", "optimized", "attention_init", "out_indices", "spec_version", "unknown_field")


@FUZZ
@given(field=st.sampled_from(SPEC_FIELDS), value=JSON, ref=CODE_REFS, use_ref=st.booleans())
def test_one_field_of_the_description_changed(lab, field, value, ref, use_ref):
    header, body = _split(lab["valid"])
    spec = json.loads(header["__metadata__"]["excite_model"])
    ref = ref.format(dir=lab["dir"])
    if field == "arch" and use_ref:
        value = ref
    elif field == "attach" and use_ref:
        value = [{"attention": ref, "where": "residual"}]
    elif field == "options" and use_ref:
        value = {"args": ["touch", str(lab["marker"])], "checkpoint": ref}
    spec[field] = value
    header["__metadata__"]["excite_model"] = json.dumps(spec)
    path = lab["dir"] / "mutated.safetensors"
    path.write_bytes(_join(header, body))
    _read(path)


@FUZZ
@given(field=st.sampled_from(["excite_training", "excite_metrics", "excite_provenance", "excite_train_state",
                              "excite_version", "excite_format", "excite_model"]),
       value=JSON, depth=st.sampled_from([0, 0, 50, 5000, 200_000]))
def test_header_fields_changed_and_deep_json(lab, field, value, depth):
    header, body = _split(lab["valid"])
    text = "[" * depth + "]" * depth if depth else json.dumps(value)
    header["__metadata__"][field] = text
    path = lab["dir"] / "fields.safetensors"
    path.write_bytes(_join(header, body))
    _read(path)


@FUZZ
@given(dims=st.lists(st.integers(0, 2**62), min_size=1, max_size=4), end=st.integers(0, 2**63),
       length=st.sampled_from([None, 0, 7, 2**31, 2**63]))
def test_huge_declared_sizes(lab, dims, end, length):
    header = {"w": {"dtype": "F32", "shape": dims, "data_offsets": [0, end]}}
    data = _join(header, b"\0" * 64)
    if length is not None:
        data = length.to_bytes(8, "little") + data[8:]
    path = lab["dir"] / "huge.safetensors"
    path.write_bytes(data)
    _read(path)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=512), suffix=st.sampled_from([".pth", ".pt", ".bin", ".ckpt"]))
def test_random_pickled_checkpoints(lab, data, suffix):
    path = lab["dir"] / f"random{suffix}"
    path.write_bytes(b"\x80\x04" + data)
    _read(path)


# --- the study TOML loader and the --config loader -------------------------------------------------------

BASE_STUDY = 'models = ["resnet20"]\nseeds = 1\ndataset = "digits"\n[[variant]]\nlabel = "a"\nattention = "eca"\n' \
             'attention_kwargs = { k_size = 3 }\n'
TOML_VALUES = st.sampled_from(['"evil.py:Net"', '["{dir}/evil.py:Net"]', '"subprocess:run"', "[" * 5000,
                               "{ pretrained = true }", "{ checkpoint = \"/etc/passwd\" }", "-1", "1e999", "nan",
                               "1979-05-27T07:32:00Z", '"' + "x" * 10000 + '"', "[[1, [2, [3]]]]", "true", '""'])
STUDY_KEYS = st.sampled_from(["models", "seeds", "dataset", "recipe", "baseline", "metric", "name", "title",
                              "trainer", "variant"])
VARIANT_KEYS = st.sampled_from(["label", "attention", "attention_kwargs", "options", "published"])


def _load_study(path: Path) -> None:
    from excite.study.spec import load_study

    try:
        load_study(path)
    except ExciteError as e:
        assert "\n" not in str(e), repr(e)


@FUZZ
@given(text=st.text(max_size=400))
def test_study_random_text(lab, text):
    path = lab["dir"] / "random.toml"
    path.write_text(text)
    _load_study(path)


@FUZZ
@given(key=STUDY_KEYS, variant_key=VARIANT_KEYS, value=TOML_VALUES, in_variant=st.booleans())
def test_study_one_value_changed(lab, key, variant_key, value, in_variant):
    value = value.replace("{dir}", str(lab["dir"]))
    head, _, tail = BASE_STUDY.partition("[[variant]]\n")
    if in_variant:
        text = f"{head}[[variant]]\n{tail}{variant_key} = {value}\n"
    else:
        head = "\n".join(line for line in head.splitlines() if not line.startswith(f"{key} ="))
        text = f"{key} = {value}\n{head}\n[[variant]]\n{tail}"
    path = lab["dir"] / "mutated.toml"
    path.write_text(text)
    _load_study(path)


@FUZZ
@given(data=st.binary(max_size=300))
def test_study_random_bytes(lab, data):
    path = lab["dir"] / "bytes.toml"
    path.write_bytes(data)
    _load_study(path)


CONFIG_KEYS = st.sampled_from(["model", "attention", "attention_kwargs", "options", "epochs", "lr", "momentum",
                               "batch_size", "dataset", "data", "out", "resume", "overwrite", "pretrained",
                               "freeze_backbone_epochs", "milestones", "threads", "device", "recipe", "no_such_key"])


def _load_config(path: Path) -> None:
    from excite.cli.train import _read_config
    from excite.core.trust import check_config
    from excite.training.engine import make_config

    try:
        values = _read_config(str(path))
        check_config(values, dict(values), path)
        make_config(values)
    except ExciteError as e:
        assert "\n" not in str(e), repr(e)


@FUZZ
@given(pairs=st.lists(st.tuples(CONFIG_KEYS, TOML_VALUES), max_size=4, unique_by=lambda kv: kv[0]))
def test_config_values(lab, pairs):
    path = lab["dir"] / "config.toml"
    path.write_text("".join(f"{k} = {v.replace('{dir}', str(lab['dir']))}\n" for k, v in pairs))
    _load_config(path)


@FUZZ
@given(data=st.binary(max_size=300))
def test_config_random_bytes(lab, data):
    path = lab["dir"] / "bytes-config.toml"
    path.write_bytes(data)
    _load_config(path)


# --- the checkpoint key mapper -----------------------------------------------------------------------------

KEY_PARTS = st.sampled_from(["conv1", "bn1", "layer1", "0", "1", "se", "fc", "eca", "conv", "weight", "bias",
                             "running_mean", "module", "state_dict", "features", "classifier", "downsample", ""])
KEYS = st.lists(KEY_PARTS, min_size=1, max_size=5).map(".".join)


@FUZZ
@given(state=st.dictionaries(KEYS, st.lists(st.integers(0, 4), max_size=3), max_size=12),
       source=st.sampled_from(["auto", "excite", "torchvision", "timm", "eca-official", "cifar-resnet"]),
       strict=st.booleans())
def test_checkpoint_key_mapper(lab, state, source, strict):
    from safetensors.torch import save_file

    tensors = {k: torch.zeros(shape) for k, shape in state.items()}
    path = lab["dir"] / "other.safetensors"
    save_file(tensors, str(path))
    model = excite.create_model("resnet20", num_classes=4)
    try:
        excite.load_checkpoint(model, path, source=source, strict=strict)
    except ExciteError as e:
        assert str(e)


# --- the command line: one line, exit 2 --------------------------------------------------------------------

def test_cli_answers_bad_model_files_in_one_line(lab, tmp_path):
    header, body = _split(lab["valid"])
    header["__metadata__"]["excite_model"] = "[" * 100_000
    cases = {"random.safetensors": bytes(range(256)) * 3, "truncated.safetensors": lab["valid"][:5000],
             "deep.safetensors": _join(header, body),
             "huge.safetensors": (2**63).to_bytes(8, "little") + b"{}"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    # one fresh process reads every file, through the CLI's own entry point
    script = ("import sys\nfrom excite.cli import main\n"
              "codes = [main(['profile', n]) for n in sys.argv[1:]]\nprint(codes)\n")
    r = subprocess.run([sys.executable, "-c", script, *cases], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and r.stdout.strip() == str([2] * len(cases)), r.stderr
    assert len(lines) == len(cases) and all(ln.startswith("excite: error: ") for ln in lines), r.stderr
    r = subprocess.run([sys.executable, "-m", "excite", "eval", "deep.safetensors"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nested too deeply" in r.stderr, r.stderr
