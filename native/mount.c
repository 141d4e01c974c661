/* The sandbox's new root: a tmpfs holding read-only binds of what the
 * interpreter needs, made in the child's private mount namespace.
 *
 * Runs in the child between clone and exec: async-signal-safe calls only. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

long path_append(char *dst, long used, long size, const char *src)
{
    while (*src) {
        if (used + 1 >= size)
            return -1;
        dst[used++] = *src++;
    }
    dst[used] = '\0';
    return used;
}

long path_append_uint(char *dst, long used, long size, unsigned long n)
{
    char digits[24];
    int count = 0;

    do {
        digits[count++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (count > 0) {
        if (used + 1 >= size)
            return -1;
        dst[used++] = digits[--count];
    }
    dst[used] = '\0';
    return used;
}

/* mkdir -p of path, from the character at `from` on (the staging prefix
 * already exists). Directories are made by us before anything runs inside, so
 * nothing here can meet a symlink the snippet planted. */
static int mkdir_parents(char *path, long from, int include_last)
{
    for (long i = from + 1; path[i]; i++) {
        if (path[i] != '/')
            continue;
        path[i] = '\0';
        int rc = mkdir(path, 0755);
        path[i] = '/';
        if (rc < 0 && errno != EEXIST)
            return -1;
    }
    if (include_last && mkdir(path, 0755) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* An empty file for a file bind to land on. */
static int make_file_mountpoint(char *path, long from)
{
    if (mkdir_parents(path, from, 0) < 0)
        return -1;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return errno == EEXIST ? 0 : -1;
    close(fd);
    return 0;
}

/* Read-only for the whole subtree, so that no writable submount of the host
 * shows through a read-only bind (mount_setattr, Linux 5.12+). There is no
 * weaker fallback on purpose: an old kernel fails here with ENOSYS. */
static int make_readonly(const char *path, uint64_t attrs)
{
    struct mount_attr attr = {.attr_set = attrs};
    return (int)syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof attr);
}

void open_mount_sources_child(struct child_state *state)
{
    const struct jail_config *config = state->config;

    for (int i = 0; i < config->n_mounts; i++) {
        const struct jail_mount *m = &config->mounts[i];
        state->source_fds[i] = -1;
        if (m->kind != JAIL_MOUNT_BIND_RO && m->kind != JAIL_MOUNT_BIND_DEV)
            continue;
        state->source_fds[i] = open(m->source, O_PATH | O_CLOEXEC);
        if (state->source_fds[i] < 0)
            child_fail(state, JAIL_STEP_OPEN_SOURCE, i);
    }
}

static void bind_child(struct child_state *state, int i, char *path, long from)
{
    const struct jail_mount *m = &state->config->mounts[i];
    char source[64];
    struct stat st;

    if (fstat(state->source_fds[i], &st) < 0)
        child_fail(state, JAIL_STEP_OPEN_SOURCE, i);
    int rc = S_ISDIR(st.st_mode) ? mkdir_parents(path, from, 1) : make_file_mountpoint(path, from);
    if (rc < 0)
        child_fail(state, JAIL_STEP_MKDIR, i);

    /* Bind through the fd opened before the uid change: the path itself may
     * sit under a directory (such as /root) the sandbox uid cannot cross. */
    path_append_uint(source, path_append(source, 0, sizeof source, "/proc/self/fd/"), sizeof source,
                     (unsigned long)state->source_fds[i]);
    if (mount(source, path, NULL, MS_BIND | MS_REC, NULL) < 0)
        child_fail(state, JAIL_STEP_MOUNT_BIND, i);
    close(state->source_fds[i]);
    state->source_fds[i] = -1;

    uint64_t attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID;
    attrs |= m->kind == JAIL_MOUNT_BIND_DEV ? MOUNT_ATTR_NOEXEC : MOUNT_ATTR_NODEV;
    if (make_readonly(path, attrs) < 0)
        child_fail(state, JAIL_STEP_MOUNT_READONLY, i);
}

static void mount_one_child(struct child_state *state, int i, char *path, long from)
{
    const struct jail_mount *m = &state->config->mounts[i];

    switch (m->kind) {
    case JAIL_MOUNT_BIND_RO:
    case JAIL_MOUNT_BIND_DEV:
        bind_child(state, i, path, from);
        break;
    case JAIL_MOUNT_TMPFS:
        if (mkdir_parents(path, from, 1) < 0)
            child_fail(state, JAIL_STEP_MKDIR, i);
        if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | m->flags, m->data) < 0)
            child_fail(state, JAIL_STEP_MOUNT_TMPFS, i);
        break;
    case JAIL_MOUNT_PROC:
        if (mkdir_parents(path, from, 1) < 0)
            child_fail(state, JAIL_STEP_MKDIR, i);
        if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | m->flags, NULL) < 0)
            child_fail(state, JAIL_STEP_MOUNT_PROC, i);
        break;
    case JAIL_MOUNT_SYMLINK:
        if (mkdir_parents(path, from, 0) < 0)
            child_fail(state, JAIL_STEP_MKDIR, i);
        if (symlink(m->source, path) < 0)
            child_fail(state, JAIL_STEP_SYMLINK, i);
        break;
    default:
        errno = EINVAL;
        child_fail(state, JAIL_STEP_CONFIG, i);
    }
}

void build_root_child(struct child_state *state)
{
    const struct jail_config *config = state->config;
    char path[JAIL_PATH_BUF];

    /* Nothing we mount may propagate back to the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        child_fail(state, JAIL_STEP_MOUNT_PRIVATE, -1);
    if (mount("tmpfs", config->staging, "tmpfs", MS_NOSUID | MS_NODEV, config->root_options) < 0)
        child_fail(state, JAIL_STEP_MOUNT_ROOT, -1);

    long from = path_append(path, 0, sizeof path, config->staging);
    for (int i = 0; i < config->n_mounts; i++) {
        if (path_append(path, from, sizeof path, config->mounts[i].target) < 0) {
            errno = ENAMETOOLONG;
            child_fail(state, JAIL_STEP_MKDIR, i);
        }
        mount_one_child(state, i, path, from);
    }

    /* pivot_root(".", ".") stacks the old root on the new one; detaching it
     * leaves the host's tree unreachable (pivot_root(2), NOTES). */
    if (chdir(config->staging) < 0)
        child_fail(state, JAIL_STEP_CHDIR, -1);
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        child_fail(state, JAIL_STEP_PIVOT_ROOT, -1);
    if (umount2(".", MNT_DETACH) < 0)
        child_fail(state, JAIL_STEP_UMOUNT_OLD_ROOT, -1);
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        child_fail(state, JAIL_STEP_REMOUNT_ROOT, -1);
    if (chdir(config->workdir) < 0)
        child_fail(state, JAIL_STEP_CHDIR, -1);
}
