"""Bad inputs to models.py and the CLI: each raises our own ValueError/TypeError/
FileNotFoundError (or, for the CLI, one stderr line and exit code 2) naming the bad value.
No model is loaded: every case is rejected before loading. (To be merged into
tests/test_bad_inputs.py.)"""

from __future__ import annotations

import pytest
import torch

from icl_heads import cli, models

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not torch.backends.mps.is_available()


@pytest.fixture(autouse=True)
def _no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a bad input")

    for loader in ("_load_embedded", "_hf_from_gguf", "_load_cached", "convert_hf_model"):
        monkeypatch.setattr(models, loader, refuse)
    monkeypatch.setattr(models.HookedTransformer, "from_pretrained", refuse)


# --------------------------------------------------------------------------- resolve_device

DEVICE_CASES = [
    ("gpu", ValueError, "'gpu'"),
    ("tpu", ValueError, "'tpu'"),
    ("", ValueError, "''"),
    ("CPU", ValueError, "'CPU'"),
    ("cuda:x", ValueError, "'cuda:x'"),
    ("meta", ValueError, "'meta'"),
    (3.5, TypeError, "3.5"),
    (True, TypeError, "True"),
    (["cpu"], TypeError, "['cpu']"),
]
if NO_CUDA:
    DEVICE_CASES += [("cuda", ValueError, "'cuda'"), ("cuda:1", ValueError, "'cuda:1'"),
                     (torch.device("cuda"), ValueError, "cuda")]
if NO_MPS:
    DEVICE_CASES += [("mps", ValueError, "'mps'")]


@pytest.mark.parametrize("device, error, named", DEVICE_CASES, ids=repr)
def test_resolve_device_rejects(device, error, named):
    with pytest.raises(error) as info:
        models.resolve_device(device)
    assert named in str(info.value)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_unavailable_cuda_says_so_and_suggests_cpu():
    with pytest.raises(ValueError, match=r"CUDA is not available.*device='cpu'"):
        models.resolve_device("cuda")


# --------------------------------------------------------------------------- resolve_dtype


@pytest.mark.parametrize("dtype, error, named", [
    ("float8", ValueError, "'float8'"),
    ("int64", ValueError, "'int64'"),
    ("", ValueError, "''"),
    (torch.int64, ValueError, "torch.int64"),
    (torch.complex64, ValueError, "torch.complex64"),
    (None, TypeError, "None"),
    (16, TypeError, "16"),
    (float, TypeError, "float"),
], ids=repr)
def test_resolve_dtype_rejects_and_lists_the_choices(dtype, error, named):
    with pytest.raises(error) as info:
        models.resolve_dtype(dtype)
    message = str(info.value)
    assert named in message
    assert all(name in message for name in ("float32", "float16", "bfloat16", "float64"))


# --------------------------------------------------------------------------- load_model


def _a_file(tmp_path):
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"GGUF")
    return path


def _a_dir_without_config(tmp_path):
    path = tmp_path / "empty-model"
    path.mkdir()
    return path


LOAD_MODEL_CASES = [
    # (kwargs, or a function of tmp_path giving them; error; text the message must contain)
    ({"name": 3}, TypeError, "3"),
    ({"name": None}, TypeError, "None"),
    ({"name": ["default"]}, TypeError, "['default']"),
    ({"name": ""}, ValueError, "''"),
    ({"name": "   "}, ValueError, "'   '"),
    ({"name": "not-a-model"}, ValueError, "'not-a-model'"),
    ({"name": "./no/such/model-dir"}, FileNotFoundError, "'./no/such/model-dir'"),
    (lambda tmp: {"name": str(_a_file(tmp))}, ValueError, "weights.gguf"),
    (lambda tmp: {"name": str(_a_dir_without_config(tmp))}, ValueError, "empty-model"),
    ({"name": "default", "device": "gpu"}, ValueError, "'gpu'"),
    ({"name": "default", "device": 3.5}, TypeError, "3.5"),
    ({"name": "default", "dtype": "float8"}, ValueError, "'float8'"),
    ({"name": "default", "dtype": torch.int32}, ValueError, "torch.int32"),
    ({"name": "default", "dtype": None}, TypeError, "None"),
    ({"name": "default", "cache_dir": 3}, TypeError, "3"),
    ({"name": "default", "cache_dir": ""}, ValueError, "''"),
    (lambda tmp: {"name": "default", "cache_dir": _a_file(tmp)}, ValueError, "weights.gguf"),
    (lambda tmp: {"name": "default", "cache_dir": _a_file(tmp) / "sub"}, ValueError,
     "weights.gguf"),
]


@pytest.mark.parametrize("kwargs, error, named", LOAD_MODEL_CASES, ids=lambda v: repr(v)[:40])
def test_load_model_rejects(tmp_path, kwargs, error, named):
    if callable(kwargs):
        kwargs = kwargs(tmp_path)
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    with pytest.raises(error) as info:
        models.load_model(name, **kwargs)
    assert named in str(info.value)


def test_load_tokenizer_rejects_a_model_that_is_not_embedded():
    with pytest.raises(ValueError, match="'gpt2'.*embedded models"):
        models.load_tokenizer("gpt2")


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("argv, named", [
    (["quickstart", "--n", "0"], "'0'"),
    (["quickstart", "--n", "1.5"], "'1.5'"),
    (["quickstart", "--shots", "-2"], "'-2'"),
    (["quickstart", "--batch-size", "-1"], "'-1'"),
    (["quickstart", "--device", "gpu"], "'gpu'"),
    (["quickstart", "--device", "3.5"], "'3.5'"),
    (["quickstart", "--task", "no-such-task"], "'no-such-task'"),
    (["quickstart", "--task", "no/such/file.csv"], "no/such/file.csv"),
    (["quickstart", "--model", ""], "''"),
    (["quickstart", "--model", "not-a-model"], "'not-a-model'"),
    (["quickstart", "--model", "./no/such/model-dir"], "./no/such/model-dir"),
    (["quickstart", "--shots", "100000"], "100000"),
    (["quickstart", "--out", ""], "--out"),
    (["no-such-command"], "'no-such-command'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_cli_rejects_with_one_line_and_exit_code_2(capsys, argv, named):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("icl-heads: error: ") and err.count("\n") == 1, err
    assert named in err


def test_cli_out_under_a_file(capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert cli.main(["quickstart", "--out", str(blocker / "q.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err
