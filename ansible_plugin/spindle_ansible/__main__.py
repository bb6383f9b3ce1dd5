"""``python -m spindle_ansible``: print the ansible.cfg lines that enable spindle's Ansible
plugins from where this package is installed (append them to an ansible.cfg that has no
``[defaults]`` section yet).

``python -m spindle_ansible --merge FILE``: put them into FILE, an ansible.cfg that already has
a ``[defaults]`` section (appended, a second one makes Ansible refuse the file): spindle joins
your ``callbacks_enabled`` and plugin paths, comments and other settings stay, the original is
kept as FILE.bak, running it again changes nothing. It also repairs a file the printed lines
were appended to.

``python -m spindle_ansible --stop``: stop this user's persistent daemons (each exits by itself
``SPINDLE_PERSIST`` seconds, default 60, after the last run; like ``ssh -O exit``).

``python -m spindle_ansible --env`` prints the same as environment variables (KEY=value), and
``--envvars`` as YAML for ansible-runner's ``env/envvars`` (AWX and ansible-navigator run
Ansible through ansible-runner). Under ansible-runner the environment form is the one that
works: runner sets ``ANSIBLE_CALLBACK_PLUGINS`` itself (to load its event callback), which
overrides ``callback_plugins`` in any ansible.cfg, so Ansible skips the ``spindle`` callback
and runs stock ssh (with a warning "Skipping callback plugin 'spindle', unable to load").
Runner appends its own directory to an ``ANSIBLE_CALLBACK_PLUGINS`` given in its env/envvars,
so both load."""

import os
import sys


def _plugins():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plugins')


def config_lines():
    """The [defaults] section that points Ansible at this package's plugins: the ``spindle``
    callback (works with any strategy, and, with ``bin_ansible_callbacks``, for the ad-hoc
    ``ansible`` and ``ansible-console`` too); the spindle strategies and the connection
    plugin's directory are listed too, for ``strategy = spindle_linear`` and ``ansible-doc``."""
    plugins = _plugins()
    return "\n".join(
        [
            "[defaults]",
            "callback_plugins = %s" % os.path.join(plugins, 'callback'),
            "callbacks_enabled = spindle",
            "; ad-hoc `ansible` and `ansible-console` load enabled callbacks only with this (without",
            "; it they run stock ssh); it also lets them use a stdout_callback you configured",
            "bin_ansible_callbacks = True",
            "; under ansible-runner (AWX, ansible-navigator) runner's own ANSIBLE_CALLBACK_PLUGINS hides",
            "; callback_plugins: put what `python -m spindle_ansible --envvars` prints in env/envvars",
            "; optional: ansible-doc for the connection plugin; the strategies spindle_linear and",
            "; spindle_free (an alternative to the callback: set them as the strategy)",
            "connection_plugins = %s" % os.path.join(plugins, 'connection'),
            "strategy_plugins = %s" % os.path.join(plugins, 'strategy'),
        ]
    )


def env_vars():
    """The environment-variable form of the three required lines, in order: the callback's
    directory, the callback enabled, enabled callbacks loaded by the ad-hoc CLIs too.
    (``ANSIBLE_CALLBACKS_ENABLED`` replaces a ``callbacks_enabled`` list of an ansible.cfg:
    add your other callbacks to it, comma-separated.)"""
    return [
        ('ANSIBLE_CALLBACK_PLUGINS', os.path.join(_plugins(), 'callback')),
        ('ANSIBLE_CALLBACKS_ENABLED', 'spindle'),
        ('ANSIBLE_LOAD_CALLBACK_PLUGINS', 'True'),
    ]


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0
    if args == ['--stop']:
        from spindle_ansible.daemon import stop_all

        print("spindle: stopped %d persistent daemon(s)" % stop_all())
        return 0
    if args == ['--env']:
        print("\n".join("%s=%s" % kv for kv in env_vars()))
        return 0
    if args == ['--envvars']:
        # YAML: a plain scalar cannot hold every path; JSON strings are YAML strings.
        import json

        print("\n".join("%s: %s" % (k, json.dumps(v)) for k, v in env_vars()))
        return 0
    if len(args) == 2 and args[0] == '--merge':
        return _merge(args[1])
    if args:
        print(
            "usage: python -m spindle_ansible [--merge ANSIBLE_CFG | --env | --envvars | --stop]",
            file=sys.stderr,
        )
        return 2
    print(config_lines())
    from spindle_ansible import cfgmerge

    used = cfgmerge.ansible_cfg_in_use()
    if used and cfgmerge.has_defaults(used):
        print(
            "; note: %s already has a [defaults] section: appended, these lines would make a\n"
            ";       second one, which Ansible refuses. Run instead:\n"
            ";       python -m spindle_ansible --merge %s" % (used, used),
            file=sys.stderr,
        )
    return 0


def _merge(path):
    from spindle_ansible import cfgmerge

    try:
        changes = cfgmerge.merge_file(path, cfgmerge.wanted(_plugins()))
    except (cfgmerge.MergeError, OSError) as e:
        print("spindle: %s: nothing written" % (e,), file=sys.stderr)
        return 1
    if not changes:
        print("spindle: %s already enables spindle's plugins; nothing changed" % path)
        return 0
    print("spindle: %s now enables spindle's plugins (the original is %s.bak):" % (path, path))
    for c in changes:
        print("  " + c)
    overridden = [k for k in ('ANSIBLE_CALLBACK_PLUGINS', 'ANSIBLE_CALLBACKS_ENABLED') if k in os.environ]
    if overridden:
        print(
            "spindle: note: %s set in this environment override%s the file's lines: add spindle "
            "there too (python -m spindle_ansible --env)"
            % (' and '.join(overridden), '' if len(overridden) > 1 else 's')
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
