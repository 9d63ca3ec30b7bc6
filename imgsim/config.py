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
