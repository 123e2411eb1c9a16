"""The worker: ``python -m reductio.worker`` (``__main__.py``), each step's worker half, the store and
the gate. Standard library only (tests/test_boundary.py); kept empty: the gate imports it on every
scatter connection.
"""
