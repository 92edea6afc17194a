#ifndef CRIO_FAST_MONITOR_H
#define CRIO_FAST_MONITOR_H

#define MONITOR_VERSION "0.1.0"
/* Bumped whenever the daemon <-> monitor control protocol changes. */
#define MONITOR_PROTOCOL 1

int monitor_self_check(void);

#endif
