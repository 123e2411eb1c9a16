from setuptools import setup

setup(name="wordjobs", version="0.1", packages=["wordjobs"])
