"""A config dataclass as flat, typed settings: the one declaration behind CLI options, YAML files and pipeline parameters.

Each field of a stage config is one setting, named by the field (``n_samples``); the fields of a nested
config (``LabelingConfig.sampling``, ``.generator``) are settings of the stage too, named by their own field
(``max_tokens``) with an optional prefix per nested field (synthesis: ``rewrite_``), or ``<nested>_<field>``
where that name is taken (evaluation: ``sampling_seed`` beside ``seed``). Like TRL's ``TrlParser``, the
command-line options, the YAML keys and the pipeline's parameter mappings are all read off the dataclass,
so a new field is a new option, key and parameter with its default and help.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medssr.errors import UserError, user_input


@dataclass(frozen=True)
class Setting:
    """One flat setting of a config class."""

    name: str
    path: tuple[str, ...]  # field names from the config class down to the scalar field
    annotation: Any
    default: Any
    help: str


def _optional_inner(annotation: Any) -> Any:
    """``X | None`` -> X (else the annotation itself)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _field_default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return dataclasses.MISSING


def settings_of(cls: type, prefixes: Mapping[str, str] | None = None) -> list[Setting]:
    """The flat settings of a config class, in field order (nested configs expanded in place)."""
    prefixes = prefixes or {}
    hints = typing.get_type_hints(cls)
    top = [spec.name for spec in dataclasses.fields(cls)]
    found: list[Setting] = []
    for spec in dataclasses.fields(cls):
        inner = _optional_inner(hints[spec.name])
        default = _field_default(spec)
        if not (isinstance(inner, type) and dataclasses.is_dataclass(inner)):
            found.append(Setting(spec.name, (spec.name,), hints[spec.name], default, spec.metadata.get("help", "")))
            continue
        instance = default if dataclasses.is_dataclass(default) else inner()
        inner_hints = typing.get_type_hints(inner)
        for leaf in dataclasses.fields(inner):
            name = prefixes.get(spec.name, "") + leaf.name
            if name in top or any(s.name == name for s in found):
                name = f"{spec.name}_{leaf.name}"
            help_text = f"{leaf.metadata.get('help', '')} ({spec.name}.{leaf.name})".strip()
            found.append(Setting(name, (spec.name, leaf.name), inner_hints[leaf.name], getattr(instance, leaf.name), help_text))
    return found


def plain(value: Any) -> Any:
    """A default as YAML/JSON data (tuples become lists)."""
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    return value


def defaults_of(cls: type, prefixes: Mapping[str, str] | None = None, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{setting: default}`` as plain data; fields without a default are ``None``."""
    return {
        s.name: None if s.default is dataclasses.MISSING else plain(s.default)
        for s in settings_of(cls, prefixes) if s.name not in skip
    }


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off."""
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """``value`` (text from a command line, or YAML data) as the field's type; a bad value names the setting."""
    if value is None:
        return None
    inner = _optional_inner(annotation)
    origin = typing.get_origin(inner)
    try:
        if origin is Literal:
            if value not in typing.get_args(inner):
                raise ValueError(f"must be one of {', '.join(map(str, typing.get_args(inner)))}")
            return value
        if inner is bool:
            return value if isinstance(value, bool) else parse_bool(value)
        if inner in (int, float):
            if isinstance(value, bool):
                raise ValueError("not a number")
            number = inner(value)
            if inner is int and isinstance(value, float) and number != value:
                raise ValueError("not a whole number")
            return number
        if inner is str:
            return str(value)
        if origin in (list, tuple):
            if isinstance(value, str):
                import yaml

                loaded = yaml.safe_load(value) if value.strip().startswith("[") else [p.strip() for p in value.split(",") if p.strip()]
                value = loaded
            (item_type, *_) = typing.get_args(inner) or (Any,)
            items = [item if item_type is Any else coerce(item, item_type, name) for item in value]
            return tuple(items) if origin is tuple else items
        if origin is dict or inner is dict:
            if isinstance(value, str):
                import yaml

                value = yaml.safe_load(value)
            if not isinstance(value, Mapping):
                raise ValueError("expected a mapping")
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {value!r} is not a valid {getattr(inner, '__name__', inner)} ({exc})") from None
    return value


def build(cls: type, values: Mapping[str, Any], prefixes: Mapping[str, str] | None = None, what: str = "") -> Any:
    """The config from flat settings (missing ones keep their defaults); an unknown setting is named."""
    settings = {s.name: s for s in settings_of(cls, prefixes)}
    unknown = sorted(set(values) - set(settings))
    if unknown:
        raise ValueError(f"{what or cls.__name__}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(settings)})")
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        setting = settings[name]
        typed = coerce(value, setting.annotation, name)
        if len(setting.path) == 1:
            top[name] = typed
        else:
            nested.setdefault(setting.path[0], {})[setting.path[1]] = typed
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        if spec.name not in nested:
            continue
        given, default = nested[spec.name], _field_default(spec)
        if dataclasses.is_dataclass(default):
            top[spec.name] = dataclasses.replace(default, **given)
        else:
            # An optional nested config (default None) exists only when one of its settings differs from its default.
            inner = _optional_inner(hints[spec.name])
            changed = {k: v for k, v in given.items() if v != plain(getattr(inner(), k))}
            top[spec.name] = inner(**given) if changed else None
    return cls(**top)


def flat_values(config: Any, prefixes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A config instance as flat settings (the inverse of :func:`build`)."""
    values: dict[str, Any] = {}
    for setting in settings_of(type(config), prefixes):
        value = config
        for part in setting.path:
            value = None if value is None else getattr(value, part)
        values[setting.name] = plain(value)
    return values


def read_yaml(path: str | os.PathLike, section: str = "") -> dict[str, Any]:
    """A YAML mapping of settings. A file of stage mappings (a pipeline preset) gives its ``section``."""
    import yaml

    from medssr.storage import is_s3, read_text

    if not is_s3(str(path)) and not Path(path).is_file():
        raise UserError(f"no such config file: {path}")
    data = yaml.safe_load(read_text(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of settings")
    if section and isinstance(data.get(section), dict):
        data = data[section]
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def flatten(cls: type, data: Mapping[str, Any], prefixes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``data`` with a nested config written as a mapping (``generator: {model: M}``) as its flat settings
    (``rewrite_model: M``); a key of that mapping that is no setting stays, as ``generator.modle``, to be named."""
    by_path = {s.path: s.name for s in settings_of(cls, prefixes)}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if (key,) not in by_path and isinstance(value, Mapping):
            flat.update({by_path.get((key, inner), f"{key}.{inner}"): item for inner, item in value.items()})
        else:
            flat[key] = value
    return flat


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    prefixes: Mapping[str, str] | None = None,
    skip: tuple[str, ...] = (),
    aliases: Mapping[str, tuple[str, ...]] | None = None,
    required: tuple[str, ...] = (),
    positional: Mapping[str, str] | None = None,
    negations: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """One ``--setting-name`` option per setting (default None: not given, so a ``--config`` file or the
    dataclass default decides). Lists take several values (``--benchmarks medqa nejm``). A boolean alone is
    true (``--dry-run``), takes a value (``--recovery false``), and ``--no-recovery`` (or a spelling in
    ``negations``) is false. ``positional`` maps settings given as positional arguments to their metavar; one
    with a default may be left out."""
    aliases, positional, negations = aliases or {}, positional or {}, negations or {}
    for setting in settings_of(cls, prefixes):
        if setting.name in skip:
            continue
        inner = _optional_inner(setting.annotation)
        origin = typing.get_origin(inner)
        option = f"--{setting.name.replace('_', '-')}"
        default = "" if setting.default is dataclasses.MISSING else f" (default: {plain(setting.default)})"
        kwargs: dict[str, Any] = {"default": None, "help": f"{setting.help}{default}".replace("%", "%%")}
        if origin in (list, tuple):
            (item_type, *_) = typing.get_args(inner) or (str,)
            kwargs.update(nargs="+", action="extend", type=_parser(item_type, setting.name))
        else:
            kwargs["type"] = _parser(setting.annotation, setting.name)
            if origin is Literal:
                kwargs["metavar"] = "{" + ",".join(map(str, typing.get_args(inner))) + "}"
            if inner is bool:
                kwargs.update(nargs="?", const=True, metavar="{true,false}")
        if setting.name in positional:
            kwargs["metavar"] = positional[setting.name]
            if setting.default is not dataclasses.MISSING:
                kwargs["nargs"] = "?"
            parser.add_argument(setting.name, **kwargs)
            continue
        if setting.name in required:
            kwargs["required"] = True
        parser.add_argument(*aliases.get(setting.name, ()), option, dest=setting.name, **kwargs)
        if inner is bool:
            parser.add_argument(*negations.get(setting.name, ()), f"--no-{option[2:]}", dest=setting.name, action="store_const",
                                const=False, default=None, help=f"Same as {option} false.")


def _parser(annotation: Any, name: str):
    def parse(text: str) -> Any:
        try:
            return coerce(text, annotation, name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(_optional_inner(annotation), "__name__", "value")
    return parse


def from_args(
    cls: type, args: argparse.Namespace, prefixes: Mapping[str, str] | None = None, section: str = "", **wired: Any
) -> Any:
    """The config from ``--config YAML`` (optional; a preset file gives its ``section``), the options given
    on the command line laid over it, and ``wired`` values laid over both. Every value is the user's, so a
    value the config refuses (its ``__post_init__``) is a UserError."""
    with user_input():
        values = flatten(cls, read_yaml(args.config, section), prefixes) if getattr(args, "config", None) else {}
        for setting in settings_of(cls, prefixes):
            given = getattr(args, setting.name, None)
            if given is not None:
                values[setting.name] = given
        values.update({k: v for k, v in wired.items() if v is not None})
        return build(cls, values, prefixes, what=str(getattr(args, "config", "") or cls.__name__))
