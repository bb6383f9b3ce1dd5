#!/usr/bin/python
# A collection module importing the collection's own module_utils.
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.spx.test.plugins.module_utils.greet import greet


def main():
    m = AnsibleModule(argument_spec=dict(name=dict(type='str', default='world')))
    m.exit_json(changed=False, msg=greet(m.params['name']))


if __name__ == '__main__':
    main()
