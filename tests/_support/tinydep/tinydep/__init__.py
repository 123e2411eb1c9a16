"""A dependency that SSH workers can only get from a wheelhouse."""


def shout(text):
    return text.upper()
