"""The cluster key's forced command as authorized_keys lines name it (``from reductio.gate import main``).

Lines written by every setup, earlier ones too, run this name; the gate itself is reductio/worker/gate.py.
"""

import sys

from reductio.worker.gate import main

if __name__ == "__main__":
    sys.exit(main())
