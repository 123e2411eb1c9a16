"""A job whose mapper needs a dependency: tinydep."""

import tinydep


def shouted(key, value):
    yield tinydep.shout(key), value
