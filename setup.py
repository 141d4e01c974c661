"""Only what pyproject.toml cannot say: the C parts.

jail._native is the launcher (cffi). jail._zygote_server is the fork server that runs
inside warm sandboxes (native/zygote.c): a plain shared library that the
harnesses load (Python with ctypes, Node as an addon), never imported by jail.
"""

from setuptools import Extension, setup

ZYGOTE = Extension(
    "jail._zygote_server",
    sources=["native/zygote.c", "native/caps.c"],
    include_dirs=["native", "/usr/include/node"],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"],
)

setup(cffi_modules=["native/build_native.py:ffi"], ext_modules=[ZYGOTE])
