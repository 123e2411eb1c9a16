"""The benchmark's map and reduce functions, shared by every Python contender."""


def line_bigrams(line, _value=""):
    """Letter bigrams of each word of a line (lowercased, both letters alphabetic): the example's rule."""
    for word in line.lower().split():
        for first, second in zip(word, word[1:]):
            if first.isalpha() and second.isalpha():
                yield first + second, "1"


def word_pairs(line, _value=""):
    """Adjacent word pairs of a line: many distinct keys, intermediate data larger than the input."""
    words = line.split()
    for first, second in zip(words, words[1:]):
        yield first + " " + second, "1"


def count(key, values):
    yield key, str(sum(int(value) for value in values))
