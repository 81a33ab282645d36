"""Registries that implementations fill themselves (timm's ``register_model`` style).

An encoder, fusion, head or trainability policy registers itself with a decorator (or one line)
beside its class, carrying its settings dataclass and its checks; ``mm.config`` assembles the
``encoders``, ``fusion`` and ``head`` sections from these registries and runs the registered
checks. So this module and ``mm.config`` sit below every implementation: they import none.

The built-in implementations register when their packages are imported; ``load_builtins``
imports those packages (``BUILTINS``) the first time a registry is read, the way ``timm``'s
package imports its model files, so a registry read from anywhere holds them. A module that
defines a new implementation (a library file, a plugin or a test file) registers it on import.
An unknown name raises ``UnknownName`` with the list of valid ones.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any, get_type_hints

# The packages whose import registers the built-in implementations (each file registers itself;
# a new file is imported by its package's __init__, one line).
BUILTINS = ("mm.encoders", "mm.fusion", "mm.heads", "mm.data.synthetic_tasks", "mm.tracking")
_state = "unloaded"  # -> "loading" (a registry read while the built-ins import: no recursion) -> "loaded"


def load_builtins() -> None:
    """Import the built-in implementations once (each registers itself on import). A failed import
    propagates, and the next read tries again rather than serve a half-filled registry."""
    global _state
    if _state != "unloaded":
        return
    _state = "loading"
    try:
        for package in BUILTINS:
            importlib.import_module(package)
    except BaseException:
        _state = "unloaded"
        raise
    _state = "loaded"


class UnknownName(KeyError, ValueError):
    """A name no implementation registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Mapping):
    """``name -> implementation``, filled by the implementations (``register``).

    Args:
        what: what an entry is, for messages (``"fusion"``).
    """

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` as ``name``; without ``obj``, a decorator. Re-registering a name replaces it."""
        if obj is None:
            return lambda o: self.register(name, o)
        self._entries[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove an entry (a test's own implementation, after the test)."""
        self._entries.pop(name, None)

    def __setitem__(self, name: str, obj: Any) -> None:  # what monkeypatch.setitem uses
        self.register(name, obj)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __getitem__(self, name: str) -> Any:
        load_builtins()
        if name not in self._entries:
            raise UnknownName(f"unknown {self.what} {name!r}; valid: {sorted(self._entries)}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        load_builtins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        load_builtins()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {list(self._entries)})"


class EncoderRegistry(Registry):
    """``modality -> {kind: encoder class}``; a modality's first registered kind is its default.

    An encoder class declares ``modality`` and ``settings`` (its settings dataclass) and registers
    with ``@register_encoder("kind")``.
    """

    def register(self, name: str, obj: Any = None, default: bool = False) -> Any:  # name: the kind
        if obj is None:
            return lambda o: self.register(name, o, default)
        kinds = self._entries.setdefault(obj.modality, {})
        kinds[name] = obj
        if default:  # the default kind comes first, whatever the import order
            self._entries[obj.modality] = {name: obj, **{k: v for k, v in kinds.items() if k != name}}
        return obj

    def unregister(self, modality: str, kind: str | None = None) -> None:
        """Remove a modality, or one kind of it."""
        if kind is None:
            self._entries.pop(modality, None)
        else:
            self._entries.get(modality, {}).pop(kind, None)
            if not self._entries.get(modality):
                self._entries.pop(modality, None)

    def kind(self, modality: str, kind: str | None = None) -> Any:
        """The encoder class of ``kind`` (default: the modality's first) for ``modality``."""
        kinds = self[modality]
        kind = kind or next(iter(kinds))
        if kind not in kinds:
            raise UnknownName(f"unknown {modality} encoder {kind!r}; valid: {list(kinds)}")
        return kinds[kind]


ENCODERS = EncoderRegistry("modality")
FUSIONS = Registry("fusion")
HEADS = Registry("head")
POLICIES = Registry("trainable policy")
TASKS = Registry("synthetic task")
# Checks of a whole config that belong to an implementation (its choices, its combinations with
# other sections): ``check(cfg)`` raises ``mm.config.ConfigError``; name -> check.
CHECKS = Registry("config check")


def register_encoder(kind: str, default: bool = False) -> Callable[[type], type]:
    """Class decorator: register an encoder class as ``kind`` of its ``modality`` (``default``: the
    kind a config section picks unless ``name`` says otherwise; else the first registered)."""
    return ENCODERS.register(kind, default=default)


def signature_settings(cls: type, skip: int = 1) -> type:
    """A settings dataclass made from a constructor's keyword arguments and their defaults
    (the first ``skip`` positional arguments, such as ``in_dims``, left out)."""
    hints = get_type_hints(cls.__init__)
    params = list(inspect.signature(cls.__init__).parameters.values())[1 + skip:]
    spec = [(p.name, hints.get(p.name, Any), field(default=p.default)) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not inspect.Parameter.empty]
    return make_dataclass(f"{cls.__name__}Settings", spec)


def union_settings(title: str, kinds: Mapping[str, type], head: list[tuple[str, Any, Any]]) -> type:
    """One config section's dataclass: ``head`` fields (``name`` first), then the first kind's
    settings, then the fields the other kinds add (a field keeps the first kind's type and default)."""
    spec = list(head)
    seen = {name for name, *_ in spec}
    for settings in kinds.values():
        for f in fields(settings):
            if f.name in seen:
                continue
            seen.add(f.name)
            hint = get_type_hints(settings).get(f.name, Any)
            default = (field(default_factory=f.default_factory) if f.default_factory is not MISSING
                       else field(default=f.default))
            spec.append((f.name, hint, default))
    return make_dataclass(title, spec)


@dataclass
class NoSettings:
    """The settings of an entry that declares none."""


def settings_of(entry: Any, skip: int | None = None) -> type:
    """An entry's settings dataclass: its ``settings`` attribute; else, with ``skip``, the keyword
    arguments of its constructor after the first ``skip`` (``signature_settings``); else none."""
    declared = getattr(entry, "settings", None)
    if declared is not None:
        return declared
    return signature_settings(entry, skip) if skip is not None else NoSettings
