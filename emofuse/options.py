"""One declaration per option: the ``*Config`` dataclasses of ``pipelines/`` are the source of
every stage option; this module derives argparse options, YAML configuration files and spec-row
checks from them.

A field declares its command-line side in its metadata with :func:`opt`::

    epochs: int = opt(100, help="maximum epochs")
    norm: str | None = opt(None, choices=NORMS, help="feature standardisation …")
    text: bool | None = opt(None, negatable="speech only", help="add the text stream (T)")

- the flag is ``--`` + the field name with ``-`` for ``_`` unless ``flag=`` says otherwise;
- the argparse type and the type check of configuration files come from the field's annotation
  (``int``, ``float``, ``str``, ``bool``, ``X | None``, ``tuple[str, ...]``);
- ``bool`` fields are ``store_true`` switches; ``negatable=HELP`` (with a ``None`` default) makes a
  ``--x/--no-x`` pair whose ``--no-x`` has that help;
- ``tuple[str, ...]`` fields are comma lists on the command line (``--folds 1,2``), unless
  ``action="append"`` (a repeatable option, as ``--cluster-option``);
- ``none=True``: the command-line value ``none`` (or empty) means ``None``;
- ``cli=False``: not a command-line option (Python and files only); say so in the help;
- ``required=``: overrides "required when the field has no default".

Nothing here knows a stage: ``emofuse/cli.py`` calls :func:`add_options` and
:func:`config_from_args`; ``pipelines/ablate.py`` and ``--config`` call :func:`build`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any, Iterable, Mapping

import yaml

from .errors import EmofuseError

_OPT_KEYS = ("help", "choices", "flag", "metavar", "negatable", "none", "cli", "required", "action")


def opt(default: Any = dataclasses.MISSING, *, help: str | None = None, choices: Iterable[str] | None = None,
        flag: str | None = None, metavar: str | None = None, negatable: str | None = None, none: bool = False,
        cli: bool = True, required: bool | None = None, action: str | None = None,
        default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its command-line declaration (see the module docstring)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag,
            "metavar": metavar, "negatable": negatable, "none": none, "cli": cli, "required": required,
            "action": action}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# -- types -----------------------------------------------------------------------------------------
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(tp) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, ``(tp, False)`` otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_str_tuple(tp) -> bool:
    return typing.get_origin(tp) is tuple and typing.get_args(tp) in ((str, ...),)


def describe_type(tp) -> str:
    """What a value of type ``tp`` is, in words: ``an integer``, ``a number or none`` …"""
    base, optional = _split_optional(tp)
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(base)
    if words is None:
        words = "a list of strings (or one comma list)" if _is_str_tuple(base) else \
            "a mapping" if typing.get_origin(base) is dict or base is dict else getattr(base, "__name__", str(base))
    return words + (" or null" if optional else "")


def _found(v) -> str:
    kind = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(v), type(v).__name__)
    return f"{v!r} ({kind})"


class _Mismatch(Exception):
    pass


def check_value(tp, v):
    """``v`` checked against the annotation ``tp`` and brought to the field's form: a list or a
    comma string for ``tuple[str, ...]`` becomes a tuple of strings; a YAML 1.1 exponent written
    without a dot (``1e-3``, read as a string) becomes a float, and so does an int given for a float
    (one run key for ``lr: 1`` and ``lr: 1.0``). Anything else that does not have the type raises
    ``_Mismatch``; other values that have it are returned unchanged."""
    base, optional = _split_optional(tp)
    if v is None:
        if optional:
            return None
        raise _Mismatch
    if base is bool:
        if isinstance(v, bool):
            return v
    elif base is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif base is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)   # one spelling: ``lr: 1`` (YAML's int) is the run of ``--lr 1`` and ``lr: 1.0``
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
    elif base is str:
        if isinstance(v, str):
            return v
    elif _is_str_tuple(base):
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        if isinstance(v, (list, tuple)) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            return tuple(str(x) for x in v)
    elif typing.get_origin(base) is dict or base is dict:
        if isinstance(v, dict):
            return v
    else:
        return v
    raise _Mismatch


def check_field(cls, name: str, v, where: str, what: str = "key"):
    """``v`` checked against field ``name`` of ``cls`` (see ``check_value``), else one sentence:
    ``{where}: {what} 'epochs' must be an integer, found 'ten' (a string)``."""
    tp = _hints(cls)[name]
    try:
        return check_value(tp, v)
    except _Mismatch:
        raise EmofuseError(f"{where}: {what} {name!r} must be {describe_type(tp)}, found {_found(v)}") from None


def _spellings(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """{field name: the key as written} of ``values`` (``audio-layers`` → ``audio_layers``); both
    spellings of one option are refused: which one was meant cannot be known."""
    spelt: dict[str, Any] = {}
    for k in values:
        name = str(k).replace("-", "_")
        if name in spelt:
            raise EmofuseError(f"{where}: both {spelt[name]!r} and {k!r} are given, one option spelt two ways; "
                               "keep one")
        spelt[name] = k
    return spelt


def underscored(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``values`` keyed by field names: an option as typed (``audio-layers``) or as its field
    (``audio_layers``), as train-head's options, ``--config`` files and spec rows take them."""
    spelt = _spellings(values, where)
    return {name: values[k] for name, k in spelt.items()}


def build(cls, values: Mapping[str, Any], where: str, *, allowed: Iterable[str] | None = None,
          fixed: Mapping[str, Any] | None = None, what: str = "key"):
    """``cls(**fixed, **values)`` with every key known and every value of its field's type, else one
    sentence: ``{where}: {what} 'epochs' must be an integer, found 'ten' (a string)``. Keys may be
    written with ``-`` or ``_``. ``allowed`` limits the keys (default: every field not in ``fixed``).
    The config's own checks (``__post_init__``) raise their sentences with ``where`` in front."""
    names = [f.name for f in dataclasses.fields(cls)]
    allowed = set(allowed if allowed is not None else names) - set(fixed or ())
    kw = {}
    for name, key in _spellings(values, where).items():
        if name not in allowed:
            raise EmofuseError(f"{where}: unknown {what} {key!r}; the known ones are {', '.join(sorted(allowed))}")
        kw[name] = check_field(cls, name, values[key], where, what)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kw and f.name not in (fixed or {})
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise EmofuseError(f"{where}: needs {', '.join(repr(m) for m in missing)}")
    try:
        return cls(**{**(fixed or {}), **kw})
    except EmofuseError as e:
        raise EmofuseError(f"{where}: {e}") from None


# -- argparse --------------------------------------------------------------------------------------
def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields that are command-line options."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def add_options(ap: argparse.ArgumentParser, cls, *, only: Iterable[str] | None = None,
                skip: Iterable[str] = ()) -> None:
    """Add ``cls``'s command-line fields to ``ap`` in field order (``only``: these, in field order)."""
    hints = _hints(cls)
    only = set(only) if only is not None else None
    for f in cli_fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        m = f.metadata
        base, optional = _split_optional(hints[f.name])
        default = None if f.default is dataclasses.MISSING else f.default
        required = m.get("required")
        if required is None:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kw: dict[str, Any] = {"dest": f.name, "help": m.get("help")}
        if m.get("metavar"):
            kw["metavar"] = m["metavar"]
        if base is bool:
            if m.get("negatable"):
                g = ap.add_mutually_exclusive_group()
                g.add_argument(flag_of(f), action="store_true", default=default, **kw)
                g.add_argument("--no-" + flag_of(f)[2:], dest=f.name, action="store_false", help=m["negatable"])
            else:
                ap.add_argument(flag_of(f), action="store_true", **kw)
            continue
        if required:
            kw["required"] = True
        if m.get("choices"):
            kw["choices"] = list(m["choices"])
        if _is_str_tuple(base):
            if m.get("action") == "append":
                kw["action"] = "append"
            default = ",".join(default) if default else None   # as it is typed: a comma list
        elif base in (int, float):
            kw["type"] = base
        ap.add_argument(flag_of(f), default=default, **kw)


def cli_value(cls, name: str, v):
    """A parsed command-line value in the field's form: comma lists → tuples, ``none`` → None."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    base, _ = _split_optional(_hints(cls)[name])
    if f.metadata.get("none") and v in ("none", ""):
        return None
    if _is_str_tuple(base):
        if v is None:
            return f.default if f.default is not dataclasses.MISSING else None
        if isinstance(v, (list, tuple)):
            return tuple(v)
        return tuple(p.strip() for p in v.split(","))
    return v


def config_from_args(cls, args: argparse.Namespace, **extra):
    """``cls`` from the parsed options of its command-line fields (``extra``: the others)."""
    kw = {f.name: cli_value(cls, f.name, getattr(args, f.name)) for f in cli_fields(cls) if hasattr(args, f.name)}
    return cls(**{**kw, **extra})


# -- YAML configuration files ------------------------------------------------------------------------
def add_config_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", metavar="YAML",
                    help="read options from this YAML file (field names, with - or _); options given on the command "
                         "line override the file's (default: none)")
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved configuration as YAML (a file --config accepts) and exit")


def read_config_file(cls, path: str, *, skip: Iterable[str] = ()) -> dict:
    """The options of a YAML configuration file, keys as field names, every value type-checked
    (one sentence naming the file, the key, what was found and what is expected)."""
    if not os.path.isfile(path):
        raise EmofuseError(f"--config {path}: no such file")
    with open(path) as f:
        try:
            d = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise EmofuseError(f"--config {path} is not valid YAML: {e}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise EmofuseError(f"--config {path}: expected a mapping of option names to values, found {_found(d)}")
    allowed = {f.name for f in cli_fields(cls)} - set(skip)
    out = {}
    for name, key in _spellings(d, f"--config {path}").items():
        if name not in allowed:
            raise EmofuseError(f"--config {path}: unknown option {key!r}; the known ones are "
                               f"{', '.join(sorted(allowed))}")
        out[name] = check_field(cls, name, d[key], f"--config {path}", "option")
    return out


def parse_with_config(ap: argparse.ArgumentParser, cls, argv, *, skip: Iterable[str] = ()) -> argparse.Namespace:
    """``ap.parse_args(argv)`` where a ``--config FILE`` supplies the defaults: the file's values
    replace the dataclass defaults, options on the command line replace the file's."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = read_config_file(cls, known.config, skip=skip)
        for a in ap._actions:
            if a.dest in values:
                a.required = False
        ap.set_defaults(**values)
    return ap.parse_args(argv)


def config_yaml(cfg, notes: Mapping[str, Any] | None = None, skip: Iterable[str] = ()) -> str:
    """``cfg`` as YAML, every field written (defaults filled in), in field order: a file that
    ``--config`` reads back to the same configuration. ``notes``: a comment per field (e.g. what a
    ``null`` resolves to)."""
    lines = []
    for f in dataclasses.fields(cfg):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        v = getattr(cfg, f.name)
        v = list(v) if isinstance(v, tuple) else v
        text = yaml.safe_dump({f.name: v}, default_flow_style=True, width=10_000).strip()
        text = text[1:-1] if text.startswith("{") else text
        note = (notes or {}).get(f.name)
        lines.append(text + (f"   # {note}" if note is not None else ""))
    return "\n".join(lines) + "\n"
