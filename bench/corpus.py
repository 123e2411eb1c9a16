"""A deterministic corpus: lines of 10 ASCII words drawn Zipf-like (fixed seed) from the words file.

ASCII only, so awk in the C locale and Python agree on what a letter is.
"""

import random
import sys
from pathlib import Path

WORDS = Path("/usr/share/dict/words")


def make(path: Path, size: int, seed: int = 42) -> Path:
    if path.exists() and path.stat().st_size >= size:
        return path
    words = [w.strip() for w in WORDS.read_text(encoding="utf-8").splitlines() if w.strip() and w.isascii()]
    rng = random.Random(seed)
    rng.shuffle(words)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    partial = path.with_suffix(".part")
    written = 0
    with open(partial, "w", encoding="utf-8") as out:
        while written < size:
            chunk = rng.choices(words, weights=weights, k=100_000)
            text = "".join(" ".join(chunk[i:i + 10]) + "\n" for i in range(0, len(chunk), 10))
            out.write(text)
            written += len(text.encode("utf-8"))
    partial.rename(path)
    return path


if __name__ == "__main__":
    make(Path(sys.argv[1]), int(sys.argv[2]))
