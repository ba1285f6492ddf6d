"""The settings that every data set takes from its config group (conf/data/*.yaml), besides its own.

A data set's `__init__` names its own settings (those whose defaults are its own: `root`, `image_size`,
`name`, ...) and takes the rest as `**shared`, which becomes a `DataSettings`; `takes_data_settings` gives
the class the signature it really has, so that the command line's key checks (`s18exp/keys.py`) and `help()`
see every setting by name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class DataSettings:
    """Where the data is, the square size its images are resized to, its split and limits, downloads and cache.

    Validation is a `val_fraction` share of the official training set, chosen with `split_seed`, which also
    chooses the `limit_*` subsets (N items of a split; None: all of it): the same for every run, whatever its
    own seed. `download` allows fetching missing data; decoded tensors are cached in `cache_dir` when `cache`.
    """

    root: Path
    image_size: int
    name: str
    val_fraction: float = 0.1
    split_seed: int = 0
    limit_train: int | None = None
    limit_val: int | None = None
    limit_test: int | None = None
    download: bool = True
    cache: bool = True
    cache_dir: str | None = None

    @classmethod
    def from_config(cls, root: str, image_size: int, name: str, **shared: Any) -> DataSettings:
        """The settings as a config group gives them: `root` a string, maybe starting with ~; `shared` the
        fields after `name` (a TypeError names any other key)."""
        return cls(Path(root).expanduser(), image_size, name, **shared)

    @property
    def cache_folder(self) -> str | None:
        """Where decoded tensors are cached: `cache_dir`, or None (nothing cached) when `cache` is off."""
        return self.cache_dir if self.cache else None


def takes_data_settings(data_class: T) -> T:
    """`data_class` with the signature of its `__init__(self, <own settings>, **shared)` written out: its own
    parameters, then each `DataSettings` field that it does not name itself, as a keyword with its default."""
    parameters = list(inspect.signature(data_class.__init__).parameters.values())[1:]  # after self
    own = [p for p in parameters if p.kind is not p.VAR_KEYWORD]
    named = {p.name for p in own}
    shared = [
        inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=field.type)
        for field in fields(DataSettings) if field.name not in named
    ]
    data_class.__signature__ = inspect.Signature(own + shared)
    return data_class
