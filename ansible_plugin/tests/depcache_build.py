"""Helper of test_depcache (run in a new process, not a test module itself): build the
module_utils file set of the named builtin modules with ansible-core's own
``module_common.recursive_finder``, with spindle's ``depfinder-cache`` patch (``patched``) or
without it (``stock``), and print as JSON a digest of each payload and how many files the
dependency finder walked."""

import datetime
import hashlib
import inspect
import io
import json
import sys
import zipfile

from ansible.executor import module_common as mc
from ansible.plugins.loader import init_plugin_loader, module_loader


def main(mode, names):
    init_plugin_loader()
    if mode == 'patched':
        from spindle_ansible import compat

        compat.install_depcache()
    walks = [0]
    real_visit = mc.ModuleDepFinder.visit

    def visit(self, node):
        walks[0] += 1
        return real_visit(self, node)

    mc.ModuleDepFinder.visit = visit
    out = {}
    for name in names:
        path = module_loader.find_plugin('ansible.builtin.' + name)
        with open(path, 'rb') as f:
            data = f.read()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, 'w') as zf:
            if 'extension_manager' in inspect.signature(mc.recursive_finder).parameters:
                from ansible._internal._ansiballz import _builder

                when = datetime.datetime(2020, 1, 1)
                mc.recursive_finder(
                    name, 'ansible.modules.' + name, data, zf, when, _builder.ExtensionManager()
                )
            else:
                mc.recursive_finder(name, 'ansible.modules.' + name, data, zf, (2020, 1, 1, 0, 0, 0))
            h = hashlib.sha256()
            for n in sorted(zf.namelist()):
                h.update(n.encode() + b'\0' + zf.read(n) + b'\0')
            out[name] = [len(zf.namelist()), h.hexdigest()]
    print(json.dumps({'files': out, 'walks': walks[0]}))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2:])
