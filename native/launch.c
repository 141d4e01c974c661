/* jail_spawn: clone into new namespaces, let the parent write the id maps and
 * cgroups, then walk the child through a flat list of steps (DESIGN.md 2.3)
 * and exec the interpreter with the seccomp filter installed last.
 *
 * Names say which process runs a function: *_child between clone and exec
 * (async-signal-safe only: the parent is a threaded Python process), *_parent
 * in the caller. A failing child step writes {step, errno, index} to a
 * close-on-exec pipe; zero bytes on that pipe means exec happened. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "caps.h"
#include "internal.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

const char *jail_native_version(void)
{
    return JAIL_NATIVE_VERSION;
}

_Noreturn void child_fail(const struct child_state *state, int step, int index)
{
    struct jail_report report = {.step = step, .err = errno, .index = index};
    ssize_t ignored = write(state->report_fd, &report, sizeof report);
    (void)ignored;
    _exit(JAIL_EXIT_SETUP_FAILED);
}

/* Async-signal-safe: used by both sides. */
static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len); /* id maps must be written in one write */
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)len ? 0 : -1;
}

/* ---- child steps, in the order they run ---- */

/* The parent blocked every signal around clone so that none of Python's
 * handlers can run here; give the interpreter default dispositions. */
static void reset_signal_handlers_child(void)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++)
        sigaction(sig, &dfl, NULL); /* EINVAL for SIGKILL, SIGSTOP, libc's own: fine */
}

/* PDEATHSIG first, then wait for the parent's go: if the parent died before
 * it could see PDEATHSIG armed, the sync pipe reads EOF and we leave. */
static void wait_for_parent_child(struct child_state *state, int sync_fd)
{
    char go;
    ssize_t n;

    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        child_fail(state, JAIL_STEP_PDEATHSIG, -1);
    do {
        n = read(sync_fd, &go, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) {
        errno = n == 0 ? ECHILD : errno;
        child_fail(state, JAIL_STEP_SYNC, -1);
    }
    close(sync_fd);
}

/* v1 cgroups, joined by the child itself while it still has the host uid
 * it was cloned with (see cgroup_self in launcher.h). */
static void join_cgroups_child(struct child_state *state)
{
    const struct jail_config *config = state->config;

    for (int i = 0; i < config->n_cgroups && config->cgroup_self; i++)
        if (write_file(config->cgroup_files[i], "0") < 0)
            child_fail(state, JAIL_STEP_CGROUP, i);
}

/* From the host's uid (root, or the unprivileged server user) to the mapped
 * sandbox uid. Capabilities in the new user namespace survive, because the
 * old uid is not the namespace's root (capabilities(7), "Effect of user ID
 * changes"); they go at exec, as the uid is not 0 there.
 *
 * Raw syscalls: glibc's wrappers broadcast the change to every thread the
 * parent had, under a lock another parent thread may have held at clone
 * time, and the child would wait for it forever. */
static void become_sandbox_user_child(struct child_state *state)
{
    const struct jail_config *config = state->config;
    uid_t uid = config->inside_uid;
    gid_t gid = config->inside_gid;

    if (!config->deny_setgroups && syscall(SYS_setgroups, 0, NULL) < 0)
        child_fail(state, JAIL_STEP_SETGROUPS, -1);
    if (syscall(SYS_setresgid, gid, gid, gid) < 0)
        child_fail(state, JAIL_STEP_SETGID, -1);
    if (syscall(SYS_setresuid, uid, uid, uid) < 0)
        child_fail(state, JAIL_STEP_SETUID, -1);
}

/* Only 0, 1, 2 and 3 survive exec. Copies go above 15 first so that a source
 * fd that is itself 0..3 is not overwritten before it is used. */
static void setup_fds_child(struct child_state *state)
{
    const struct jail_config *config = state->config;
    int copies[4];

    for (int i = 0; i < 4; i++) {
        copies[i] = -1;
        if (config->stdio[i] >= 0 && (copies[i] = fcntl(config->stdio[i], F_DUPFD_CLOEXEC, 16)) < 0)
            child_fail(state, JAIL_STEP_DUP_FDS, i);
    }
    for (int i = 0; i < 4; i++) {
        if (copies[i] < 0)
            close(i);
        else if (dup2(copies[i], i) < 0)
            child_fail(state, JAIL_STEP_DUP_FDS, i);
    }
    /* Everything else closes at exec (the report pipe must live until then). */
    if (syscall(SYS_close_range, 4U, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
        return;
    if (errno != ENOSYS && errno != EINVAL)
        child_fail(state, JAIL_STEP_CLOSE_FDS, -1);
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) < 0)
        child_fail(state, JAIL_STEP_CLOSE_FDS, -1);
    for (unsigned long fd = 4; fd < nofile.rlim_cur && fd < 1048576; fd++)
        fcntl((int)fd, F_SETFD, FD_CLOEXEC); /* EBADF for the closed ones: fine */
}

static void set_rlimits_child(struct child_state *state)
{
    const struct jail_config *config = state->config;

    for (int i = 0; i < config->n_rlimits; i++) {
        struct rlimit limit = {.rlim_cur = config->rlimits[i].soft, .rlim_max = config->rlimits[i].hard};
        if (setrlimit(config->rlimits[i].resource, &limit) < 0)
            child_fail(state, JAIL_STEP_RLIMIT, i);
    }
}

static void drop_capabilities_child(struct child_state *state)
{
    int which;
    if (jail_drop_capabilities(&which) < 0)
        child_fail(state, JAIL_STEP_DROP_CAPS, which);
}

/* Must stay the last step before exec: every later syscall goes through the
 * filter, which allows execve and the write/exit of a failed exec only. */
static void install_seccomp_child(struct child_state *state)
{
    const struct jail_config *config = state->config;
    struct sock_fprog program = {
        .len = (unsigned short)(config->bpf_len / sizeof(struct sock_filter)),
        .filter = (struct sock_filter *)config->bpf,
    };

    if (config->bpf_len == 0)
        return;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) == 0)
        return;
    if (errno != ENOSYS || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0) < 0)
        child_fail(state, JAIL_STEP_SECCOMP, -1);
}

static _Noreturn void run_child(const struct jail_config *config, int sync_fd, int report_fd)
{
    struct child_state state = {.config = config, .report_fd = report_fd};
    sigset_t none;

    reset_signal_handlers_child();
    wait_for_parent_child(&state, sync_fd);
    join_cgroups_child(&state);
    open_mount_sources_child(&state);
    become_sandbox_user_child(&state);
    /* The uid change cleared the parent-death signal; our parent thread is
     * blocked in jail_spawn until we exec or fail, so it is still there. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        child_fail(&state, JAIL_STEP_PDEATHSIG, -2);
    build_root_child(&state);
    if (sethostname(config->hostname, strlen(config->hostname)) < 0)
        child_fail(&state, JAIL_STEP_SETHOSTNAME, -1);
    if (setsid() < 0)
        child_fail(&state, JAIL_STEP_SETSID, -1);
    setup_fds_child(&state);
    set_rlimits_child(&state);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(&state, JAIL_STEP_NO_NEW_PRIVS, -1);
    if (!config->keep_caps)
        drop_capabilities_child(&state);
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        child_fail(&state, JAIL_STEP_SIGNALS, -1);
    install_seccomp_child(&state);
    execve(config->path, config->argv, config->envp);
    child_fail(&state, JAIL_STEP_EXEC, -1);
}

/* ---- parent ---- */

static int report_parent(struct jail_child *child, int step, int err, int index)
{
    child->report.step = step;
    child->report.err = err;
    child->report.index = index;
    return -1;
}

static int is_safe_target(const char *path)
{
    if (path == NULL || path[0] != '/')
        return 0;
    for (const char *p = path; *p; p++)
        if (p[0] == '/' && (p[1] == '/' || (p[1] == '.' && (p[2] == '/' || p[2] == '\0' ||
                                                           (p[2] == '.' && (p[3] == '/' || p[3] == '\0'))))))
            return 0;
    return 1;
}

/* Input checks at the boundary: bad input is EINVAL, never a crash. */
static int validate_config_parent(const struct jail_config *config, struct jail_child *child)
{
    if (config->path == NULL || config->argv == NULL || config->envp == NULL || config->uid_map == NULL ||
        config->gid_map == NULL || config->staging == NULL || config->root_options == NULL ||
        config->hostname == NULL || config->workdir == NULL)
        return report_parent(child, JAIL_STEP_CONFIG, EINVAL, -1);
    if ((config->clone_flags & (CLONE_NEWUSER | CLONE_NEWNS)) != (CLONE_NEWUSER | CLONE_NEWNS))
        return report_parent(child, JAIL_STEP_CONFIG, EINVAL, -1);
    if (config->n_mounts < 0 || config->n_mounts > JAIL_MAX_MOUNTS || (config->n_mounts && !config->mounts))
        return report_parent(child, JAIL_STEP_CONFIG, EINVAL, -1);
    if (config->n_rlimits < 0 || config->n_rlimits > JAIL_MAX_RLIMITS || (config->n_rlimits && !config->rlimits))
        return report_parent(child, JAIL_STEP_CONFIG, EINVAL, -1);
    if (config->n_cgroups < 0 || config->n_cgroups > JAIL_MAX_CGROUPS ||
        (config->n_cgroups && !config->cgroup_files))
        return report_parent(child, JAIL_STEP_CONFIG, EINVAL, -1);
    if (config->bpf_len % sizeof(struct sock_filter) != 0 ||
        config->bpf_len > JAIL_MAX_BPF_INSNS * sizeof(struct sock_filter) || (config->bpf_len && !config->bpf))
        return report_parent(child, JAIL_STEP_CONFIG, EINVAL, -1);
    for (int i = 0; i < config->n_mounts; i++) {
        const struct jail_mount *m = &config->mounts[i];
        int needs_source = m->kind == JAIL_MOUNT_BIND_RO || m->kind == JAIL_MOUNT_BIND_DEV ||
                           m->kind == JAIL_MOUNT_SYMLINK;
        if (m->kind < JAIL_MOUNT_BIND_RO || m->kind > JAIL_MOUNT_SYMLINK || !is_safe_target(m->target) ||
            (needs_source && m->source == NULL))
            return report_parent(child, JAIL_STEP_CONFIG, EINVAL, i);
    }
    return 0;
}

/* /proc/PID/<name> into buf. */
static const char *proc_path_parent(char *buf, long size, pid_t pid, const char *name)
{
    long used = path_append(buf, 0, size, "/proc/");
    used = path_append_uint(buf, used, size, (unsigned long)pid);
    path_append(buf, used, size, name);
    return buf;
}

/* What only the parent can do: id maps (it holds the privilege in the outer
 * namespace) and cgroup membership, before the child goes on. The child is
 * blocked on the sync pipe and unreaped, so its pid cannot be recycled. */
static int setup_from_parent(const struct jail_config *config, pid_t pid, struct jail_child *child)
{
    char path[64];
    char pid_text[24];

    if (config->deny_setgroups && write_file(proc_path_parent(path, sizeof path, pid, "/setgroups"), "deny") < 0)
        return report_parent(child, JAIL_STEP_SETGROUPS_FILE, errno, -1);
    if (write_file(proc_path_parent(path, sizeof path, pid, "/uid_map"), config->uid_map) < 0)
        return report_parent(child, JAIL_STEP_UID_MAP, errno, -1);
    if (write_file(proc_path_parent(path, sizeof path, pid, "/gid_map"), config->gid_map) < 0)
        return report_parent(child, JAIL_STEP_GID_MAP, errno, -1);
    path_append_uint(pid_text, 0, sizeof pid_text, (unsigned long)pid);
    for (int i = 0; i < config->n_cgroups && !config->cgroup_self; i++)
        if (write_file(config->cgroup_files[i], pid_text) < 0)
            return report_parent(child, JAIL_STEP_CGROUP, errno, i);
    return 0;
}

/* clone3 gives the pidfd atomically; plain clone on kernels without it. No
 * new stack: the child runs on a copy of ours, as after fork. */
static pid_t clone_parent(int ns_flags, int *pidfd)
{
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = (uint64_t)ns_flags | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    args.exit_signal = SIGCHLD;

    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid >= 0 || errno != ENOSYS)
        return (pid_t)pid;
    return (pid_t)syscall(SYS_clone, (unsigned long)ns_flags | CLONE_PIDFD | SIGCHLD, 0, pidfd, 0, 0);
}

static void reap_parent(pid_t pid)
{
    while (waitpid(pid, NULL, __WALL) < 0 && errno == EINTR)
        ;
}

int jail_spawn(const struct jail_config *config, struct jail_child *child)
{
    int sync_pipe[2], report_pipe[2], pidfd = -1;
    sigset_t all, old;

    memset(child, 0, sizeof *child);
    child->pid = child->pidfd = -1;
    child->report.index = -1;
    if (validate_config_parent(config, child) < 0)
        return -1;
    if (pipe2(sync_pipe, O_CLOEXEC) < 0)
        return report_parent(child, JAIL_STEP_PIPE, errno, -1);
    if (pipe2(report_pipe, O_CLOEXEC) < 0) {
        int saved = errno;
        close(sync_pipe[0]);
        close(sync_pipe[1]);
        return report_parent(child, JAIL_STEP_PIPE, saved, -1);
    }

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t pid = clone_parent(config->clone_flags, &pidfd);
    if (pid == 0)
        run_child(config, sync_pipe[0], report_pipe[1]);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(sync_pipe[0]);
    close(report_pipe[1]);
    if (pid < 0) {
        close(sync_pipe[1]);
        close(report_pipe[0]);
        return report_parent(child, JAIL_STEP_CLONE, clone_errno, -1);
    }

    int rc = setup_from_parent(config, pid, child);
    if (rc == 0 && write(sync_pipe[1], "g", 1) != 1)
        rc = report_parent(child, JAIL_STEP_SYNC, errno, -1);
    close(sync_pipe[1]); /* on failure the child reads EOF and exits */

    if (rc == 0) {
        ssize_t n;
        do {
            n = read(report_pipe[0], &child->report, sizeof child->report);
        } while (n < 0 && errno == EINTR);
        if (n != 0)
            rc = n == (ssize_t)sizeof child->report ? -1 : report_parent(child, JAIL_STEP_SYNC, EPROTO, -1);
    }
    close(report_pipe[0]);
    if (rc < 0) {
        reap_parent(pid);
        close(pidfd);
        return -1;
    }
    child->pid = pid;
    child->pidfd = pidfd;
    return 0;
}
