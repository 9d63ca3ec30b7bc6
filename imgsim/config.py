"""``to_dict``/``from_dict`` shared by the config dataclasses (JSON-ready, unknown keys refused)."""

from dataclasses import asdict, fields

from imgsim.errors import ConfigError


class DictConfig:
    """Mixin for dataclasses: ``to_dict()`` and ``from_dict(d)`` that names unknown keys."""

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        return cls(**d)


def is_int(value):
    """An integer that is not a bool (numpy integers count)."""
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name, value, least):
    """``ConfigError`` naming ``name`` unless ``value`` is an integer >= ``least``."""
    if not is_int(value) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")


def check_number(name, value, low, high):
    """``ConfigError`` naming ``name`` unless ``value`` is a finite number in [low, high]."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ConfigError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}")


def check_flag(name, value):
    """``ConfigError`` naming ``name`` unless ``value`` is True or False."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
