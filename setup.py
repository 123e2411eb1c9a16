"""reductio: map-reduce for people who already deploy Python with Fabric and setuptools."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "reductio" / "__init__.py").read_text()).group(1)

setup(
    name="reductio",
    version=VERSION,
    description="Minimal map-reduce over SSH as a library of Fabric tasks",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="BSD-2-Clause",
    packages=find_packages(include=["reductio", "reductio.*"]),
    package_data={"reductio.example": ["sample-words.txt"]},
    python_requires=">=3.9",
    # paramiko: liveness.py and cluster.py reach into Transport.sock and .packetizer (try a new major first);
    # cryptography makes the cluster key (trust.py); build: the sdists and wheels for SSH workers (packaging.py)
    install_requires=["fabric>=3.2,<4", "invoke>=2.2,<3", "paramiko>=3.4,<6", "cryptography>=3.3", "build>=1",
                      "setuptools>=70.1", "tqdm>=4.60"],
    extras_require={
        # mrjob 0.7.4 imports pipes, gone from Python 3.13's standard library (distutils comes with setuptools);
        # reductio.mrjob_task stands in for both where they are missing, as on the workers
        "mrjob": ["mrjob==0.7.4", "standard-pipes; python_version >= '3.13'"],
        # warcio: mrjob's mr_phone_to_url example reads WET files with it
        "test": ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6", "build>=1", "mrjob==0.7.4",
                 "standard-pipes; python_version >= '3.13'", "warcio>=1.7"],
    },
    entry_points={"console_scripts": ["reductio = reductio.cli:program.run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Distributed Computing",
    ],
)
