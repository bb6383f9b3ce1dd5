"""``python -m spindle_ansible``: the ansible.cfg lines, and the same as environment variables
(``--env``) and as ansible-runner's env/envvars YAML (``--envvars``)."""

import contextlib
import io
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from spindle_ansible import __main__ as cli  # noqa: E402


def run(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(list(args))
    return rc, out.getvalue()


class Main(unittest.TestCase):
    def test_env_matches_the_cfg_lines(self):
        rc, cfg = run()
        self.assertEqual(rc, 0)
        rc, env = run('--env')
        self.assertEqual(rc, 0)
        pairs = dict(line.split('=', 1) for line in env.splitlines())
        self.assertEqual(
            list(pairs),
            ['ANSIBLE_CALLBACK_PLUGINS', 'ANSIBLE_CALLBACKS_ENABLED', 'ANSIBLE_LOAD_CALLBACK_PLUGINS'],
        )
        self.assertIn('callback_plugins = %s\n' % pairs['ANSIBLE_CALLBACK_PLUGINS'], cfg)
        self.assertTrue(os.path.isfile(os.path.join(pairs['ANSIBLE_CALLBACK_PLUGINS'], 'spindle.py')))
        self.assertIn('callbacks_enabled = %s\n' % pairs['ANSIBLE_CALLBACKS_ENABLED'], cfg)
        self.assertIn('bin_ansible_callbacks = %s\n' % pairs['ANSIBLE_LOAD_CALLBACK_PLUGINS'], cfg)

    def test_envvars_is_yaml_of_the_same(self):
        rc, env = run('--env')
        rc2, envvars = run('--envvars')
        self.assertEqual((rc, rc2), (0, 0))
        # each line `KEY: "json string"` (JSON strings are YAML strings; no yaml module needed)
        parsed = {}
        for line in envvars.splitlines():
            key, value = line.split(': ', 1)
            parsed[key] = json.loads(value)
        self.assertEqual(parsed, dict(line.split('=', 1) for line in env.splitlines()))

    def test_usage(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(run('--bogus')[0], 2)
        self.assertIn('usage', err.getvalue())


if __name__ == '__main__':
    unittest.main()
