"""Build the _xthread extension.

Warnings are on (-Wall -Wextra) but not fatal by default, since users'
compilers differ; CI adds -Werror through CFLAGS.
"""
from setuptools import Extension, setup

# One C file per concept, each with a header of what it offers (README,
# "How the code is laid out"); module.c holds only the module definition.
PARTS = ["module", "record", "park", "lock", "thread", "deliver", "landing",
         "wake", "scope"]
HEADERS = ["xthread", "compat", "sanitizer"]    # no .c of their own

setup(
    ext_modules=[
        Extension(
            "_xthread",
            sources=[f"src/_xthread/{part}.c" for part in PARTS],
            depends=[f"src/_xthread/{h}.h" for h in PARTS + HEADERS],
            # Only PyInit__xthread leaves the shared object: the parts
            # call each other by plain names.
            extra_compile_args=["-std=c11", "-Wall", "-Wextra",
                                "-fvisibility=hidden"],
        )
    ],
)
