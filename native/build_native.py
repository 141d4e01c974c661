"""cffi builder of jail._native (out-of-line API mode).

Wired in setup.py through ``cffi_modules``. The cdef is launcher.h itself, so
the C and Python views of the structs cannot drift apart; the version is baked
in so that jail can refuse a stale build at import.
"""

import pathlib
import re

from cffi import FFI

NATIVE = pathlib.Path(__file__).resolve().parent
ROOT = NATIVE.parent


def _version() -> str:
    text = (ROOT / "jail" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


ffi = FFI()
ffi.cdef((NATIVE / "launcher.h").read_text() + (NATIVE / "zygote.h").read_text())
ffi.set_source(
    "jail._native",
    '#include <stdint.h>\n#include <stddef.h>\n#include "launcher.h"\n#include "zygote.h"\n',
    sources=["native/launch.c", "native/mount.c", "native/caps.c"],
    include_dirs=[str(NATIVE)],
    define_macros=[("JAIL_NATIVE_VERSION", f'"{_version()}"')],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
