"""``python -m spindle_ansible``: print the ansible.cfg lines that enable spindle's Ansible
plugins from where this package is installed (append them to your ansible.cfg).

``python -m spindle_ansible --stop``: stop this user's persistent daemons (each exits by itself
``SPINDLE_PERSIST`` seconds, default 60, after the last run; like ``ssh -O exit``)."""

import os
import sys


def config_lines():
    """The [defaults] section that points Ansible at this package's plugins: the ``spindle``
    callback (works with any strategy, and, with ``bin_ansible_callbacks``, for the ad-hoc
    ``ansible`` and ``ansible-console`` too); the spindle strategies and the connection
    plugin's directory are listed too, for ``strategy = spindle_linear`` and ``ansible-doc``."""
    plugins = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plugins')
    return "\n".join([
        "[defaults]",
        "callback_plugins = %s" % os.path.join(plugins, 'callback'),
        "callbacks_enabled = spindle",
        "; ad-hoc `ansible` and `ansible-console` load enabled callbacks only with this (without",
        "; it they run stock ssh); it also lets them use a stdout_callback you configured",
        "bin_ansible_callbacks = True",
        "; optional: ansible-doc for the connection plugin; the strategies spindle_linear and",
        "; spindle_free (an alternative to the callback: set them as the strategy)",
        "connection_plugins = %s" % os.path.join(plugins, 'connection'),
        "strategy_plugins = %s" % os.path.join(plugins, 'strategy'),
    ])


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0
    if args == ['--stop']:
        from spindle_ansible.daemon import stop_all

        print("spindle: stopped %d persistent daemon(s)" % stop_all())
        return 0
    if args:
        print("usage: python -m spindle_ansible [--stop]", file=sys.stderr)
        return 2
    print(config_lines())
    return 0


if __name__ == '__main__':
    sys.exit(main())
