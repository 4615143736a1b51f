"""Build the optional C module of prepare's duplicate check (``pip install ./native``)."""

from setuptools import Extension, setup

setup(
    name="openai-batch-fingerprints",
    version="1.0.0",
    description="The request-id fingerprints of prepare's duplicate check, in C.",
    ext_modules=[Extension("openai_batch_fingerprints", ["fingerprints.c"], extra_compile_args=["-O2"])],
)
