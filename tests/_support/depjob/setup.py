from setuptools import setup

setup(name="depjob", version="0.1", packages=["depjob"], install_requires=["tinydep"])
