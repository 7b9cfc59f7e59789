"""Build the compiled core: kstore._core from src/kstore/_core.pyx plus the C files in csrc/.

KSTORE_SANITIZE=1 builds with AddressSanitizer and UndefinedBehaviorSanitizer (see README).
KSTORE_WERROR=1 turns C warnings into errors (CI does this for the C files).
"""

import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

CSRC = ["csrc/batch.c", "csrc/crc32c.c", "csrc/index.c", "csrc/murmur2.c", "csrc/shared.c"]

compile_args = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-function"]
link_args = []
if os.environ.get("KSTORE_WERROR") == "1":
    compile_args.append("-Werror")
if os.environ.get("KSTORE_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    compile_args = [a for a in compile_args if a != "-O3"] + ["-O1", "-g"] + san
    link_args += san
if os.environ.get("KSTORE_DEBUG") == "1":
    compile_args += ["-g", "-DKSTORE_DEBUG=1"]

ext = Extension(
    "kstore._core",
    sources=["src/kstore/_core.pyx", *CSRC],
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(
    ext_modules=cythonize([ext], compiler_directives={"language_level": "3"}, quiet=True),
)
