"""The spindle connection's options that only an enter route reads, resolved when first read.

The connection declares 44 options: ssh's and its own, and those of the stock plugins whose
hosts it also serves (kubectl, lxd, incus, lxc, the container engines, nsenter: 26 of them).
Ansible resolves every declared option for every task, in the worker, before the task runs
(``AnsiblePlugin.set_options``: ``C.config.get_config_value_and_origin`` per option, each
looking through the option's variables, keywords, environment, ini entries and default). A
task over ssh reads none of the 26.

:func:`set_options` is Ansible's ``set_options`` (the same on 2.18-2.21: the loop of
``ConfigManager.get_plugin_options_and_origins``) without the 26, and keeps what it was
given; :func:`resolve` resolves one of them, the first time it is read, from exactly that.
So each value, its origin and any error about it are what Ansible's own ``set_options``
gives, at the time the route needs it. Measured with an ad hoc per-function CPU timer in
the worker (not shipped), hostname100 on one host, three interleaved runs each (medians of 300
workers): ``TaskExecutor._set_connection_options`` 1.65 -> 1.49 ms, the whole worker 14.5 ->
14.2 ms. Small, but paid by every task of every host.
"""

from __future__ import annotations

from ansible import constants as C

#: Name prefixes of the options only an enter route reads (specs.SpecBuilder.spec_from).
ROUTE_PREFIXES = (
    'spindle_kubectl_',
    'spindle_lxd_',
    'spindle_incus_',
    'spindle_lxc_',
    'spindle_container_',
)


def deferred(name):
    """Whether option ``name`` is resolved when first read, not for every task."""
    return name.startswith(ROUTE_PREFIXES) or name == 'nsenter_pid'


def _resolved(plugin, name, sources):
    """(value, origin) of option ``name`` of ``plugin`` from ``sources`` (task keys, variables,
    direct settings), as Ansible's ``set_options`` resolves each option."""
    task_keys, var_options, direct = sources
    return C.config.get_config_value_and_origin(
        name,
        plugin_type=plugin.plugin_type,
        plugin_name=plugin._load_name,
        keys=task_keys,
        variables=var_options,
        direct=direct,
    )


def set_options(plugin, task_keys=None, var_options=None, direct=None):
    """``AnsiblePlugin.set_options`` for ``plugin`` (which allows no extras), the deferred
    options left for :func:`resolve`."""
    sources = plugin._spindle_option_sources = (task_keys, var_options, direct)
    options, origins = {}, {}
    for name in C.config.get_configuration_definitions(plugin.plugin_type, plugin._load_name):
        if not deferred(name):
            options[name], origins[name] = _resolved(plugin, name, sources)
    plugin._options, plugin._origins = options, origins


def resolve(plugin, name):
    """Resolve deferred option ``name`` of ``plugin`` from what its last ``set_options`` was
    given (nothing, if it had none: Ansible's own lazy lookup then applies)."""
    sources = getattr(plugin, '_spindle_option_sources', None)
    if sources is None or name in plugin._options or not deferred(name):
        return
    plugin._options[name], plugin._origins[name] = _resolved(plugin, name, sources)
