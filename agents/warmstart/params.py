"""Hyper-parameter files: what ``hpo.py`` writes and ``sft.py --params`` reads.

The file is a JSON object, either ``{"params": {name: value, ...}, ...}`` (hpo.py's, with the study's
record beside the parameters) or a flat ``{name: value}``. The names are :data:`PARAMS`, each the field
of one config section. A bad file is a :class:`ParamsError` whose one line says what is wrong and how to
fix it, raised before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from pathlib import Path
from typing import Any

from azgym.errors import UserError

# parameter name -> the config section whose field it sets (the sections of sft.py's and hpo.py's configs)
PARAMS: dict[str, str] = {
    "learning_rate": "sft",
    "batch_size": "sft",
    "micro_batch_size": "sft",
    "weight_decay": "sft",
    "warmup_ratio": "sft",
    "lora_r": "student",
    "lora_alpha": "student",
    "lora_dropout": "student",
}


class ParamsError(UserError, ValueError):
    """A hyper-parameter file that cannot be used; the message names the problem and the fix."""


def read_params(path: str | Path) -> dict[str, Any]:
    """The parameters in the JSON file at ``path``, checked by name and type (values are checked by
    :func:`apply_params`, when they meet the config)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} does not exist; pass the best_params.json that hpo.py wrote (see its last lines)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ParamsError(f"{path} is not valid JSON ({err}); pass the best_params.json that hpo.py wrote") from None
    params = data.get("params", data) if isinstance(data, dict) else data
    if not isinstance(params, dict) or not params:
        raise ParamsError(
            f'{path} holds no parameters; expected {{"params": {{"learning_rate": 0.0002, ...}}}} '
            'or a flat {"learning_rate": 0.0002, ...}'
        )
    for name, value in params.items():
        if name not in PARAMS:
            close = difflib.get_close_matches(name, PARAMS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ParamsError(f"{path}: unknown parameter {name!r}; {hint}known: {', '.join(PARAMS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{path}: parameter {name!r} must be a number, got {value!r}")
    return dict(params)


def apply_params(config: Any, params: dict[str, Any], source: str = "params") -> Any:
    """``config`` (a dataclass of sections, e.g. ``student`` and ``sft``) with ``params`` set; a value a
    section rejects (e.g. a negative learning rate) is a :class:`ParamsError` naming ``source``. A batch size
    given without a micro-batch size lowers the micro-batch size to a divisor of it (their gcd)."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        section = getattr(config, PARAMS[name])
        kind = type(getattr(section, name))
        if kind is int and float(value) != int(value):
            raise ParamsError(f"{source}: parameter {name!r} must be a whole number, got {value!r}")
        sections.setdefault(PARAMS[name], {})[name] = kind(value)
    sft = sections.get("sft", {})
    if "batch_size" in sft and "micro_batch_size" not in sft:  # the forward-pass size follows the batch size down
        sft["micro_batch_size"] = math.gcd(config.sft.micro_batch_size, sft["batch_size"]) or 1
    try:
        return dataclasses.replace(
            config,
            **{name: dataclasses.replace(getattr(config, name), **changes) for name, changes in sections.items()},
        )
    except ValueError as err:
        raise ParamsError(f"{source}: {err}") from None
