"""The benchmark's job module as a project, so distribute installs it on SSH workers."""

from setuptools import setup

setup(name="reductio-bench-jobs", version="1.0", py_modules=["jobs"])
