"""spindle_ansible.lazyoptions: the spindle connection leaves the options only an enter route
reads unresolved until read, and then gives each the value and origin Ansible's own
``set_options`` gives it, from the latest ``set_options`` call."""

import os
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
CONNECTION_DIR = os.path.join(os.path.dirname(HERE), 'spindle_ansible', 'plugins', 'connection')
_LOADER = []  # init_plugin_loader() done


def sample(defs, tag):
    """Variables for every option of ``defs`` that has one: a value of the option's type."""
    out = {}
    for name, d in defs.items():
        names = [v['name'] if isinstance(v, dict) else v for v in d.get('vars') or []]
        if not names or name in ('host', 'password'):
            continue
        kind = d.get('type', 'string')
        if d.get('choices'):
            value = list(d['choices'])[0 if tag == 'a' else -1]
        elif kind in ('bool', 'boolean'):
            value = tag == 'b'
        elif kind in ('int', 'integer'):
            value = 7 if tag == 'a' else 8
        elif kind == 'list':
            value = ['%s-%s' % (tag, name)]
        elif kind in ('str', 'string', 'path', 'tmppath', None):
            value = '%s-%s' % (tag, name)
        else:
            continue
        out[names[-1]] = value
    return out


class LazyOptions(unittest.TestCase):
    def setUp(self):
        try:
            from ansible import constants as C
            from ansible.playbook.play_context import PlayContext
            from ansible.plugins import AnsiblePlugin
            from ansible.plugins.loader import connection_loader, init_plugin_loader
        except ImportError as e:
            self.skipTest('ansible-core not importable here (%s)' % e)
        from spindle_ansible import lazyoptions

        if not _LOADER:
            init_plugin_loader()
            _LOADER.append(True)
        connection_loader.add_directory(CONNECTION_DIR)
        self.lazy = lazyoptions
        self.ansibles_set_options = AnsiblePlugin.set_options
        self.new = lambda: connection_loader.get('spindle', PlayContext(), None)
        self.defs = C.config.get_configuration_definitions('connection', 'spindle')

    def test_only_the_enter_routes_options_wait(self):
        conn = self.new()
        conn.set_options(var_options=sample(self.defs, 'a'))
        waiting = sorted(n for n in self.defs if n not in conn._options)
        self.assertEqual(waiting, sorted(n for n in self.defs if self.lazy.deferred(n)))
        self.assertIn('spindle_kubectl_namespace', waiting)
        self.assertIn('nsenter_pid', waiting)
        self.assertNotIn('port', waiting)
        print('lazyoptions: %d of %d options resolved when first read' % (len(waiting), len(self.defs)))

    def test_every_option_reads_as_ansibles_set_options_gives_it(self):
        for tag in ('a', 'b'):
            variables = sample(self.defs, tag)
            conn, stock = self.new(), self.new()
            conn.set_options(var_options=dict(variables), task_keys={'remote_user': 'kw'})
            self.ansibles_set_options(stock, var_options=dict(variables), task_keys={'remote_user': 'kw'})
            for name in sorted(self.defs):
                self.assertEqual(
                    conn.get_option_and_origin(name),
                    stock.get_option_and_origin(name),
                    '%s (%s)' % (name, tag),
                )

    def test_a_later_set_options_is_what_a_waiting_option_reads(self):
        conn = self.new()
        conn.set_options(var_options={'ansible_kubectl_namespace': 'first'})
        self.assertEqual(conn.get_option('spindle_kubectl_namespace'), 'first')
        conn.set_options(var_options={'ansible_kubectl_namespace': 'second'})
        self.assertEqual(conn.get_option('spindle_kubectl_namespace'), 'second')
        conn.set_options(var_options={})
        self.assertIsNone(conn.get_option('spindle_kubectl_namespace'))

    def test_what_set_options_was_given_wins_over_hostvars_as_in_ansible(self):
        given = {'ansible_kubectl_namespace': 'given'}
        hostvars = {'ansible_kubectl_namespace': 'other'}
        conn, stock = self.new(), self.new()
        conn.set_options(var_options=given)
        self.ansibles_set_options(stock, var_options=given)
        for c in (conn, stock):
            self.assertEqual(c.get_option('spindle_kubectl_namespace', hostvars=hostvars), 'given')


if __name__ == '__main__':
    unittest.main()
