"""Command lines generated from settings dataclasses (in the manner of transformers' ``HfArgumentParser``).

A script's config is a frozen dataclass whose fields are sections (``env``, ``search``, ``student``,
``learner``, ``loop``, ...), each a dataclass of :func:`azgym.config.option` fields. Every field
becomes a flag (``--field-name`` unless the field names another) with its one-line doc and default
as ``--help``; booleans get ``--x/--no-x``; ``float | None`` accepts ``none``; tuples take a comma
list. :func:`parse_config` resolves, in order: the preset (``--preset``), the environment variables
of :data:`azgym.config.ENV_OVERRIDES` for fields not given as flags, then the flags. The whole
config is validated before it is returned; a bad value ends the script with one line naming the
flag (or the environment variable) and the rule, as argparse does for a malformed flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from azgym.config import ENV_OVERRIDES, ConfigError, env_override
from azgym.errors import UserError


@dataclass(frozen=True)
class Alias:
    """A flag that sets one field to a constant (``--use-legacy`` sets ``learner.loss`` to ``legacy``)."""

    flag: str
    target: str  # "section.field"
    value: Any
    help: str


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _converter(kind: Any) -> tuple[Callable[[str], Any] | None, str]:
    """A string -> value function for a field type, and a metavar."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        convert, metavar = _converter(inner)
        return (lambda text: None if text.lower() == "none" else convert(text)), f"{metavar}|none"
    if origin is tuple:
        return (lambda text: tuple(x.strip() for x in text.split(",") if x.strip())), "A,B,..."
    if kind is bool:
        return None, ""
    if kind in (int, float, str):
        return kind, kind.__name__.upper()
    raise TypeError(f"no command-line conversion for a setting of type {kind!r}")


def _first_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if (cls.__doc__ or "").strip() else ""


def _shown(value: Any) -> str:
    return ",".join(value) if isinstance(value, tuple) else repr(value) if value == "" else str(value)


class ConfigParser:
    """The argparse parser of a config class; see the module docs."""

    def __init__(
        self,
        config_cls: type,
        *,
        description: str = "",
        presets: dict[str, Callable[[], Any]] | None = None,
        default_preset: str | None = None,
        aliases: Sequence[Alias] = (),
    ):
        self.config_cls = config_cls
        self.presets = presets or {}
        self.default_preset = default_preset
        self.aliases = list(aliases)
        self.sections = [f.name for f in dataclasses.fields(config_cls)]
        self.flags: dict[str, str] = {}  # "section.field" -> its flag

    def build(self, base: Any) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=_first_line(self.config_cls), allow_abbrev=False)
        if self.presets:
            parser.add_argument(
                "--preset",
                choices=sorted(self.presets),
                default=self.default_preset,
                help=f"starting values of every setting (default: {self.default_preset})",
            )
        taken = {"--preset", "-h", "--help"}
        for section in self.sections:
            values = getattr(base, section)
            group = parser.add_argument_group(section, _first_line(type(values)))
            for f in dataclasses.fields(values):
                meta = f.metadata
                flag = meta.get("flag") or f"--{f.name.replace('_', '-')}"
                names = [flag, *meta.get("aliases", ())]
                clash = taken.intersection(names)
                if clash:
                    raise TypeError(f"{self.config_cls.__name__}: flag {sorted(clash)[0]} is defined twice")
                taken.update(names)
                dest = f"{section}.{f.name}"
                self.flags[dest] = flag
                value = getattr(values, f.name)
                variable = next((v for v, t in ENV_OVERRIDES.items() if t == (section, f.name)), None)
                text = meta.get("help") or f.name.replace("_", " ")
                default = f"default: {_shown(value)}" + (f"; env var {variable} overrides it" if variable else "")
                help_text = f"{text} ({default})".replace("%", "%%")  # argparse formats help with %
                kwargs: dict[str, Any] = dict(dest=dest, default=argparse.SUPPRESS, help=help_text)
                convert, metavar = _converter(_field_type(type(values), f.name))
                if convert is None:
                    kwargs["action"] = argparse.BooleanOptionalAction
                else:
                    kwargs.update(type=convert, metavar=metavar)
                    if meta.get("choices"):
                        kwargs.update(choices=meta["choices"], metavar=None)
                group.add_argument(*names, **kwargs)
        for alias in self.aliases:
            parser.add_argument(
                alias.flag,
                dest=alias.target,
                action="store_const",
                const=alias.value,
                default=argparse.SUPPRESS,
                help=alias.help,
            )
        return parser

    def parse(self, argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Any:
        environ = dict(os.environ if environ is None else environ)
        argv = list(argv) if argv is not None else None
        preset = self.default_preset
        if self.presets:
            early = argparse.ArgumentParser(add_help=False)
            early.add_argument("--preset", choices=sorted(self.presets), default=self.default_preset)
            preset = early.parse_known_args(argv)[0].preset
        base = self.presets[preset]() if self.presets else self.config_cls()
        parser = self.build(base)
        given = {k: v for k, v in vars(parser.parse_args(argv)).items() if k != "preset"}
        origin = {dest: self.flags.get(dest, dest) for dest in given}  # "section.field" -> where its value came from
        for variable, (section, name) in ENV_OVERRIDES.items():
            dest = f"{section}.{name}"
            if section in self.sections and dest not in given and variable in environ:
                try:
                    given[dest] = env_override(variable, 0, environ)
                except ConfigError as err:
                    parser.error(err.problems[0][1])
                origin[dest] = f"{variable}={environ[variable]} (sets {self.flags[dest]})"
        try:
            return self.assemble(base, given)
        except ConfigError as err:
            parser.error("; ".join(self.explain(err, origin)))

    def assemble(self, base: Any, values: dict[str, Any]) -> Any:
        """``base`` with ``values`` ({"section.field": value}) applied, every section validated."""
        sections, problems = {}, []
        for section in self.sections:
            current = getattr(base, section)
            changes = {k.split(".", 1)[1]: v for k, v in values.items() if k.split(".", 1)[0] == section}
            try:
                sections[section] = dataclasses.replace(current, **changes)
            except ValueError as err:  # ConfigError, or a section's own error with the same ``problems`` list
                found = getattr(err, "problems", None) or [("", str(err))]
                problems += [(f"{section}.{name}" if name else section, why) for name, why in found]
        if problems:
            raise ConfigError(problems, self.config_cls.__name__)
        return self.config_cls(**sections)

    def explain(self, err: ConfigError, origin: dict[str, str]) -> list[str]:
        lines = []
        for name, why in err.problems:
            lines.append(f"{origin.get(name) or self.flags.get(name, name)}: {why}")
        return lines


def parse_config(
    config_cls: type, argv: Sequence[str] | None = None, *, environ: dict[str, str] | None = None, **kwargs
) -> Any:
    """Parse ``argv`` (default ``sys.argv[1:]``) and ``environ`` (default ``os.environ``) into a
    validated ``config_cls``; ``kwargs`` go to :class:`ConfigParser`."""
    return ConfigParser(config_cls, **kwargs).parse(argv, environ)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as nested plain values (what ``config.json`` holds)."""
    return dataclasses.asdict(config)


def run_script(script: str, main: Callable[[], int | None]) -> int:
    """Run a script's ``main``; a :class:`~azgym.errors.UserError` ends it in one line on stderr,
    ``<script>: error: <problem and fix>``, exit code 2 (``AZGYM_DEBUG=1``: the traceback instead)."""
    try:
        return int(main() or 0)
    except UserError as err:
        if os.environ.get("AZGYM_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        sys.stderr.write(f"{script}: error: {message} (AZGYM_DEBUG=1 shows where)\n")
        return 2
