#!/usr/bin/python
# New-style module using a module_utils file beside the playbook (tests/ansible/module_utils).
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.spx_util import shout


def main():
    m = AnsibleModule(argument_spec=dict(word=dict(type='str', required=True)))
    m.exit_json(changed=False, msg=shout(m.params['word']))


if __name__ == '__main__':
    main()
