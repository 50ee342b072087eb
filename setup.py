"""callhome: a NETCONF Call Home manager (RFC 8071) on Twisted."""

from setuptools import find_packages, setup

setup(
    name="callhome",
    version="0.1.0",
    description="NETCONF Call Home manager (RFC 8071) on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["callhome", "callhome.*"]) + ["twisted.plugins"],
    package_data={
        "callhome.control": ["openapi.yaml"],
        "callhome.control.page": ["status.html", "status.js"],
        "callhome.simulator": ["datastore.xml", "yang/*.yang"],
        "twisted": ["plugins/callhome_plugin.py"],
    },
    install_requires=[
        "twisted[conch,tls]>=24.7",  # tls: pyOpenSSL and service_identity (TLS call home, issue 12)
        "cryptography>=42",
        "lxml>=5",
        "pyyaml>=6",
        "prometheus_client>=0.17",  # GET /metrics (issue 5)
    ],
    extras_require={
        # mypy runs in ./scripts/test: mypy-zope reads Twisted's interfaces as types.
        "test": [
            "pytest>=8", "asyncssh>=2.14", "mypy>=1.10", "mypy-zope>=1.0", "types-lxml", "types-PyYAML", "hypothesis>=6",
            "psycopg[binary]>=3.1",
        ],
        # store.database: postgresql://... (a cluster of instances, issue 13)
        "postgresql": ["psycopg[binary]>=3.1"],
        "bench": ["asyncssh>=2.14", "psycopg[binary]>=3.1"],
    },
    entry_points={
        "console_scripts": [
            "callhome = callhome.tools.cli:main",
            "callhome-device = callhome.simulator.cli:main",
        ],
    },
)
