"""Plugin discovery: a pluggy manager over the ``armm.plugins`` entry-point group, and the registries it fills."""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass

import pluggy

from armm import hookspecs
from armm.registry import Registry

ENTRY_POINT_GROUP = "armm.plugins"
DISABLE_AUTOLOAD_ENV = "ARMM_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PLUGINS = ("armm.sampling", "armm.tokenizer", "armm.classes", "armm.layout")
BUILTIN_PROVIDER = "armm (built-in)"


def make_plugin_manager(autoload: bool | None = None) -> pluggy.PluginManager:
    """A plugin manager with armm's built-ins and, unless disabled, every installed ``armm.plugins`` entry point.

    ``autoload=None`` follows the environment: set ``ARMM_DISABLE_PLUGIN_AUTOLOAD=1`` to load built-ins only.
    """
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    pm = pluggy.PluginManager("armm")
    pm.add_hookspecs(hookspecs)
    for module in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module), name=module)
    if autoload:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


@dataclass(frozen=True)
class Plugins:
    """The registries filled by one plugin manager's hooks."""

    tokenizers: Registry
    samplers: Registry
    datasets: Registry

    @classmethod
    def from_manager(cls, pm: pluggy.PluginManager) -> Plugins:
        return cls(
            tokenizers=_collect(pm, "armm_register_tokenizers", Registry("tokenizer")),
            samplers=_collect(pm, "armm_register_samplers", Registry("sampler")),
            datasets=_collect(pm, "armm_register_datasets", Registry("dataset")),
        )


def _provider_names(pm: pluggy.PluginManager) -> dict[int, str]:
    names = {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}
    for module in BUILTIN_PLUGINS:
        names[id(pm.get_plugin(module))] = BUILTIN_PROVIDER
    return names


def _collect(pm: pluggy.PluginManager, hook_name: str, registry: Registry) -> Registry:
    """Call each implementation of a register-callback hook with a ``register`` that records its provider."""
    providers = _provider_names(pm)
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        provider = providers.get(id(impl.plugin), impl.plugin_name)
        register = functools.partial(registry.add, provider=provider)
        impl.function(**{name: register for name in impl.argnames if name == "register"})
    return registry


@functools.cache
def get_plugins() -> Plugins:
    """The process-wide registries (loaded once). ``get_plugins.cache_clear()`` reloads them."""
    return Plugins.from_manager(make_plugin_manager())
