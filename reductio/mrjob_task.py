"""One substep of an mrjob script on a worker: ``python3 -m reductio.mrjob_task JOB.py --step-num=N --mapper ...``.

mrjob encodes keys with ujson, rapidjson or simplejson when it can import
them, else with the standard library's json, and they write the same key
as different bytes. Keys are partitioned by their bytes, so every worker
must encode alike: this hides the other libraries from the script, which
then runs unchanged as its own ``__main__``, importing the ``mrjob.zip``
of the head's mrjob shipped into its working folder (mrjobs.py) when
there is one. Standard library only.
"""

import os
import runpy
import sys

_OTHER_JSON = ("ujson", "rapidjson", "simplejson")


def main() -> None:
    for name in _OTHER_JSON:
        sys.modules[name] = None  # importing it raises ImportError: mrjob falls back to json
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    if os.path.isfile("mrjob.zip"):
        sys.path.insert(0, os.path.abspath("mrjob.zip"))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
