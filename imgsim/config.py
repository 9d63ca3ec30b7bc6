"""``DictConfig``: the mixin of the config dataclasses, and the checks their ``__post_init__`` share.

``to_dict``/``from_dict`` are JSON-ready and refuse unknown keys.
``DictConfig.__post_init__`` checks every field annotated ``int``, ``float``,
``str`` or ``bool`` against its annotation (``None`` only where it is the
default; a path object for a ``str`` field becomes its string), so a notebook,
a sweep file or the Python API gets the same one-line
:class:`~imgsim.errors.ConfigError` as the command line. A subclass with its
own ``__post_init__`` calls ``super().__post_init__()`` first, then its range
checks (:func:`check_range`, :func:`check_choice`).
"""

import math
import numbers
import os
from dataclasses import asdict, fields

from imgsim.errors import ConfigError

_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}


def _kind_of(annotation):
    """The scalar type a field annotation names (``int``, ``"int"``, ...), or None."""
    for kind in _KINDS:
        if annotation is kind or annotation == kind.__name__:
            return kind
    return None


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) \
        and type(value).__name__ != "bool_"


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and type(value).__name__ != "bool_"


def _matches(kind, value):
    if kind is int:
        return _is_integer(value)
    if kind is float:
        return _is_number(value)
    if kind is bool:
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    return isinstance(value, str)


class DictConfig:
    """Mixin for dataclasses: typed fields, ``to_dict()`` and ``from_dict(d)`` that names unknown keys."""

    def __post_init__(self):
        self.check_types()

    def check_types(self):
        """Raise :class:`ConfigError` for a scalar field that does not hold its annotated type."""
        for f in fields(self):
            kind = _kind_of(f.type)
            value = getattr(self, f.name)
            if kind is None or (value is None and f.default is None):
                continue
            if kind is str and isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, f.name, value)
            if not _matches(kind, value):
                optional = " or None" if f.default is None else ""
                raise ConfigError(f"{f.name} must be {_KINDS[kind]}{optional}, got {value!r}")
            if kind is float and not isinstance(value, float):
                setattr(self, f.name, float(value))
            elif kind is int and not isinstance(value, int):
                setattr(self, f.name, int(value))

    def validate(self):
        """Check the fields again (after a change to an attribute); returns ``self``."""
        self.__post_init__()
        return self

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping of settings, got {d!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(map(str, unknown))}")
        return cls(**d)


def check_range(name, value, low=None, high=None, *, integer=False, low_open=False,
                high_open=False):
    """Raise :class:`ConfigError` unless ``value`` is a finite number in the given range.

    Parameters
    ----------
    name : str
        The setting, as the message names it.
    value : object
    low, high : number or None
        Bounds (None: unbounded on that side).
    integer : bool
        Require an integer (``True``/``False`` are not integers).
    low_open, high_open : bool
        Exclude the bound itself.

    Returns
    -------
    The value, unchanged.
    """
    fmt = lambda v: str(v) if isinstance(v, int) else f"{v:g}"  # noqa: E731
    if low is not None and high is not None:
        want = f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
    elif low is not None:
        want = f"{'>' if low_open else '>='} {fmt(low)}"
    elif high is not None:
        want = f"{'<' if high_open else '<='} {fmt(high)}"
    else:
        want = ""
    kind = "an integer" if integer else "a finite number"
    ok = _is_integer(value) if integer else _is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(f"{name} must be {kind}{' ' + want if want else ''}, got {value!r}")
    return value


def check_choice(name, value, choices):
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if not isinstance(value, (str, int, float)) or value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
