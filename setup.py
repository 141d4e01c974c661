"""Only what pyproject.toml cannot say: the C parts.

jail._native is the launcher (cffi). jail._zygote_server is the fork server that runs
inside warm sandboxes (native/zygote.c): a plain shared library that the
harnesses load (Python with ctypes, Node as an addon), never imported by jail.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ZYGOTE = Extension(
    "jail._zygote_server",
    sources=["native/zygote.c", "native/caps.c"],
    include_dirs=["native", "/usr/include/node"],
    # It is mounted into every warm sandbox: no debug info, symbols or source
    # paths that would tell a snippet where the service was built (DESIGN section 2).
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-g0"],
    extra_link_args=["-s"],
)


class BuildExt(build_ext):
    """The fork server needs nothing but libc: it is linked without the
    interpreter's run path (a host path, e.g. the prefix of a pyenv Python)."""

    def build_extension(self, ext):
        if ext is not ZYGOTE:
            return super().build_extension(ext)
        linker = self.compiler.linker_so
        self.compiler.linker_so = [arg for arg in linker if not arg.startswith(("-Wl,-rpath", "-L"))]
        try:
            return super().build_extension(ext)
        finally:
            self.compiler.linker_so = linker


setup(cffi_modules=["native/build_native.py:ffi"], ext_modules=[ZYGOTE], cmdclass={"build_ext": BuildExt})
