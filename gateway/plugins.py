"""The plugin manager: built-in plugins load through the same entry points as third-party ones."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pluggy

from gateway import hookspecs
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.storage import Storage

# Loaded when the distribution's entry points are not installed (e.g. running from a checkout
# without `pip install -e .`); with them installed these are the same modules, registered once.
DEFAULT_PLUGINS = (
    "plugins.sqlite_storage",
    "plugins.redis_storage",
    "plugins.local_authority",
    "plugins.http_authority",
    "plugins.authority_simulator",
)


def plugin_manager(extra: tuple[object, ...] = ()) -> pluggy.PluginManager:
    """A manager with the hook specs, every `sealgate` entry point, and ``extra`` plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    for name in DEFAULT_PLUGINS:
        if pm.get_plugin(name) is None and not _registered_module(pm, name):
            import importlib

            pm.register(importlib.import_module(name), name=name)
    for plugin in extra:
        pm.register(plugin)
    return pm


def _registered_module(pm: pluggy.PluginManager, module_name: str) -> bool:
    return any(
        isinstance(p, ModuleType) and p.__name__ == module_name for p in pm.get_plugins()
    )


def _by_name(results: list[list[Any]], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for group in results:
        for item in group:
            if item.name in found:
                raise ConfigError(f"two plugins provide the {kind} '{item.name}'")
            found[item.name] = item
    return found


def storage_backend(pm: pluggy.PluginManager, settings: Settings) -> Storage:
    """Create the storage backend that ``settings.storage.backend`` names."""
    factories = _by_name(pm.hook.sealgate_storage_backends(settings=settings), "storage backend")
    try:
        factory = factories[settings.storage.backend]
    except KeyError:
        known = ", ".join(sorted(factories)) or "none"
        raise ConfigError(
            f"unknown storage backend '{settings.storage.backend}' (installed: {known})"
        ) from None
    backend: Storage = factory.create(settings)
    return backend


def filing_adapters(pm: pluggy.PluginManager, settings: Settings) -> dict[str, Any]:
    """Every filing-authority adapter the installed plugins provide, by name."""
    return _by_name(pm.hook.sealgate_filing_adapters(settings=settings), "filing adapter")
