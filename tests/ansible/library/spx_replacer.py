#!/usr/bin/python
# "Module Replacer" style: Ansible substitutes the line below with module_utils.basic.
#<<INCLUDE_ANSIBLE_MODULE_COMMON>>


def main():
    m = AnsibleModule(argument_spec=dict(n=dict(type='int', default=1)))
    m.exit_json(changed=True, msg='replacer n=%d' % (m.params['n'] * 2))


main()
