"""Static checks of the wheel's packaging (ansible_plugin/pyproject.toml, maturin).

The wheel's version is the crate's (Cargo.toml, maturin's dynamic version), so
``spindle_ansible.__version__`` has to follow it; the wheel ships the crate's ``spindle`` bin
only.  Building and installing the wheel is tested in tests/ansible/test_wheel.py.

Run: python3 -m unittest discover -s ansible_plugin/tests -v    (from the repository root)
"""

import os
import re
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)
REPO = os.path.dirname(PKG_ROOT)

sys.path.insert(0, PKG_ROOT)

import spindle_ansible  # noqa: E402


def _read(*parts):
    with open(os.path.join(*parts)) as f:
        return f.read()


class PackagingTests(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(os.path.join(REPO, 'Cargo.toml')):
            self.skipTest('not in the spindle repository (no ../Cargo.toml)')
        self.pyproject = _read(PKG_ROOT, 'pyproject.toml')

    def test_version_is_the_crates(self):
        cargo = re.search(r'^version\s*=\s*"([^"]+)"', _read(REPO, 'Cargo.toml'), re.M).group(1)
        self.assertEqual(
            spindle_ansible.__version__,
            cargo,
            'spindle_ansible.__version__ must follow Cargo.toml (the wheel\'s version)',
        )
        self.assertRegex(self.pyproject, r'(?m)^dynamic = \["version"\]$')

    def test_maturin_bin_spindle_only(self):
        self.assertRegex(self.pyproject, r'(?m)^build-backend = "maturin"$')
        self.assertRegex(self.pyproject, r'(?m)^bindings = "bin"$')
        self.assertRegex(self.pyproject, r'(?m)^targets = \[\{ name = "spindle", kind = "bin" \}\]$')
        self.assertRegex(self.pyproject, r'(?m)^manifest-path = "\.\./Cargo\.toml"$')

    def test_maturin_pin_within_build_requirement(self):
        pin = re.search(r'(?m)^MATURIN_VERSION=(\S+)', _read(REPO, 'scripts', 'venv.sh')).group(1)
        low, high = re.search(r'"maturin>=([\d.]+),<([\d.]+)"', self.pyproject).groups()

        def key(v):
            return tuple(int(x) for x in v.split('.'))

        self.assertTrue(key(low) <= key(pin) < key(high), (pin, low, high))


if __name__ == '__main__':
    unittest.main()
