# A collection's module_utils, used by its module spx.test.hello.
def greet(name):
    return 'hello %s from a collection' % name
