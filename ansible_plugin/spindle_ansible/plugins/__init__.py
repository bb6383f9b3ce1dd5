"""Ansible plugins of spindle: the ``spindle`` connection, the ``spindle_linear`` and
``spindle_free`` strategies and the ``spindle_record`` callback (``python -m spindle_ansible``
prints the ansible.cfg lines that enable them)."""
