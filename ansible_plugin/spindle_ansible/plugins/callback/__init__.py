"""Ansible callback plugins of spindle (``spindle_record``: results as JSON for comparing runs)."""
