/* The zygote: a fork server inside a warm base sandbox (jail/_zygote.py).
 *
 * The host starts an interpreter with its harness in a base sandbox that keeps
 * the capabilities of its own user namespace (jail_config.keep_caps) and maps
 * a block of uids. The harness loads this library (Python through ctypes, Node
 * as an addon) and calls serve(), which never returns in the zygote: it forks
 * one child per request of the host and returns in that child only, once the
 * child is a sandbox of its own. Per child, in order:
 *
 *   zygote: a new pid namespace for the child (setns back to its own, then
 *           unshare: the child is pid 1 of a namespace nobody else is in), fork;
 *   child:  parent-death signal; its fds become 0-3, nothing else stays open;
 *           it joins its own cgroups (files the host opened); new mount, ipc,
 *           uts, net and cgroup namespaces; its own /tmp; hostname; session;
 *           its own uid and gid; a new user namespace of that uid alone (its
 *           id maps written through the zygote's /proc, which it then detaches);
 *           rlimits; no-new-privs; no capabilities; the seccomp filter last.
 *
 * The child reports a failed step on a pipe and exits 126; the zygote answers
 * STARTED only once the child has reached its last step (the pipe reads EOF),
 * and forks the next request's child meanwhile.
 * Exits are reported with the child's wait status and cpu time.
 *
 * The language runtime runs again in the child after this returns, so the
 * zygote must be single-threaded where it matters (Node runs with
 * --single-threaded; glibc's fork keeps malloc consistent). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/futex.h>
#include <dirent.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "caps.h"
#include "launcher.h"
#include "zygote.h"

#define CONTROL_FD 0
#define PROC_DIR "/proc"
#define BPF_MAX_BYTES (JAIL_MAX_BPF_INSNS * sizeof(struct sock_filter))

struct child_slot {
    uint64_t token;
    pid_t pid;
    int pidfd;
    int report_fd; /* while the child sets itself up: its report pipe (EOF: ready); then -1 */
};

/* An fd the runtime opened before serve() (Node: its libuv loops' epoll
 * fds, eventfds and signal pipes, and more). A child gets a fresh object of
 * the same kind in its place: nothing it holds is the zygote's or a sibling's. */
enum runtime_fd_kind { RUNTIME_PIPE, RUNTIME_EVENTFD, RUNTIME_EPOLL, RUNTIME_REOPEN };

struct runtime_fd {
    int fd;
    enum runtime_fd_kind kind;
    int cloexec;      /* FD_CLOEXEC was set */
    int status_flags; /* F_GETFL: access mode, O_NONBLOCK */
    int peer;         /* RUNTIME_PIPE: the other end's fd in this process, or -1 */
    ino_t inode;      /* RUNTIME_PIPE: the pipe, to pair its two ends */
};

#define MAX_RUNTIME_FDS 64

struct zygote {
    struct jail_zygote_setup setup;
    struct runtime_fd runtime_fds[MAX_RUNTIME_FDS];
    int n_runtime_fds;
    struct sock_fprog filter;
    unsigned char message[sizeof(struct jail_zygote_setup) + BPF_MAX_BYTES];
    int self_pidfd;
    int proc_fd; /* the zygote's proc: detached from its tree unless children mount their own */
    struct child_slot children[JAIL_ZYGOTE_MAX_CHILDREN];
    int n_children;
};

static struct zygote zygote; /* static: nothing allocated, and not on the stack a child inherits */

/* The runtime's other threads (Node: V8's workers, its delayed-task
 * scheduler, its inspector's io thread) are not copied by a fork, but what
 * they wait on is: a glibc condition variable keeps their places as waiters,
 * and the child's first signal would wait for them to leave, forever (a
 * full collection in a child posts a job to V8's workers: it hung). Before
 * each fork the zygote checks that every other thread is blocked where it
 * holds no lock, and finds the condition variables they wait on; the child
 * makes those fresh (PTHREAD_COND_INITIALIZER is all zeroes). */
#define MAX_WAITS 32
#define CONDVAR_SIZE 48                /* glibc's pthread_cond_t, x86_64 */
#define CONDVAR_SIGNALS_OFFSET 40      /* __g_signals[2]: where its waiters block */
#define CONDVAR_REFS_OFFSET 16         /* __g_refs[2]: 2 per waiter of each group */
#define CONDVAR_WREFS_OFFSET 36        /* __wrefs: 8 per waiter */

struct futex_wait {
    uintptr_t address;
    int waiters;
};

static struct {
    uintptr_t base[MAX_WAITS];
    int n;
} waited_condvars;

struct failure {
    int32_t step, err, index;
};

static _Noreturn void child_fail(int report_fd, int step, int index)
{
    struct failure failure = {.step = step, .err = errno, .index = index};
    ssize_t ignored = write(report_fd, &failure, sizeof failure);
    (void)ignored;
    _exit(JAIL_EXIT_SETUP_FAILED);
}

static int write_at(int dirfd, const char *name, const char *text, size_t len)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, len); /* id maps are taken in one write only */
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)len ? 0 : -1;
}

static size_t format_uint(char *buf, unsigned long n)
{
    char digits[24];
    size_t len = 0, i = 0;
    do {
        digits[len++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    while (len)
        buf[i++] = digits[--len];
    return i;
}

/* "inside outside 1" */
static size_t id_map(char *buf, uint32_t inside, uint32_t outside)
{
    size_t len = format_uint(buf, inside);
    buf[len++] = ' ';
    len += format_uint(buf + len, outside);
    memcpy(buf + len, " 1", 2);
    return len + 2;
}

/* ---- the child: from a copy of the zygote to a sandbox of its own ---- */

/* 0-3 become the request's; the fds the zygote itself holds (its pidfds)
 * are closed. The runtime's own (its event loop's) are left to it, as in a
 * fresh process: the zygote keeps 0-3 taken so that none of them is 0-3. */
static void take_fds_child(int report_fd, const int *fds, int n_fds, int *cgroup_fds)
{
    int copies[JAIL_ZYGOTE_MAX_FDS];

    /* Above the four we overwrite first, then into place. */
    for (int i = 0; i < n_fds; i++)
        if ((copies[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, JAIL_ZYGOTE_STDIO)) < 0)
            child_fail(report_fd, JAIL_STEP_DUP_FDS, i);
    for (int i = 0; i < JAIL_ZYGOTE_STDIO; i++)
        if (dup2(copies[i], i) < 0)
            child_fail(report_fd, JAIL_STEP_DUP_FDS, i);
    for (int i = 0; i < n_fds; i++) {
        close(fds[i]);
        if (i < JAIL_ZYGOTE_STDIO)
            close(copies[i]);
        else
            cgroup_fds[i - JAIL_ZYGOTE_STDIO] = copies[i];
    }
    close(zygote.self_pidfd);
    for (int i = 0; i < zygote.n_children; i++) {
        close(zygote.children[i].pidfd);
        if (zygote.children[i].report_fd >= 0)
            close(zygote.children[i].report_fd);
    }
}

/* The runtime's fds, each replaced by a fresh object of its kind: a loop
 * whose thread the fork did not copy keeps fds that lead nowhere, and the
 * default loop is re-created by its runtime right after (uv_loop_fork). */
static void replace_fd(int report_fd, int fresh, const struct runtime_fd *old)
{
    if (fresh < 0 || dup3(fresh, old->fd, old->cloexec ? O_CLOEXEC : 0) < 0)
        child_fail(report_fd, JAIL_STEP_RENEW_FDS, old->fd);
    close(fresh);
}

static void renew_runtime_fds_child(int report_fd)
{
    char path[32] = "self/fd/";

    for (int i = 0; i < zygote.n_runtime_fds; i++) {
        const struct runtime_fd *old = &zygote.runtime_fds[i];
        int nonblock = old->status_flags & O_NONBLOCK;
        if (fcntl(old->fd, F_GETFD) < 0)
            continue; /* closed by an at-fork handler (libuv renews its signal lock pipe) */
        switch (old->kind) {
        case RUNTIME_EVENTFD:
            replace_fd(report_fd, eventfd(0, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0)), old);
            break;
        case RUNTIME_EPOLL:
            replace_fd(report_fd, epoll_create1(EPOLL_CLOEXEC), old);
            break;
        case RUNTIME_REOPEN: /* a new open file description of the same file (/dev/null) */
            path[8 + format_uint(path + 8, (unsigned long)old->fd)] = '\0';
            replace_fd(report_fd,
                       openat(zygote.proc_fd, path,
                              (old->status_flags & (O_ACCMODE | O_APPEND | O_NONBLOCK)) | O_CLOEXEC | O_NOCTTY),
                       old);
            break;
        case RUNTIME_PIPE: {
            int is_read_end = (old->status_flags & O_ACCMODE) == O_RDONLY;
            if (!is_read_end && old->peer >= 0)
                break; /* made with its read end */
            struct stat now;
            if (fstat(old->fd, &now) == 0 && now.st_ino != old->inode)
                break; /* already the child's own: an at-fork handler made it anew (libuv's signal
                          lock pipe, which holds its lock's one byte: an empty copy would deadlock) */
            int ends[2];
            if (pipe2(ends, O_CLOEXEC) < 0)
                child_fail(report_fd, JAIL_STEP_RENEW_FDS, old->fd);
            const struct runtime_fd *read_end = is_read_end ? old : NULL, *write_end = is_read_end ? NULL : old;
            if (is_read_end && old->peer >= 0)
                for (int j = 0; j < zygote.n_runtime_fds; j++)
                    if (zygote.runtime_fds[j].fd == old->peer)
                        write_end = &zygote.runtime_fds[j];
            for (int end = 0; end < 2; end++) {
                const struct runtime_fd *into = end == 0 ? read_end : write_end;
                if (into == NULL) { /* a lone end: its fresh peer is closed, as the zygote's was absent */
                    close(ends[end]);
                    continue;
                }
                if ((into->status_flags & O_NONBLOCK) && fcntl(ends[end], F_SETFL, O_NONBLOCK) < 0)
                    child_fail(report_fd, JAIL_STEP_RENEW_FDS, into->fd);
                replace_fd(report_fd, ends[end], into);
            }
            break;
        }
        }
    }
}

static void renew_condvars_child(void)
{
    for (int i = 0; i < waited_condvars.n; i++)
        memset((void *)waited_condvars.base[i], 0, CONDVAR_SIZE);
}

static void drop_capabilities_child(int report_fd)
{
    int which;
    if (jail_drop_capabilities(&which) < 0)
        child_fail(report_fd, JAIL_STEP_DROP_CAPS, which);
}

/* Its own user namespace, holding its uid alone: written through the
 * zygote's /proc, opened before the proc is detached from the child's view. */
static void own_user_namespace_child(int report_fd, int proc_self, uint32_t uid, uint32_t inside)
{
    char map[64];
    size_t len = id_map(map, inside, uid);

    if (syscall(SYS_setgroups, 0, NULL) < 0)
        child_fail(report_fd, JAIL_STEP_SETGROUPS, -1);
    if (syscall(SYS_setresgid, uid, uid, uid) < 0)
        child_fail(report_fd, JAIL_STEP_SETGID, -1);
    if (syscall(SYS_setresuid, uid, uid, uid) < 0)
        child_fail(report_fd, JAIL_STEP_SETUID, -1);
    /* A uid change makes us non-dumpable, and our /proc files root's: take them back. */
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        child_fail(report_fd, JAIL_STEP_SETUID, -2);
    if (unshare(CLONE_NEWUSER) < 0)
        child_fail(report_fd, JAIL_STEP_UNSHARE, 1);
    if (write_at(proc_self, "setgroups", "deny", 4) < 0)
        child_fail(report_fd, JAIL_STEP_SETGROUPS_FILE, -1);
    if (write_at(proc_self, "uid_map", map, len) < 0)
        child_fail(report_fd, JAIL_STEP_UID_MAP, -1);
    if (write_at(proc_self, "gid_map", map, len) < 0)
        child_fail(report_fd, JAIL_STEP_GID_MAP, -1);
    close(proc_self);
}

static void become_sandbox_child(const struct jail_zygote_request *request, const int *fds, int report_fd)
{
    int cgroup_fds[JAIL_ZYGOTE_MAX_FDS];
    int n_cgroups = request->n_fds - JAIL_ZYGOTE_STDIO;

    renew_condvars_child();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        child_fail(report_fd, JAIL_STEP_PDEATHSIG, -1);
    take_fds_child(report_fd, fds, request->n_fds, cgroup_fds);
    for (int i = 0; i < n_cgroups; i++) {
        if (write(cgroup_fds[i], "0", 1) != 1)
            child_fail(report_fd, JAIL_STEP_CGROUP, i);
        close(cgroup_fds[i]);
    }
    renew_runtime_fds_child(report_fd);
    /* Our own /proc/PID, for the id maps; then nothing of the zygote's proc stays. */
    int proc_self = openat(zygote.proc_fd, "self", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (proc_self < 0)
        child_fail(report_fd, JAIL_STEP_UMOUNT_PROC, -1);
    close(zygote.proc_fd);

    if (unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWCGROUP) < 0)
        child_fail(report_fd, JAIL_STEP_UNSHARE, 0);
    /* Over the zygote's, which only that fully visible proc lets us mount. */
    if (zygote.setup.mount_proc && mount("proc", PROC_DIR, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        child_fail(report_fd, JAIL_STEP_MOUNT_PROC, -1);
    if (request->scratch_options[0] &&
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, request->scratch_options) < 0)
        child_fail(report_fd, JAIL_STEP_MOUNT_TMPFS, -1);
    /* The zygote's working directory is its /tmp, now covered by ours: it must not stay the child's. */
    if (chdir(request->scratch_options[0] ? "/tmp" : "/") < 0)
        child_fail(report_fd, JAIL_STEP_CHDIR, -1);
    if (sethostname(request->hostname, strnlen(request->hostname, sizeof request->hostname)) < 0)
        child_fail(report_fd, JAIL_STEP_SETHOSTNAME, -1);
    if (setsid() < 0)
        child_fail(report_fd, JAIL_STEP_SETSID, -1);
    own_user_namespace_child(report_fd, proc_self, request->uid, request->inside_id);
    /* A change of uid cleared the parent-death signal: again (the zygote waits for us, so it lives). */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        child_fail(report_fd, JAIL_STEP_PDEATHSIG, -2);
    for (int i = 0; i < request->n_rlimits; i++) {
        struct rlimit limit = {.rlim_cur = request->rlimits[i].soft, .rlim_max = request->rlimits[i].hard};
        if (setrlimit(request->rlimits[i].resource, &limit) < 0)
            child_fail(report_fd, JAIL_STEP_RLIMIT, i);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(report_fd, JAIL_STEP_NO_NEW_PRIVS, -1);
    drop_capabilities_child(report_fd);
    if (zygote.filter.len && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &zygote.filter) < 0)
        child_fail(report_fd, JAIL_STEP_SECCOMP, -1);
    close(report_fd); /* EOF: the zygote tells the host this child is ready */
}

/* ---- the zygote ---- */

static void reply(const struct jail_zygote_reply *message, int fd_to_pass)
{
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = (void *)message, .iov_len = sizeof *message};
    struct msghdr header = {.msg_iov = &iov, .msg_iovlen = 1};

    if (fd_to_pass >= 0) {
        memset(control, 0, sizeof control);
        header.msg_control = control;
        header.msg_controllen = sizeof control;
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&header);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &fd_to_pass, sizeof(int));
    }
    while (sendmsg(CONTROL_FD, &header, MSG_NOSIGNAL) < 0)
        if (errno != EINTR)
            _exit(0); /* the host is gone: so are we (and, by their death signal, our children) */
}

static void fail(uint64_t token, int step, int err, int index)
{
    struct jail_zygote_reply message = {
        .token = token, .kind = JAIL_ZYGOTE_FAILED, .step = step, .err = err, .index = index};
    reply(&message, -1);
}

/* One message and the fds it carries; 0 at the host's EOF. */
static ssize_t receive(void *buf, size_t size, int *fds, int *n_fds)
{
    char control[CMSG_SPACE(JAIL_ZYGOTE_MAX_FDS * sizeof(int))];
    struct iovec iov = {.iov_base = buf, .iov_len = size};
    struct msghdr header = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                            .msg_controllen = sizeof control};
    ssize_t n;

    *n_fds = 0;
    do {
        n = recvmsg(CONTROL_FD, &header, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&header); n >= 0 && c; c = CMSG_NXTHDR(&header, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        memcpy(fds + *n_fds, CMSG_DATA(c), (size_t)count * sizeof(int));
        *n_fds += count;
    }
    if (n >= 0 && (header.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        n = -2;
    return n;
}

static void close_all(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

static ssize_t read_proc(const char *path, char *buf, size_t size)
{
    int fd = openat(zygote.proc_fd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n >= 0)
        buf[n] = '\0';
    return n;
}

static int mapped(uintptr_t address)
{
    unsigned char resident;
    return mincore((void *)(address & ~(uintptr_t)4095), 1, &resident) == 0;
}

/* Whether the words at address are a glibc semaphore its waiters block on:
 * value 0, and at least that many waiters. Left as it is: a post in a child
 * wakes nobody, and nothing else waits on it. */
static int is_semaphore(const struct futex_wait *wait)
{
    if (wait->address % 8)
        return 0;
    uint64_t data = *(const uint64_t *)wait->address;
    return (uint32_t)data == 0 && (data >> 32) >= (uint64_t)wait->waiters;
}

/* The condition variable whose __g_signals[g] is at address, if its counts
 * hold at least these waiters; 0 if it is none. */
static uintptr_t condvar_of(const struct futex_wait *wait)
{
    for (int group = 0; group < 2; group++) {
        uintptr_t base = wait->address - CONDVAR_SIGNALS_OFFSET - 4 * (uintptr_t)group;
        if (base % 8 || !mapped(base))
            continue;
        uint32_t refs = *(const uint32_t *)(base + CONDVAR_REFS_OFFSET + 4 * group);
        uint32_t wrefs = *(const uint32_t *)(base + CONDVAR_WREFS_OFFSET);
        if ((refs >> 1) >= (uint32_t)wait->waiters && (wrefs >> 3) >= (uint32_t)wait->waiters)
            return base;
    }
    return 0;
}

/* 1 when every thread but ours is blocked where it holds no lock (an event
 * loop's wait, a sleep, a semaphore, a condition variable whose waiters are
 * all there), with those condition variables in waited_condvars; 0 if not
 * now (one runs, or is between waking and its lock); -1 if one waits on
 * something else. */
static int threads_quiet(void)
{
    static char entries[8192];
    static struct futex_wait waits[MAX_WAITS];
    char path[sizeof "self/task//syscall" + 256], line[256];
    int n_waits = 0;
    pid_t self = (pid_t)syscall(SYS_gettid);

    int dir = openat(zygote.proc_fd, "self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return -1;
    long got = syscall(SYS_getdents64, dir, entries, sizeof entries);
    close(dir);
    if (got < 0 || got == sizeof entries)
        return -1;
    for (long offset = 0; offset < got;) {
        struct dirent64 *entry = (struct dirent64 *)(entries + offset);
        offset += entry->d_reclen;
        if (entry->d_name[0] == '.' || atoi(entry->d_name) == self)
            continue;
        snprintf(path, sizeof path, "self/task/%s/syscall", entry->d_name);
        if (read_proc(path, line, sizeof line) <= 0)
            return -1;
        if (strncmp(line, "running", 7) == 0)
            return 0;
        char *end;
        long number = strtol(line, &end, 10);
        unsigned long address = strtoul(end, &end, 16), op = strtoul(end, &end, 16);
        switch (number) {
        case SYS_epoll_wait: case SYS_epoll_pwait: case SYS_epoll_pwait2: case SYS_poll: case SYS_ppoll:
        case SYS_select: case SYS_pselect6: case SYS_nanosleep: case SYS_clock_nanosleep:
            continue; /* an event loop or a sleep: no lock held */
        case SYS_futex:
            op &= ~(unsigned long)(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
            if (op != FUTEX_WAIT && op != FUTEX_WAIT_BITSET)
                return -1;
            break;
        default:
            return -1;
        }
        int i = 0;
        while (i < n_waits && waits[i].address != address)
            i++;
        if (i == MAX_WAITS)
            return -1;
        if (i == n_waits)
            waits[n_waits++] = (struct futex_wait){.address = address, .waiters = 0};
        waits[i].waiters++;
    }
    waited_condvars.n = 0;
    for (int i = 0; i < n_waits; i++) {
        uintptr_t base = condvar_of(&waits[i]);
        if (base == 0) {
            if (is_semaphore(&waits[i]))
                continue;
            return -1;
        }
        /* All its waiters are these threads, none on its way out (to its lock). */
        uint32_t wrefs = *(const uint32_t *)(base + CONDVAR_WREFS_OFFSET);
        int waiters = 0;
        for (int j = 0; j < n_waits; j++)
            if (waits[j].address - CONDVAR_SIGNALS_OFFSET - base < 8)
                waiters += waits[j].waiters;
        if ((int)(wrefs >> 3) != waiters)
            return 0;
        int known = 0;
        for (int j = 0; j < waited_condvars.n; j++)
            known |= waited_condvars.base[j] == base;
        if (!known)
            waited_condvars.base[waited_condvars.n++] = base;
    }
    return 1;
}

/* Waits (a little) for the other threads to be quiet: see waited_condvars. */
static int await_quiet_threads(void)
{
    for (int attempt = 0; attempt < 1000; attempt++) {
        int quiet = threads_quiet();
        if (quiet != 0)
            return quiet > 0 ? 0 : -1;
        poll(NULL, 0, 1);
    }
    return -1;
}

/* Forks the child of one request. Returns 0 in the child (sandboxed). */
static int start_child(const struct jail_zygote_request *request, const int *fds)
{
    int report[2];

    if (zygote.n_children == JAIL_ZYGOTE_MAX_CHILDREN) {
        fail(request->token, JAIL_STEP_FORK, EAGAIN, -1);
        return 1;
    }
    if (pipe2(report, O_CLOEXEC) < 0) {
        fail(request->token, JAIL_STEP_PIPE, errno, -1);
        return 1;
    }
    /* The child is pid 1 of a fresh namespace: reset ours, then ask for a new one. */
    if (setns(zygote.self_pidfd, CLONE_NEWPID) < 0 || unshare(CLONE_NEWPID) < 0) {
        fail(request->token, JAIL_STEP_UNSHARE, errno, 2);
        close(report[0]);
        close(report[1]);
        return 1;
    }
    if (await_quiet_threads() < 0) {
        fail(request->token, JAIL_STEP_THREADS, EBUSY, -1);
        close(report[0]);
        close(report[1]);
        return 1;
    }
    /* V8 marks its heap MADV_DONTFORK; the child needs every page we have. */
    madvise((void *)4096, (1UL << 47) - 8192, MADV_DOFORK);
    pid_t pid = fork();
    if (pid == 0) {
        close(report[0]);
        become_sandbox_child(request, fds, report[1]);
        return 0;
    }
    int fork_errno = errno;
    close(report[1]);
    if (pid < 0) {
        close(report[0]);
        fail(request->token, JAIL_STEP_FORK, fork_errno, -1);
        return 1;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        int saved = errno;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(report[0]);
        fail(request->token, JAIL_STEP_SYNC, saved, -1);
        return 1;
    }
    /* Not waited for here: the next request's fork goes on while this child sets up. */
    struct child_slot *slot = &zygote.children[zygote.n_children++];
    slot->token = request->token;
    slot->pid = pid;
    slot->pidfd = pidfd;
    slot->report_fd = report[0];
    return 1;
}

/* The child's report pipe turned readable: EOF when it reached its last step
 * (STARTED), else the step that failed (FAILED). */
static void report_start(int index)
{
    struct child_slot *slot = &zygote.children[index];
    struct failure failure;
    ssize_t n;

    do {
        n = read(slot->report_fd, &failure, sizeof failure);
    } while (n < 0 && errno == EINTR);
    close(slot->report_fd);
    slot->report_fd = -1;
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (n == 0 && waitid(P_PIDFD, (id_t)slot->pidfd, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid != 0) {
        n = -1; /* EOF because it died during its set-up, not because it finished it */
        errno = ECHILD;
    }
    if (n == 0) {
        struct jail_zygote_reply started = {.token = slot->token, .kind = JAIL_ZYGOTE_STARTED, .pid = slot->pid};
        reply(&started, slot->pidfd);
        return;
    }
    struct child_slot failed = *slot;
    *slot = zygote.children[--zygote.n_children];
    kill(failed.pid, SIGKILL);
    waitpid(failed.pid, NULL, 0);
    close(failed.pidfd);
    if (n == (ssize_t)sizeof failure)
        fail(failed.token, failure.step, failure.err, failure.index);
    else
        fail(failed.token, JAIL_STEP_SYNC, n < 0 ? errno : EPROTO, -1);
}

static void report_exit(int index)
{
    struct child_slot slot = zygote.children[index];
    struct rusage usage;
    int status = 0;

    pid_t reaped;
    do {
        reaped = wait4(slot.pid, &status, WNOHANG, &usage);
    } while (reaped < 0 && errno == EINTR);
    if (reaped == 0)
        return; /* not yet: the pidfd turns readable a moment before the zombie can be reaped */
    if (reaped < 0) { /* gone without a status for us: report it killed */
        status = SIGKILL;
        memset(&usage, 0, sizeof usage);
    }
    close(slot.pidfd);
    zygote.children[index] = zygote.children[--zygote.n_children];
    struct jail_zygote_reply exited = {
        .token = slot.token,
        .kind = JAIL_ZYGOTE_EXITED,
        .pid = slot.pid,
        .status = status,
        .cpu_us = (int64_t)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000 + usage.ru_utime.tv_usec +
                  usage.ru_stime.tv_usec,
        .maxrss_kb = usage.ru_maxrss,
    };
    reply(&exited, -1);
}

/* Handles one request; 0 in a new child, 1 in the zygote. */
static int handle_request(void)
{
    struct jail_zygote_request request;
    int fds[JAIL_ZYGOTE_MAX_FDS];
    int n_fds;
    ssize_t n = receive(&request, sizeof request, fds, &n_fds);

    if (n == 0)
        _exit(0); /* the host closed the socket: the pool is stopping */
    if (n != (ssize_t)sizeof request || n_fds != request.n_fds || n_fds < JAIL_ZYGOTE_STDIO ||
        request.n_rlimits < 0 || request.n_rlimits > JAIL_MAX_RLIMITS || request.uid == 0) {
        close_all(fds, n_fds);
        fail(n >= 8 ? request.token : 0, JAIL_STEP_PROTOCOL, EINVAL, -1);
        return 1;
    }
    request.hostname[sizeof request.hostname - 1] = '\0';
    request.scratch_options[sizeof request.scratch_options - 1] = '\0';
    int in_child = start_child(&request, fds) == 0;
    if (!in_child)
        close_all(fds, n_fds);
    return in_child ? 0 : 1;
}

/* What the runtime holds above the host's four fds, before any of the
 * zygote's own are open. An fd of any other kind stops the zygote: a child
 * must never share an open file with it (the pool then spawns its sandboxes). */
static int take_inventory(void)
{
    char link[64], path[32];

    for (int fd = JAIL_ZYGOTE_STDIO; fd < 1024; fd++) {
        int fd_flags = fcntl(fd, F_GETFD);
        if (fd_flags < 0)
            continue;
        struct stat st;
        int n = snprintf(path, sizeof path, PROC_DIR "/self/fd/%d", fd);
        ssize_t len = n > 0 ? readlink(path, link, sizeof link - 1) : -1;
        if (len < 0 || fstat(fd, &st) < 0 || zygote.n_runtime_fds == MAX_RUNTIME_FDS)
            return -1;
        link[len] = '\0';
        struct runtime_fd *entry = &zygote.runtime_fds[zygote.n_runtime_fds];
        *entry = (struct runtime_fd){.fd = fd, .cloexec = fd_flags & FD_CLOEXEC,
                                     .status_flags = fcntl(fd, F_GETFL), .peer = -1, .inode = st.st_ino};
        if (S_ISFIFO(st.st_mode))
            entry->kind = RUNTIME_PIPE;
        else if (strcmp(link, "anon_inode:[eventfd]") == 0)
            entry->kind = RUNTIME_EVENTFD;
        else if (strcmp(link, "anon_inode:[eventpoll]") == 0)
            entry->kind = RUNTIME_EPOLL;
        else if (S_ISCHR(st.st_mode) || S_ISREG(st.st_mode))
            entry->kind = RUNTIME_REOPEN;
        else {
            dprintf(2, "zygote: fd %d (%s) is of a kind a child cannot be given afresh\n", fd, link);
            return -1;
        }
        for (int i = 0; i < zygote.n_runtime_fds && entry->kind == RUNTIME_PIPE; i++) {
            struct runtime_fd *other = &zygote.runtime_fds[i];
            if (other->kind == RUNTIME_PIPE && other->inode == entry->inode && other->peer < 0) {
                other->peer = fd;
                entry->peer = other->fd;
            }
        }
        zygote.n_runtime_fds++;
    }
    return 0;
}

/* The launcher mounted a proc for us at /proc: children write their id maps
 * through it. Unless they mount a proc of their own (which needs this one
 * visible), it leaves the tree, mount point and all: a child's / lists
 * what a cold sandbox's does (its /opt also holds the fork server's file). */
static int hide_proc(void)
{
    zygote.proc_fd = open(PROC_DIR, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (zygote.proc_fd < 0)
        return -1;
    if (zygote.setup.mount_proc)
        return 0;
    if (umount2(PROC_DIR, MNT_DETACH) < 0 ||
        mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, NULL) < 0)
        return -1;
    int removed = rmdir(PROC_DIR);
    int saved = errno;
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        return -1;
    errno = saved;
    return removed;
}

int jail_zygote_serve(void)
{
    struct pollfd polls[1 + JAIL_ZYGOTE_MAX_CHILDREN];
    int fds[JAIL_ZYGOTE_MAX_FDS], n_fds;

    /* First message: the set-up, and the children's seccomp program. */
    ssize_t n = receive(zygote.message, sizeof zygote.message, fds, &n_fds);
    close_all(fds, n_fds);
    n -= (ssize_t)sizeof zygote.setup;
    if (n <= 0 || n % sizeof(struct sock_filter) != 0)
        _exit(n == -(ssize_t)sizeof zygote.setup ? 0 : JAIL_EXIT_SETUP_FAILED);
    memcpy(&zygote.setup, zygote.message, sizeof zygote.setup);
    zygote.filter.len = (unsigned short)(n / sizeof(struct sock_filter));
    zygote.filter.filter = (struct sock_filter *)(zygote.message + sizeof zygote.setup);
    if (take_inventory() < 0)
        _exit(JAIL_EXIT_SETUP_FAILED);
    zygote.self_pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (zygote.self_pidfd < 0 || hide_proc() < 0)
        _exit(JAIL_EXIT_SETUP_FAILED);

    for (;;) {
        polls[0].fd = CONTROL_FD;
        polls[0].events = POLLIN;
        for (int i = 0; i < zygote.n_children; i++) {
            struct child_slot *slot = &zygote.children[i];
            polls[1 + i].fd = slot->report_fd >= 0 ? slot->report_fd : slot->pidfd;
            polls[1 + i].events = POLLIN;
        }
        int count = 1 + zygote.n_children;
        if (poll(polls, (nfds_t)count, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(JAIL_EXIT_SETUP_FAILED);
        }
        /* From the end: a finished slot takes the last one's place. A slot's
         * report pipe is polled until it is ready, then its pidfd. */
        for (int i = count - 1; i >= 1; i--) {
            if (!polls[i].revents)
                continue;
            if (polls[i].fd == zygote.children[i - 1].report_fd)
                report_start(i - 1);
            else
                report_exit(i - 1);
        }
        if (polls[0].revents & (POLLIN | POLLHUP | POLLERR))
            if (handle_request() == 0)
                return 0;
    }
}

/* ---- Node: the same as an addon (process.dlopen), where node's headers are ---- */

#if defined(__has_include)
#if __has_include(<node_api.h>)
#include <node_api.h>
#include <uv.h>

/* Weak: the library is also loaded by Python, where these are absent. */
#pragma weak napi_create_function
#pragma weak napi_set_named_property
#pragma weak napi_get_uv_event_loop
#pragma weak napi_get_undefined
#pragma weak napi_get_cb_info
#pragma weak napi_get_value_int32
#pragma weak napi_create_int32
#pragma weak uv_loop_fork

/* OpenSSL, as built into node (3.0), does not reseed after a fork: every
 * child would draw the zygote's random bytes (crypto.randomUUID() alike). */
void RAND_seed(const void *buf, int num);
#pragma weak RAND_seed

static void reseed_openssl_child(void)
{
    unsigned char seed[48];
    size_t got = 0;

    while (got < sizeof seed) {
        ssize_t n = getrandom(seed + got, sizeof seed - got, 0);
        if (n < 0 && errno != EINTR)
            _exit(JAIL_EXIT_SETUP_FAILED);
        got += n > 0 ? (size_t)n : 0;
    }
    if (RAND_seed == NULL)
        _exit(JAIL_EXIT_SETUP_FAILED);
    RAND_seed(seed, (int)sizeof seed);
}

/* V8's per-isolate generator seeds Math.random in every context made from
 * now on (vm.createContext): a copy of the zygote's would give each child the
 * same numbers. Node exports these (C++ names, called with `this` first). */
void *v8_current_isolate(void) __asm__("_ZN2v87Isolate10GetCurrentEv");
void *v8_isolate_random_number_generator(void *isolate) __asm__("_ZN2v88internal7Isolate23random_number_generatorEv");
void v8_random_number_generator_set_seed(void *generator, int64_t seed) __asm__("_ZN2v84base21RandomNumberGenerator7SetSeedEl");
#pragma weak v8_current_isolate
#pragma weak v8_isolate_random_number_generator
#pragma weak v8_random_number_generator_set_seed

static void reseed_v8_child(void)
{
    int64_t seed;

    if (v8_current_isolate == NULL || v8_isolate_random_number_generator == NULL ||
        v8_random_number_generator_set_seed == NULL || getrandom(&seed, sizeof seed, 0) != sizeof seed)
        _exit(JAIL_EXIT_SETUP_FAILED);
    void *isolate = v8_current_isolate();
    void *generator = isolate ? v8_isolate_random_number_generator(isolate) : NULL;
    if (generator == NULL)
        _exit(JAIL_EXIT_SETUP_FAILED);
    v8_random_number_generator_set_seed(generator, seed);
}

static napi_value serve_js(napi_env env, napi_callback_info info)
{
    uv_loop_t *loop;
    napi_value undefined;

    jail_zygote_serve();
    /* In the child: the default loop's epoll set, async eventfd and signal
     * pipe are fresh but empty (renew_runtime_fds_child); make it whole again. */
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_loop_fork(loop) != 0)
        _exit(JAIL_EXIT_SETUP_FAILED);
    reseed_openssl_child();
    reseed_v8_child();
    napi_get_undefined(env, &undefined);
    return undefined;
}

/* exit(code): a child must leave with _exit. Node's own exit tears down the
 * platform, joining helper threads that a fork did not copy (it crashes). */
static napi_value exit_js(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value code_value;
    int32_t code = 1;

    if (napi_get_cb_info(env, info, &argc, &code_value, NULL, NULL) == napi_ok && argc == 1)
        napi_get_value_int32(env, code_value, &code);
    _exit(code);
}

/* takeChannel(): the result channel moved from fd 3 to a private close-on-exec
 * fd (what Python's harness does with fcntl, which Node lacks); -1 if it fails. */
static napi_value take_channel_js(napi_env env, napi_callback_info info)
{
    napi_value result;
    int fd = fcntl(3, F_DUPFD_CLOEXEC, 10);

    if (fd >= 0 && close(3) < 0) {
        close(fd);
        fd = -1;
    }
    napi_create_int32(env, fd, &result);
    return result;
}

/* takeStdin(): the host's end of the request and the call replies moved from
 * fd 0 to a private close-on-exec fd, /dev/null put on 0, so that the snippet
 * can neither read the replies nor steal them; -1 if it fails. */
static napi_value take_stdin_js(napi_env env, napi_callback_info info)
{
    napi_value result;
    int fd = fcntl(0, F_DUPFD_CLOEXEC, 10);
    int null_fd = fd >= 0 ? open("/dev/null", O_RDONLY | O_CLOEXEC) : -1;

    if (null_fd < 0 || dup2(null_fd, 0) < 0) {
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    if (null_fd >= 0)
        close(null_fd);
    napi_create_int32(env, fd, &result);
    return result;
}

NAPI_MODULE_INIT()
{
    napi_value serve, exit_function, take_channel, take_stdin;
    if (napi_create_function(env, "serve", NAPI_AUTO_LENGTH, serve_js, NULL, &serve) != napi_ok ||
        napi_set_named_property(env, exports, "serve", serve) != napi_ok ||
        napi_create_function(env, "exit", NAPI_AUTO_LENGTH, exit_js, NULL, &exit_function) != napi_ok ||
        napi_set_named_property(env, exports, "exit", exit_function) != napi_ok ||
        napi_create_function(env, "takeChannel", NAPI_AUTO_LENGTH, take_channel_js, NULL, &take_channel) != napi_ok ||
        napi_set_named_property(env, exports, "takeChannel", take_channel) != napi_ok ||
        napi_create_function(env, "takeStdin", NAPI_AUTO_LENGTH, take_stdin_js, NULL, &take_stdin) != napi_ok ||
        napi_set_named_property(env, exports, "takeStdin", take_stdin) != napi_ok)
        return NULL;
    return exports;
}
#endif
#endif
