"""``hr.Pipeline``: a pipeline described in YAML (or a dict) — sources, weights, steps, loader options.

::

    source:                                  # one source; or `sources:` (name: source) to mix them
      path: "s3://bucket/web/*.parquet"      # a path, glob, directory or list: what hr.open takes
      columns: [text]
      storage_options: {anon: true}          # any other hr.open option: format, errors, cache_dir, ...
    mix: {seed: 0, stop: first_exhausted}    # with `sources:`; each source has a `weight:`
    steps:                                   # Dataset methods, in order, with their options
      - shuffle: {seed: 42, buffer_size: 10000}
      - filter: {fn: "mypackage.filters:long_enough"}   # functions by import path "module:name"
      - tokenize: {tokenizer: tokenizer.json, column: text, add_eos: true}
      - pack: {seq_len: 2048}
      - batch: {size: 16, drop_last: true}
    loader: {num_workers: 4, prefetch: 8}    # hr.Loader options

Every key is checked: an unknown key, step or option, a wrong type or a function that cannot be
imported is a :class:`ConfigError` naming the file and the place (``steps[3].pack``) and listing what
is allowed.

>>> import headrace as hr, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
>>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(10)))
>>> p = hr.Pipeline.from_dict({"source": {"path": path}, "steps": [{"take": {"n": 4}}, {"batch": {"size": 2}}]})
>>> [b["id"].tolist() for b in p.loader()]
[[0, 1], [2, 3]]
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headrace.core.errors import HeadraceError
from headrace.loader import Loader
from headrace.pipeline import Dataset
from headrace.sources import mix
from headrace.sources import open as open_source

TOP_KEYS = ("source", "sources", "mix", "steps", "loader")
STEPS = ("shuffle", "map", "filter", "take", "skip", "repeat", "tokenize", "pack", "window", "chat", "mask",
         "decode_images", "augment", "batch", "shard")  # fmt: skip
FUNCTION_OPTIONS = ("fn",)  # step options naming a function by import path


class ConfigError(HeadraceError, ValueError):
    """A pipeline config that cannot be used: where, what is wrong, and what is allowed."""


@dataclass(frozen=True)
class Pipeline:
    """A pipeline from a config: the :class:`Dataset` and the loader options it names."""

    dataset: Dataset
    loader_options: dict[str, Any] = field(default_factory=dict)
    origin: str = "<config>"

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Pipeline:
        """Read a YAML file (needs PyYAML: ``pip install 'headrace[config]'``)."""
        try:
            import yaml
        except ImportError:
            raise ImportError("hr.Pipeline.from_yaml needs PyYAML: pip install 'headrace[config]'") from None
        where = os.fspath(path)
        try:
            with open(where, encoding="utf-8") as f:
                config = yaml.safe_load(f)
        except OSError as e:
            raise ConfigError(f"{where}: cannot read the config ({e})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None
        return cls.from_dict(config, origin=where)

    @classmethod
    def from_dict(cls, config: Any, origin: str = "<config>") -> Pipeline:
        """Build from a parsed config (the YAML's structure, as dicts and lists)."""
        c = _Checker(origin)
        c.mapping(config, "the config")
        c.known(config, TOP_KEYS, "the config")
        if ("source" in config) == ("sources" in config):
            raise c.error("the config", "give either `source:` (one) or `sources:` (several, mixed)")
        if "source" in config:
            if "mix" in config:
                raise c.error("mix", "`mix:` needs `sources:` (several named sources)")
            ds = _source(c, config["source"], "source")
        else:
            sources = config["sources"]
            c.mapping(sources, "sources")
            if not sources:
                raise c.error("sources", "name at least one source")
            weights = {}
            datasets = {}
            for name, spec in sources.items():
                c.mapping(spec, f"sources.{name}")
                spec = dict(spec)
                weight = spec.pop("weight", 1.0)
                if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
                    raise c.error(f"sources.{name}.weight", f"must be a number >= 0, got {weight!r}")
                weights[str(name)] = float(weight)
                datasets[str(name)] = _source(c, spec, f"sources.{name}")
            options = config.get("mix") or {}
            c.mapping(options, "mix")
            ds = c.call(mix, "mix", options, datasets, weights)
        steps = config.get("steps") or []
        if not isinstance(steps, list):
            raise c.error("steps", f"must be a list of steps, got {type(steps).__name__}")
        for i, step in enumerate(steps):
            ds = _step(c, ds, step, f"steps[{i}]")
        loader = config.get("loader") or {}
        c.mapping(loader, "loader")
        allowed = [p for p in inspect.signature(Loader).parameters if p != "dataset"]
        c.known(loader, allowed, "loader")
        return cls(ds, dict(loader), origin)

    def loader(self, **overrides: Any) -> Loader:
        """An :class:`~headrace.Loader` with the config's options, ``overrides`` winning."""
        return Loader(self.dataset, **{**self.loader_options, **overrides})


class _Checker:
    def __init__(self, origin: str) -> None:
        self.origin = origin

    def error(self, where: str, what: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {where}: {what}")

    def mapping(self, value: Any, where: str) -> None:
        if not isinstance(value, Mapping):
            raise self.error(where, f"must be a mapping (key: value), got {type(value).__name__}")

    def known(self, value: Mapping[str, Any], allowed: Any, where: str) -> None:
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise self.error(where, f"unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")

    def call(self, fn: Callable[..., Any], where: str, options: Mapping[str, Any], *args: Any) -> Any:
        """``fn(*args, **options)``, with unknown or missing options and bad values reported at ``where``."""
        parameters = inspect.signature(fn).parameters
        names = [n for n, p in parameters.items() if p.kind != p.VAR_POSITIONAL][len(args) :]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            unknown = [k for k in options if k not in names]
            if unknown:
                raise self.error(
                    where, f"unknown option(s) {', '.join(map(str, unknown))}; options: {', '.join(names)}"
                )
        try:
            inspect.signature(fn).bind(*args, **options)
        except TypeError as e:
            raise self.error(where, f"{e}; options: {', '.join(names)}") from None
        try:
            return fn(*args, **options)
        except HeadraceError as e:
            raise self.error(where, str(e)) from None
        except (TypeError, ValueError) as e:
            raise self.error(where, f"{e}") from None


def _source(c: _Checker, spec: Any, where: str) -> Dataset:
    c.mapping(spec, where)
    spec = dict(spec)
    if "path" not in spec:
        raise c.error(where, "needs `path:` (a file, glob, directory, URL or a list of them)")
    path = spec.pop("path")
    return c.call(open_source, where, spec, path)  # type: ignore[no-any-return]


def _step(c: _Checker, ds: Dataset, step: Any, where: str) -> Dataset:
    if isinstance(step, str):
        step = {step: {}}
    if not isinstance(step, Mapping) or len(step) != 1:
        raise c.error(where, "each step is one `name: {options}` (e.g. `- batch: {size: 16}`)")
    ((name, options),) = step.items()
    if name not in STEPS:
        raise c.error(where, f"unknown step {name!r}; steps: {', '.join(STEPS)}")
    options = {} if options is None else options
    c.mapping(options, f"{where}.{name}")
    options = {k: _function(c, v, f"{where}.{name}.{k}") if k in FUNCTION_OPTIONS else v for k, v in options.items()}
    return c.call(getattr(ds, name), f"{where}.{name}", options)  # type: ignore[no-any-return]


def _function(c: _Checker, ref: Any, where: str) -> Callable[..., Any]:
    if callable(ref):
        return ref  # type: ignore[no-any-return]
    if not isinstance(ref, str) or ":" not in ref:
        raise c.error(where, f"name a function as 'module:name' (e.g. 'mypackage.fns:clean'), got {ref!r}")
    module, _, attr = ref.partition(":")
    try:
        fn = getattr(_import(module, _places(c.origin)), attr)
    except _NotFound as e:
        raise c.error(where, f"cannot import {ref!r}: no module {e.name!r} in {e.searched}; put {e.name}.py "
                             "(or a package) in one of them, or install it") from None  # fmt: skip
    except (ImportError, AttributeError) as e:
        raise c.error(where, f"cannot import {ref!r} ({e}); is the module on the Python path?") from None
    if not callable(fn):
        raise c.error(where, f"{ref!r} is not callable")
    return fn  # type: ignore[no-any-return]


class _NotFound(ImportError):
    def __init__(self, name: str, searched: str) -> None:
        super().__init__(f"no module {name!r}")
        self.name, self.searched = name, searched


def _places(origin: str) -> list[str]:
    """Where a function's module is looked for after the Python path: the working directory, the config's folder."""
    places = [os.getcwd()]
    if os.path.isfile(origin):
        folder = os.path.dirname(os.path.abspath(origin))
        if folder not in places:
            places.append(folder)
    return places


def _import(module: str, places: list[str]) -> Any:
    """``importlib.import_module(module)``, else from the first of ``places`` that holds its top-level package.

    The places go on the end of ``sys.path`` only while importing (they never shadow an installed
    module); the module stays in ``sys.modules``, so forked workers have it.
    """
    top = module.split(".", 1)[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != top:  # the module exists but something it imports does not: its own error
            raise
    for place in places:
        if not (os.path.isfile(os.path.join(place, top + ".py")) or os.path.isdir(os.path.join(place, top))):
            continue
        added = place not in sys.path
        if added:
            sys.path.append(place)
        try:
            importlib.invalidate_caches()
            return importlib.import_module(module)
        finally:
            if added and place in sys.path:
                sys.path.remove(place)
    searched = ", ".join(["the Python path (sys.path)", f"the working directory {places[0]}"]
                         + [f"the config's folder {p}" for p in places[1:]])  # fmt: skip
    raise _NotFound(top, searched)


__all__ = ["ConfigError", "Pipeline"]
