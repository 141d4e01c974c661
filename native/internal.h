/* Shared by the launcher's C files; not part of the cffi interface.
 *
 * Everything here may run in the child between clone and exec, where the
 * parent was a threaded Python process: only async-signal-safe calls, nothing
 * allocated, no stdio, no locks. */
#ifndef JAIL_INTERNAL_H
#define JAIL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "launcher.h"

/* Longest path the launcher builds (staging prefix + target). */
#define JAIL_PATH_BUF 4096

/* The child's view of one launch: its config, the report pipe, and the fds it
 * opened on the host side before it changed uid. */
struct child_state {
    const struct jail_config *config;
    int report_fd;
    int source_fds[JAIL_MAX_MOUNTS];
};

/* Writes {step, errno, index} to the report pipe and exits; never returns. */
_Noreturn void child_fail(const struct child_state *state, int step, int index);

/* mount.c: the new root. */
void open_mount_sources_child(struct child_state *state);
void build_root_child(struct child_state *state);

/* Copies src after dst's first `used` bytes; returns the new length or -1 if
 * it would not fit (the buffer always stays NUL-terminated). */
long path_append(char *dst, long used, long size, const char *src);
/* The same for the decimal digits of n (no printf after fork). */
long path_append_uint(char *dst, long used, long size, unsigned long n);

#endif
