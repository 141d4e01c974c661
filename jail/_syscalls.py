"""The seccomp allowlists, as data (x86_64 names, as libseccomp spells them).

Deny by default. What a snippet meets when it calls something not listed:

* ``EPERM`` for everything not named here: the snippet gets a clean
  ``PermissionError`` / ``EPERM`` it can report, e.g. ``socket(AF_INET)``,
  opening a file for writing, ``personality``, ``ioctl`` commands other than
  the few a runtime asks on its own fds.
* ``ENOSYS`` for ``clone3`` and ``openat2``: their arguments live in memory the
  filter cannot read, and libc falls back to ``clone`` / ``openat`` (whose
  arguments it can check) on ENOSYS only.
* the process is killed (SIGSYS) for the calls in ``KILL``: no interpreter
  makes them on its own, so a snippet that does can only be probing for a way
  out (debugging other processes, mounts, new namespaces, kernel keyrings, BPF,
  io_uring, module loading ...). ``clone`` with any namespace flag is killed too.

``socket`` and ``socketpair`` are allowed for ``AF_UNIX`` only, ``clone`` without
namespace flags only, ``ioctl`` and ``prctl`` for the requests listed below only.

A zygote's filter is its profile's plus ``ZYGOTE`` (see there).

A profile is ``COMMON`` plus its extras (``PYTHON`` needs nothing more); the policy's
``scratch`` switch adds ``SCRATCH_WRITES`` and lifts the open-for-writing check
(the mount namespace still makes everything but the scratch folder read-only).
"""

import os

# Flags of open/openat that ask for writing: refused unless the policy has a scratch folder.
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE without O_DIRECTORY
OPEN_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | O_TMPFILE_BIT

# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
NAMESPACE_CLONE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80

AF_UNIX = 1

# ioctl requests a runtime makes on its own stdio and sockets.
IOCTL_REQUESTS = (
    0x5401,  # TCGETS (isatty)
    0x5413,  # TIOCGWINSZ
    0x5421,  # FIONBIO
    0x5451,  # FIOCLEX
    0x5450,  # FIONCLEX
    0x541B,  # FIONREAD
)

# prctl options that only name or inspect the calling thread.
PRCTL_OPTIONS = (
    3,  # PR_GET_DUMPABLE
    15,  # PR_SET_NAME
    16,  # PR_GET_NAME
    21,  # PR_GET_SECCOMP
    23,  # PR_CAPBSET_READ
    39,  # PR_GET_NO_NEW_PRIVS
    0x53564D41,  # PR_SET_VMA (glibc names its anonymous mappings)
)

# Allowed as they are: memory, fds the process already has, time, signals
# within its own pid namespace, threads, and reading the read-only tree.
COMMON = (
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "close", "close_range", "dup", "dup2", "dup3", "fcntl", "flock", "fsync", "fdatasync", "lseek",
    "fstat", "newfstatat", "stat", "lstat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2",
    "readlink", "readlinkat", "getdents64", "getcwd", "chdir", "fchdir", "umask",
    "sendfile", "copy_file_range", "splice", "tee",
    "mmap", "mprotect", "munmap", "mremap", "madvise", "mincore", "msync", "brk",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigpending",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "kill", "tkill", "tgkill", "pause", "alarm",
    "getitimer", "setitimer", "restart_syscall",
    "pipe", "pipe2", "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "timerfd_create", "timerfd_settime", "timerfd_gettime",
    "sendmsg", "recvmsg", "sendto", "recvfrom", "sendmmsg", "recvmmsg", "shutdown",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "bind", "listen", "accept", "accept4", "connect",
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
    "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid",
    "getresgid", "getpgrp", "getpgid", "getsid", "setsid", "setpgid",
    "uname", "sysinfo", "getrusage", "times", "getrlimit", "setrlimit", "prlimit64", "getcpu",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_getscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "getpriority",
    "futex", "set_robust_list", "get_robust_list", "set_tid_address", "rseq", "arch_prctl", "getrandom",
    "fork", "vfork", "execve", "wait4", "waitid", "exit", "exit_group",
)

PYTHON = ()
# V8 and libuv: memory protection keys and barriers for JIT code, eventfds for the loop.
JAVASCRIPT = ("pkey_alloc", "pkey_free", "pkey_mprotect", "membarrier", "memfd_create", "capget", "eventfd", "eventfd2")

# Calls that change the file tree: allowed only with a scratch folder.
SCRATCH_WRITES = (
    "creat", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "ftruncate", "truncate",
    "utimensat", "utimes", "futimesat", "fallocate",
)

ENOSYS = ("clone3", "openat2")

KILL = (
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "iopl", "ioperm", "quotactl",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "vhangup", "syslog", "uselib",
)

# The zygote (native/zygote.c) makes each child's namespaces, ids and limits
# before the child installs the profile's own filter on top of this one: these
# calls are the zygote's alone, never a snippet's (rmdir: it removes its /proc
# mount point). It may also open /proc files for writing (the id maps) and use
# any prctl.
ZYGOTE = (
    "unshare", "setns", "mount", "umount2", "pidfd_open", "setresuid", "setresgid", "setgroups",
    "capset", "seccomp", "sethostname", "rmdir",
)

PROFILE_EXTRAS = {"base": (), "python": PYTHON, "javascript": JAVASCRIPT}
