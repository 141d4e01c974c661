"""What each interpreter needs inside the sandbox, found once on this host.

A runtime is data: the interpreter's path inside, its flags, its clean
environment, and the read-only mounts it needs. Host paths are mounted at
neutral places (/opt/python, /opt/node, /opt/harness) so that nothing inside
tells where or how the service is installed on the host.
"""

import dataclasses
import functools
import importlib.util
import os
import shutil
import sys
import sysconfig

from jail._errors import SandboxError


@dataclasses.dataclass(frozen=True)
class Mount:
    kind: str  # "bind", "dev", "tmpfs", "proc" or "symlink"
    target: str  # absolute path inside the sandbox
    source: str = None  # host path (bind, dev) or link text (symlink)
    options: str = None  # tmpfs options
    readonly: bool = False  # tmpfs only: binds are always read-only
    noexec: bool = False  # tmpfs only


@dataclasses.dataclass(frozen=True)
class Runtime:
    name: str
    executable: str  # inside the sandbox
    flags: tuple  # interpreter flags, before the program and its arguments
    env: tuple  # (name, value) pairs: the whole environment
    mounts: tuple
    seccomp_profile: str  # a key of jail._syscalls.PROFILE_EXTRAS
    memory_rlimit: str  # "as" (address space) or "data" (see jail._sandbox)


DEVICES = tuple(Mount("dev", f"/dev/{name}", f"/dev/{name}") for name in ("null", "zero", "urandom"))
HARNESS_INSIDE = "/opt/harness"


def _resolve_mounts(host_path: str) -> list:
    """Mounts that make host_path reachable inside at the same path: symlinked
    components (merged /usr: /lib -> usr/lib) become symlinks, and the real
    directory is bound."""
    mounts, resolved = [], "/"
    for part in host_path.strip("/").split("/"):
        candidate = os.path.join(resolved, part)
        if os.path.islink(candidate):
            mounts.append(Mount("symlink", candidate, os.readlink(candidate)))
            resolved = os.path.realpath(candidate)
        else:
            resolved = candidate
    mounts.append(Mount("bind", resolved, resolved))
    return mounts


@functools.lru_cache(maxsize=None)
def system_libraries() -> tuple:
    """The dynamic loader and the shared libraries of the interpreters."""
    loader = "/lib64/ld-linux-x86-64.so.2"
    if not os.path.exists(loader):
        raise SandboxError(f"dynamic loader {loader} not found: only x86_64 glibc hosts are supported")
    libdir = os.path.dirname(os.path.realpath(loader))  # /usr/lib/x86_64-linux-gnu on Debian
    multiarch = os.path.basename(libdir)
    mounts = []
    for path in ("/lib64", f"/lib/{multiarch}", libdir):
        for mount in _resolve_mounts(path) if os.path.exists(path) else ():
            if mount not in mounts:
                mounts.append(mount)
    return tuple(mounts)


def harness() -> Mount:
    """The harness folder (installed as the data package jail_harness), read-only at /opt/harness."""
    spec = importlib.util.find_spec("jail_harness")
    if spec is None or not spec.submodule_search_locations:
        raise SandboxError("the harness folder (package jail_harness) is not installed: run `make setup`")
    return Mount("bind", HARNESS_INSIDE, os.path.realpath(list(spec.submodule_search_locations)[0]))


def _base_python() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


@functools.lru_cache(maxsize=None)
def python() -> Runtime:
    """The server's own base interpreter, relocated to /opt/python. It may sit
    under /root (mode 0700): the launcher opens its folders before it drops to
    the sandbox uid, so the binds still work."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = sysconfig.get_path("stdlib")
    mounts = [Mount("bind", "/opt/python/bin/python3", _base_python()), Mount("bind", f"/opt/python/lib/{version}", stdlib)]
    # Other installed packages are not the snippet's business: hide them.
    if os.path.isdir(os.path.join(stdlib, "site-packages")):
        mounts.append(Mount("tmpfs", f"/opt/python/lib/{version}/site-packages", options="size=4k,mode=0555", readonly=True))
    shared = os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or "")
    env = [("PATH", "/opt/python/bin"), ("LANG", "C.UTF-8")]
    if os.path.isfile(shared):
        mounts.append(Mount("bind", f"/opt/python/lib/{os.path.basename(shared)}", shared))
        env.append(("LD_LIBRARY_PATH", "/opt/python/lib"))
    return Runtime(
        name="python",
        executable="/opt/python/bin/python3",
        # isolated (no user site, no PYTHON* variables), no site, no bytecode writes,
        # UTF-8 and unbuffered stdio (output streams as it is printed)
        flags=("-I", "-S", "-B", "-u", "-X", "utf8"),
        env=tuple(env),
        mounts=system_libraries() + tuple(mounts) + (harness(),),
        seccomp_profile="python",
        memory_rlimit="as",
    )


@functools.lru_cache(maxsize=None)
def javascript() -> Runtime:
    node = shutil.which("node")
    if node is None:
        raise SandboxError("the javascript runtime needs `node` (Node.js 20) on PATH")
    return Runtime(
        name="javascript",
        executable="/opt/node/bin/node",
        flags=(),
        env=(("PATH", "/opt/node/bin"), ("LANG", "C.UTF-8")),
        mounts=system_libraries() + (Mount("bind", "/opt/node/bin/node", os.path.realpath(node)), harness()),
        seccomp_profile="javascript",
        # V8 reserves far more address space than it uses: bound data, not AS.
        memory_rlimit="data",
    )


def binary(host_path: str) -> Runtime:
    """Any host program (e.g. /usr/bin/env), bound at /opt/bin: for tests and
    benchmarks of the launcher itself."""
    name = os.path.basename(host_path)
    return Runtime(
        name=name,
        executable=f"/opt/bin/{name}",
        flags=(),
        env=(("PATH", "/opt/bin"),),
        mounts=system_libraries() + (Mount("bind", f"/opt/bin/{name}", os.path.realpath(host_path)),),
        seccomp_profile="base",
        memory_rlimit="as",
    )


LANGUAGES = {"python": python, "javascript": javascript}
HARNESS = {"python": "run.py", "javascript": "run.js"}  # each language's harness, in harness/
# A zygote's fork server (native/zygote.c), as its harness finds it inside.
ZYGOTE_LIBRARY = "/opt/zygote/zygote.so"
# Interpreter flags of a zygote: V8 must not keep work on helper threads, which a fork does not copy.
ZYGOTE_FLAGS = {"python": (), "javascript": ("--single-threaded",)}
