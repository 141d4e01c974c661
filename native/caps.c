/* Shared by the launcher's child and the zygote's children (both builds link
 * it): async-signal-safe, nothing allocated. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/capability.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "caps.h"

/* Bounding, ambient, then the three sets: nothing survives. On failure
 * returns -1 with errno set and *which the capability (or -1). */
int jail_drop_capabilities(int *which)
{
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];

    *which = -1;
    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) {
            *which = cap;
            return -1;
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return -1;
    memset(data, 0, sizeof data);
    return syscall(SYS_capset, &header, data) < 0 ? -1 : 0;
}
