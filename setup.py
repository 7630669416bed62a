# setuptools reads the project metadata from pyproject.toml; only the cffi hook lives here,
# because cffi_modules has no pyproject.toml spelling.
from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
