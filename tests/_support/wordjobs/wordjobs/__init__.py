"""Jobs the tests run, written as a user of reductio would."""


def words(key, value):
    """Each word of the value (or of the key, for text lines) with a count of 1."""
    for word in (value or key).split():
        yield word, "1"


def identity(key, value):
    yield key, value


def total(key, values):
    yield key, str(sum(int(v) for v in values))


def anagram_key(word, _value):
    word = word.strip()
    if word:
        yield "".join(sorted(word.lower())), word


def anagram_class(key, words):
    members = sorted(set(words))
    if len(members) > 1:
        yield key, " ".join(members)


def first_value(key, values):
    yield key, next(iter(values))


def raises_on_boom(key, value):
    if key == "boom":
        raise ValueError("no booms allowed")
    yield key, value


def yields_int(key, value):
    yield key, 1


def yields_triple(key, value):
    yield key, value, "extra"


def yields_tab_key(key, value):
    yield key + "\tx", value


def yields_newline_value(key, value):
    yield key, value + "\nmore"


def returns_none(key, value):
    return None


def split_words(line, out):
    """A transform: one pair per word, and the raw line back as text."""
    for word in line.split():
        out.write_pair(word, "1")
    out.write("raw:" + line)


def generate(out):
    """An initialize function: pairs and a raw line."""
    for i in range(1000):
        out.write_pair(f"k{i % 17}", str(i))
    out.write("no tab here")


def slow_generate(out):
    """An initialize function that pauses longer than the tests' short dead_after between its lines."""
    import time

    out.write_pair("first", "1")
    time.sleep(2.5)
    out.write_pair("second", "2")


not_a_function = 42


def _pause_if_asked(key, value):
    """On key "pause", whose value names a file that exists: say so, then wait to be killed."""
    import os
    import time

    if key == "pause" and os.path.exists(value):
        with open(value + ".reaching", "w") as flag:
            flag.write(str(os.getpid()))
        os.replace(value + ".reaching", value + ".reached")  # whole or absent: a test reads it once it exists
        time.sleep(120)


def pausing(key, value):
    """identity, pausing where a test asks it to."""
    _pause_if_asked(key, value)
    yield key, value


def pausing_count(key, values):
    """A reducer counting values, pausing where a test asks it to."""
    values = list(values)
    _pause_if_asked(key, values[0])
    yield key, str(len(values))


def gather(key, values):
    """A reducer whose output shows every value: count, then the values sorted, tab-joined."""
    values = sorted(values)
    yield key, "\t".join([str(len(values))] + values)


def big_output(key, value):
    """Yields a megabyte per record: for filling a small disk."""
    yield key, "x" * (1 << 20)


def slow_identity(key, value):
    """identity at about a thousand records a second: long enough to watch."""
    import time

    time.sleep(0.001)
    yield key, value


def waiting_identity(key, value):
    """identity that waits 5 ms a record: a step that takes time without using the CPU."""
    import time

    time.sleep(0.005)
    yield key, value


def busy_identity(key, value):
    """identity after a millisecond or so of pure computing: CPU time, where slow_identity sleeps."""
    sum(range(20_000))
    yield key, value


def counted_words(key, value):
    """words, incrementing user counters on the way."""
    from reductio.counters import increment

    increment("records")
    for word in (value or key).split():
        increment("long words" if len(word) > 4 else "short words")
        yield word, "1"


def one_key(key, value):
    """Every record under one key: all the data ends on one worker."""
    yield "same", value


def first_value_raising(key, values):
    """A reducer that fails: for combiner error tests."""
    raise RuntimeError(f"cannot combine {key}")


def doubled(key, value):
    """The value written twice: a line can grow past max_record."""
    yield key, value + value


def long_lines(out):
    """An initialize function writing one line of 2,000 bytes after a short one."""
    out.write_pair("short", "line")
    out.write_pair("long", "v" * 2000)
