/* The zygote's control protocol: what the host and the fork server say to
 * each other over a SOCK_SEQPACKET socket (the zygote's fd 0).
 *
 * Like launcher.h, this file is also cffi's cdef (jail._native packs and reads
 * these structs), so it holds plain declarations only.
 *
 *   host -> zygote: first a jail_zygote_setup followed by the children's
 *                   seccomp program (struct sock_filter[] as bytes), in one
 *                   message; then one jail_zygote_request per
 *                   child, carrying its fds: stdin, stdout, stderr, result
 *                   channel, then the cgroup files it joins (opened by the host).
 *   zygote -> host: per request STARTED (with a pidfd of the child) or FAILED;
 *                   per child, once it is gone and reaped, EXITED. */

#define JAIL_ZYGOTE_STDIO 4
#define JAIL_ZYGOTE_MAX_FDS 8
#define JAIL_ZYGOTE_MAX_CHILDREN 256
#define JAIL_ZYGOTE_STARTED 1
#define JAIL_ZYGOTE_FAILED 2
#define JAIL_ZYGOTE_EXITED 3

struct jail_zygote_request {
    uint64_t token;               /* the host's name for this child, echoed in replies */
    uint32_t uid;                 /* the child's uid and gid in the zygote's user namespace (not 0) */
    uint32_t inside_id;           /* and as the snippet sees them, in the child's own user namespace */
    int32_t n_fds;                /* JAIL_ZYGOTE_STDIO + cgroup files */
    int32_t n_rlimits;
    struct jail_rlimit rlimits[16];
    char hostname[64];
    char scratch_options[64];     /* a fresh tmpfs at /tmp with these options; "" for none */
};

struct jail_zygote_setup {
    int32_t mount_proc;           /* 1: each child mounts a proc of its own pid namespace at /proc */
    int32_t reserved;
};

struct jail_zygote_reply {
    uint64_t token;
    int32_t kind;                 /* JAIL_ZYGOTE_* */
    int32_t pid;                  /* in the zygote's pid namespace */
    int32_t status;               /* EXITED: the wait status */
    int32_t step;                 /* FAILED: the JAIL_STEP_* that failed, and its errno */
    int32_t err;
    int32_t index;
    int64_t cpu_us;               /* EXITED: user + system time */
    int64_t maxrss_kb;
};
