"""The bigram example's mapper, written as a user would; it counts with the built-in reductio.reducers.sum."""


def letter_pairs(word, _value):
    """Yield (bigram, "1") for each pair of adjacent letters in the lowercased word."""
    word = word.lower()
    for first, second in zip(word, word[1:]):
        if first.isalpha() and second.isalpha():
            yield first + second, "1"

