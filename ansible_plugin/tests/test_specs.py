"""Unit tests of spindle_ansible.specs's option checks: a port or timeout that is not an
integer in range is an AnsibleError naming it, never a silently different number
(issue 13: ``ansible_port='2201 x'`` became port 22).

Needs ansible-core (skipped without it). Run: python3 -m unittest discover -s ansible_plugin/tests
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:
    from ansible.errors import AnsibleError
    from spindle_ansible import specs
except ImportError:  # pragma: no cover - ansible-core not installed
    specs = None


@unittest.skipIf(specs is None, "ansible-core is not installed")
class IntOptionTest(unittest.TestCase):
    def builder_spec(self, **options):
        def option(name):
            return options.get(name)

        b = specs.SpecBuilder('spindle', '192.0.2.1', None, 'web1')
        return b.spec_from(option, 'ssh', name='web1')

    def test_ports(self):
        for good, want in ((2201, 2201), ('2201', 2201), (' 22 ', 22), (22.0, 22), (None, None), ('', None)):
            self.assertEqual(specs.int_option(good, 'port', 'web1', 1, 65535), want, good)
        for bad in ('2201 x', '22x', '0x16', 22.5, True, 0, -1, 65536, [22]):
            with self.assertRaises(AnsibleError) as cm:
                specs.int_option(bad, 'port', 'web1', 1, 65535)
            self.assertIn('port', str(cm.exception))
            self.assertIn('web1', str(cm.exception))

    def test_spec_from_refuses_a_bad_port_and_timeout(self):
        self.assertEqual(self.builder_spec(port='2201').port, 2201)
        with self.assertRaises(AnsibleError):
            self.builder_spec(port='2201 x')
        self.assertIsNone(self.builder_spec(timeout=0).connect_timeout)
        self.assertEqual(self.builder_spec(timeout='45').connect_timeout, 45)
        for bad in ('10 s', 18446744073709551615, -5, 7 * 24 * 3600 + 1):
            with self.assertRaises(AnsibleError):
                self.builder_spec(timeout=bad)


if __name__ == '__main__':
    unittest.main()
