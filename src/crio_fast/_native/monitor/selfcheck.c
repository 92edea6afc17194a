/* Self check: the kernel features the monitor depends on are usable. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

#include "monitor.h"

int monitor_self_check(void)
{
    /* The monitor must be able to become a child subreaper: PID 1 on some
     * hosts reaps orphans late, and the monitor reaps its containers itself. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) {
        fprintf(stderr, "prctl(PR_SET_CHILD_SUBREAPER): %s\n", strerror(errno));
        return 1;
    }
    printf("ok\n");
    return 0;
}
