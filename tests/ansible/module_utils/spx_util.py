# module_utils beside the playbook, used by library/spx_newstyle.py.
def shout(word):
    return word.upper() + '!'
