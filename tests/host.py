"""What tests look at on the host, outside any sandbox."""

import os

from jail import DEFAULT_POLICY


def sandbox_processes(marker=b"/opt/harness/", uid_range=True):
    """Host pids that belong to sandboxes: a uid of the sandbox range (a root
    server; unless uid_range is False), or a command line carrying marker."""
    first, count = DEFAULT_POLICY.uid_range
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, StopIteration):
            continue
        if (uid_range and first <= uid < first + count) or marker in cmdline:
            found.append(int(pid))
    return found
