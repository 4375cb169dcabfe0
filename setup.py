"""Build the _xthread extension.

Warnings are on (-Wall -Wextra) but not fatal by default, since users'
compilers differ; CI adds -Werror through CFLAGS.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "_xthread",
            sources=["src/_xthread/_xthreadmodule.c"],
            depends=["src/_xthread/compat.h", "src/_xthread/sanitizer.h"],
            extra_compile_args=["-std=c11", "-Wall", "-Wextra"],
        )
    ],
)
