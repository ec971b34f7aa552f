"""Settings from environment variables, mirrored by command-line flags, declared once.

A program declares its settings as a frozen dataclass whose fields are made with ``setting()``:
the variable, the default, the parser and the help text live in one place, and ``--help``, the
loader and the generated docs read them from there. A flag wins over its variable, the variable
over the default. An invalid value stops start-up with one line that names the variable (or the
flag) and says what was expected; parsers raise ``ValueError`` with that expectation.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
Parser = Callable[[str], Any]


class SettingsError(ValueError):
    """One invalid setting; the message is the whole line the user sees."""


def setting(env: str, default: Any, parse: Parser, help: str) -> Any:
    """A dataclass field read from ``env`` (and from the flag named after the field)."""
    metadata = {"env": env, "parse": parse, "help": help}
    if getattr(type(default), "__hash__", None) is None:  # dicts and lists: one fresh copy per instance
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that are settings."""
    return [f for f in dataclasses.fields(cls) if "env" in f.metadata]


def flag(f: dataclasses.Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    assert f.default_factory is not dataclasses.MISSING
    return f.default_factory()


def shown(value: Any) -> str:
    """A default as the user would type it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None or value == "" else str(value)


def build_parser(cls: type[Any], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Every flag mirrors the environment variable shown; a flag wins over its variable.",
    )
    for f in fields(cls):
        meta = f.metadata
        kind = (meta["parse"].__doc__ or "").strip()
        detail = f"{kind}; default: {shown(default_of(f))}" if kind else f"default: {shown(default_of(f))}"
        # default=None: values are resolved in load(), so the environment (a token) never shows in --help.
        argument = parser.add_argument(
            flag(f),
            dest=f.name,
            default=None,
            metavar=meta["env"],
            help=f"{meta['help']} [{detail}]".replace("%", "%%"),
        )
        if meta["parse"] is boolean:  # a yes/no setting's flag may stand alone: `--dev` means `--dev 1`
            argument.nargs, argument.const = "?", "1"
    return parser


def load(
    cls: type[T],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    prog: str,
    description: str,
) -> T:
    """An instance of ``cls`` from flags and environment; SettingsError on the first invalid value."""
    args = build_parser(cls, prog, description).parse_args(argv)
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw, source = getattr(args, f.name), flag(f)
        if raw is None:
            raw, source = environ.get(f.metadata["env"]), f.metadata["env"]
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise SettingsError(f"invalid {source}={raw!r}: {exc}") from None
    return cls(**values)


# Parsers. Each one's docstring is the kind of value --help shows; its ValueError says what was expected.


def integer(lo: int, hi: int) -> Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}")
        return value

    parse.__doc__ = f"an integer from {lo} to {hi}"
    return parse


def number(lo: float, hi: float, *, above: bool = False) -> Parser:
    """A number from ``lo`` (or, with ``above``, greater than ``lo``) to ``hi``."""
    lower = f"above {lo:g}" if above else f"from {lo:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not ((lo < value) if above else (lo <= value)) or not value <= hi:
            raise ValueError(f"expected a number {lower} to {hi:g}")
        return value

    parse.__doc__ = f"a number {lower} to {hi:g}"
    return parse


def boolean(raw: str) -> bool:
    """1/0, true/false, yes/no, on/off"""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def choice(*options: str) -> Parser:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return raw

    parse.__doc__ = "one of " + ", ".join(options)
    return parse


def text(raw: str) -> str:
    """text"""
    return raw.strip()


def optional_text(raw: str) -> str | None:
    """text; empty means none"""
    return raw.strip() or None


def csv(raw: str) -> tuple[str, ...]:
    """a comma-separated list"""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def host(raw: str) -> str:
    """an IP address or host name"""
    if not raw.strip():
        raise ValueError("expected an IP address or host name")
    return raw.strip()
