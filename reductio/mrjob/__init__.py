"""Unmodified mrjob scripts on reductio: the head's runner (runner.py) and the worker's task runner
(task.py). Importable without Fabric, as a worker imports it.
"""
