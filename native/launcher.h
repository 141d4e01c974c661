/* The launcher's public interface: one spawn call and the data it takes.
 *
 * This file is read twice: by the C compiler (through launch.c) and by cffi as
 * the cdef of jail._native, so it holds plain declarations only (no includes,
 * no include guard, no function-like macros).
 *
 * Life cycle: jail/_backends/native.py fills a jail_config (every pointer it
 * holds stays alive for the call), calls jail_spawn once, and from then on owns
 * the child through its pidfd: it signals, polls and reaps it. */

#define JAIL_MAX_MOUNTS 64
#define JAIL_MAX_RLIMITS 16
#define JAIL_MAX_CGROUPS 4
#define JAIL_MAX_BPF_INSNS 4096

/* Exit code of a child whose set-up failed before exec (the report says why). */
#define JAIL_EXIT_SETUP_FAILED 126

/* What one mount entry makes inside the new root. */
#define JAIL_MOUNT_BIND_RO 1    /* read-only recursive bind of a host directory or file */
#define JAIL_MOUNT_BIND_DEV 2   /* read-only bind of a host device node (dev kept) */
#define JAIL_MOUNT_TMPFS 3      /* a tmpfs; options in data, MS_* in flags */
#define JAIL_MOUNT_PROC 4       /* a proc for the new pid namespace */
#define JAIL_MOUNT_SYMLINK 5    /* a symlink at target pointing to source */

/* The steps of a launch, in order. jail/_native_steps.py mirrors these names. */
#define JAIL_STEP_NONE 0
#define JAIL_STEP_CONFIG 1
#define JAIL_STEP_PIPE 2
#define JAIL_STEP_CLONE 3
#define JAIL_STEP_SETGROUPS_FILE 4
#define JAIL_STEP_UID_MAP 5
#define JAIL_STEP_GID_MAP 6
#define JAIL_STEP_CGROUP 7
#define JAIL_STEP_SYNC 8
#define JAIL_STEP_PDEATHSIG 9
#define JAIL_STEP_OPEN_SOURCE 10
#define JAIL_STEP_SETGROUPS 11
#define JAIL_STEP_SETGID 12
#define JAIL_STEP_SETUID 13
#define JAIL_STEP_MOUNT_PRIVATE 14
#define JAIL_STEP_MOUNT_ROOT 15
#define JAIL_STEP_MKDIR 16
#define JAIL_STEP_MOUNT_BIND 17
#define JAIL_STEP_MOUNT_READONLY 18
#define JAIL_STEP_MOUNT_TMPFS 19
#define JAIL_STEP_MOUNT_PROC 20
#define JAIL_STEP_SYMLINK 21
#define JAIL_STEP_PIVOT_ROOT 22
#define JAIL_STEP_UMOUNT_OLD_ROOT 23
#define JAIL_STEP_REMOUNT_ROOT 24
#define JAIL_STEP_CHDIR 25
#define JAIL_STEP_SETHOSTNAME 26
#define JAIL_STEP_SETSID 27
#define JAIL_STEP_RLIMIT 28
#define JAIL_STEP_DUP_FDS 29
#define JAIL_STEP_CLOSE_FDS 30
#define JAIL_STEP_NO_NEW_PRIVS 31
#define JAIL_STEP_DROP_CAPS 32
#define JAIL_STEP_SIGNALS 33
#define JAIL_STEP_SECCOMP 34
#define JAIL_STEP_EXEC 35
/* The zygote's steps (native/zygote.c); the ones above keep their meaning there. */
#define JAIL_STEP_PROTOCOL 36
#define JAIL_STEP_UNSHARE 37
#define JAIL_STEP_FORK 38
#define JAIL_STEP_UMOUNT_PROC 39
#define JAIL_STEP_RENEW_FDS 40
#define JAIL_STEP_THREADS 41

struct jail_mount {
    int kind;              /* JAIL_MOUNT_* */
    const char *source;    /* host path (binds), link text (symlink), else NULL */
    const char *target;    /* absolute, normalised path inside the sandbox */
    const char *data;      /* tmpfs options such as "size=16m,mode=1777", else NULL */
    unsigned long flags;   /* extra MS_* flags for tmpfs and proc (MS_NOEXEC, MS_RDONLY) */
};

struct jail_rlimit {
    int resource;          /* RLIMIT_* */
    uint64_t soft;
    uint64_t hard;
};

struct jail_config {
    const char *path;             /* interpreter, as a path inside the sandbox */
    char *const *argv;            /* NULL-terminated */
    char *const *envp;            /* NULL-terminated: the whole environment */
    int stdio[4];                 /* host fds that become 0, 1, 2 and 3; -1 leaves it closed */
    int clone_flags;              /* CLONE_NEW* */
    uint32_t inside_uid;
    uint32_t inside_gid;
    const char *uid_map;          /* contents written to /proc/PID/uid_map */
    const char *gid_map;
    int deny_setgroups;           /* 1: write "deny" to /proc/PID/setgroups (unprivileged) */
    const char *staging;          /* existing host dir the new root is mounted on (private ns) */
    const char *root_options;     /* tmpfs options of the new root */
    const struct jail_mount *mounts;
    int n_mounts;
    const struct jail_rlimit *rlimits;
    int n_rlimits;
    const char *const *cgroup_files;  /* the cgroups the child joins before it goes on: */
    int n_cgroups;
    int cgroup_self;              /* 1: v1 "tasks" files the child writes "0" to itself (no global
                                     lock, so no RCU grace period per spawn); 0: "cgroup.procs"
                                     files the parent writes the child's pid to */
    const unsigned char *bpf;     /* struct sock_filter array, as bytes */
    size_t bpf_len;
    const char *hostname;
    const char *workdir;          /* inside the sandbox */
    int keep_caps;                /* 1: a zygote (native/zygote.c): it stays root of its user
                                     namespace with its capabilities, which each child drops */
};

struct jail_report {
    int32_t step;                 /* JAIL_STEP_* that failed */
    int32_t err;                  /* its errno */
    int32_t index;                /* which mount, rlimit or cgroup; -1 if none */
};

struct jail_child {
    int pid;                      /* in the caller's pid namespace */
    int pidfd;                    /* owned by the caller from now on */
    struct jail_report report;    /* filled when jail_spawn returns -1 */
};

/* Starts the child and returns once it has exec'd (0) or failed (-1, with the
 * report filled in and the child reaped). Blocks at most for the set-up. */
int jail_spawn(const struct jail_config *config, struct jail_child *child);

/* The version the extension was built from, checked by jail at import. */
const char *jail_native_version(void);
