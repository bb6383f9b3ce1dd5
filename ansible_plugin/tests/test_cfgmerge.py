"""spindle_ansible.cfgmerge: spindle's lines put into an ansible.cfg that has a [defaults]
section already, line by line (comments and other settings stay), idempotent, and a file the
printed lines were appended to repaired."""

import configparser
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from spindle_ansible import cfgmerge  # noqa: E402

PLUGINS = '/site/spindle_ansible/plugins'
KEYS = cfgmerge.wanted(PLUGINS)


def parsed(text):
    """``[defaults]`` as Ansible's config parser reads it."""
    p = configparser.ConfigParser(inline_comment_prefixes=(';',))
    p.read_string(text)
    return dict(p['defaults'])


TEAM_CFG = """# our team's settings
[defaults]
inventory = inventories/prod
callbacks_enabled = ansible.posix.profile_tasks,
    ansible.posix.timer
callback_plugins = ./callbacks  ; our own
forks = 50

[ssh_connection]
pipelining = True
"""


class Merge(unittest.TestCase):
    def test_an_existing_defaults_section_gains_spindle_and_keeps_the_rest(self):
        out, changes = cfgmerge.merge(TEAM_CFG, KEYS)
        d = parsed(out)
        self.assertEqual(d['callbacks_enabled'], 'ansible.posix.profile_tasks, ansible.posix.timer, spindle')
        self.assertEqual(d['callback_plugins'], './callbacks:%s/callback' % PLUGINS)
        self.assertEqual(d['bin_ansible_callbacks'], 'True')
        self.assertEqual(d['connection_plugins'], '%s/connection' % PLUGINS)
        self.assertEqual((d['inventory'], d['forks']), ('inventories/prod', '50'))
        self.assertIn('# our team\'s settings\n', out)
        self.assertIn('; our own', out)  # the inline comment stays on its line
        self.assertIn('[ssh_connection]\npipelining = True\n', out)
        self.assertEqual(out.count('[defaults]'), 1)
        # the added keys close [defaults], before the next section
        self.assertLess(out.index('strategy_plugins'), out.index('[ssh_connection]'))
        self.assertEqual(len(changes), 5, changes)

    def test_merging_again_changes_nothing(self):
        out, _ = cfgmerge.merge(TEAM_CFG, KEYS)
        again, changes = cfgmerge.merge(out, KEYS)
        self.assertEqual(changes, [])
        self.assertEqual(again, out)

    def test_what_is_there_already_stays_as_it_is(self):
        text = (
            '[defaults]\ncallbacks_enabled = spindle\nbin_ansible_callbacks = yes\n'
            'callback_plugins = %s/callback/\nconnection_plugins = %s/connection\n'
            'strategy_plugins = %s/strategy\n' % (PLUGINS, PLUGINS, PLUGINS)
        )
        # (a trailing slash names the same directory)
        self.assertEqual(cfgmerge.merge(text, KEYS)[1], [])

    def test_a_false_bin_ansible_callbacks_becomes_true(self):
        out, changes = cfgmerge.merge('[defaults]\nbin_ansible_callbacks = False\n', KEYS)
        self.assertEqual(parsed(out)['bin_ansible_callbacks'], 'True')
        self.assertIn('bin_ansible_callbacks: False -> True', changes)

    def test_a_file_without_defaults_gets_the_section(self):
        out, changes = cfgmerge.merge('[ssh_connection]\npipelining = True\n', KEYS)
        self.assertEqual(parsed(out)['callbacks_enabled'], 'spindle')
        self.assertIn('[ssh_connection]', out)
        out, _ = cfgmerge.merge('', KEYS)
        self.assertEqual(parsed(out)['callbacks_enabled'], 'spindle')

    def test_the_printed_lines_appended_to_a_file_with_defaults_are_folded_in(self):
        from spindle_ansible import __main__ as cli

        broken = TEAM_CFG + '\n' + cli.config_lines() + '\n'
        with self.assertRaises(configparser.Error):
            parsed(broken)  # what Ansible says: section 'defaults' already exists
        out, changes = cfgmerge.merge(broken, cfgmerge.wanted(cli._plugins()))
        self.assertEqual(out.count('[defaults]'), 1)
        self.assertIn('spindle', parsed(out)['callbacks_enabled'])
        self.assertTrue(changes[0].startswith('removed the [defaults] section appended at line'), changes)

    def test_a_second_defaults_of_the_users_own_is_not_touched(self):
        for second in (
            'inventory = x\n',
            'callbacks_enabled = timer\n',
            'callbacks_enabled = spindle\nforks = 9\n',
        ):
            with self.assertRaises(cfgmerge.MergeError, msg=second):
                cfgmerge.merge('[defaults]\nforks = 5\n[defaults]\n' + second, KEYS)


class MergeFile(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='cfgmerge-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, 'ansible.cfg')

    def test_the_file_is_replaced_with_its_mode_and_the_original_kept(self):
        with open(self.path, 'w') as f:
            f.write(TEAM_CFG)
        os.chmod(self.path, 0o640)
        changes = cfgmerge.merge_file(self.path, KEYS)
        self.assertTrue(changes)
        with open(self.path + '.bak') as f:
            self.assertEqual(f.read(), TEAM_CFG)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o640)
        with open(self.path) as f:
            self.assertIn('spindle', parsed(f.read())['callbacks_enabled'])
        self.assertEqual(cfgmerge.merge_file(self.path, KEYS), [])
        self.assertEqual(sorted(os.listdir(self.dir)), ['ansible.cfg', 'ansible.cfg.bak'])

    def test_a_file_that_does_not_parse_is_left_alone(self):
        with open(self.path, 'w') as f:
            f.write('forks = 5\n[defaults\n')
        with self.assertRaises(cfgmerge.MergeError):
            cfgmerge.merge_file(self.path, KEYS)
        with open(self.path) as f:
            self.assertEqual(f.read(), 'forks = 5\n[defaults\n')
        self.assertEqual(os.listdir(self.dir), ['ansible.cfg'])

    def test_a_missing_file_is_made(self):
        self.assertTrue(cfgmerge.merge_file(self.path, KEYS))
        with open(self.path) as f:
            self.assertEqual(parsed(f.read())['callbacks_enabled'], 'spindle')

    def test_the_file_ansible_would_read_is_found(self):
        with open(self.path, 'w') as f:
            f.write(TEAM_CFG)
        self.assertEqual(cfgmerge.ansible_cfg_in_use({}, self.dir), self.path)
        self.assertEqual(cfgmerge.ansible_cfg_in_use({'ANSIBLE_CONFIG': self.dir}, '/'), self.path)
        self.assertTrue(cfgmerge.has_defaults(self.path))


if __name__ == '__main__':
    unittest.main()
