"""Mapper and reducer of the bigram example, written as a user would write them."""


def letter_pairs(word, _value):
    """Yield (bigram, "1") for each pair of adjacent letters in the lowercased word."""
    word = word.lower()
    for first, second in zip(word, word[1:]):
        if first.isalpha() and second.isalpha():
            yield first + second, "1"


def count(bigram, ones):
    """Yield (bigram, how many times it was seen)."""
    yield bigram, str(sum(int(one) for one in ones))
