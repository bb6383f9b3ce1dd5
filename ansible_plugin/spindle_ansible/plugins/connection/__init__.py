"""Ansible connection plugins of spindle (the ``spindle`` connection)."""
