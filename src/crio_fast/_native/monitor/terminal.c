/*
 * Pseudo terminals for container processes, shared by the container init
 * (launch.c, plan TTY) and the exec helper (exec.c, `--console-fd`).
 *
 * The terminal is always opened through /dev/ptmx of the caller's current
 * mount namespace, i.e. after it has entered the container's, so that the
 * peer lives on the container's own devpts instance: ttyname() inside gives
 * /dev/pts/N and the node exists there. The master goes to whoever serves
 * the terminal (the pod monitor, or the daemon for an exec) as SCM_RIGHTS.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "monitor.h"

int open_pseudo_terminal(int *master_out, int *peer_out, struct error *err)
{
    int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        return error_errno(err, errno, "open /dev/ptmx in the container");
    int unlock = 0;
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0) {
        int saved = errno;
        close(master);
        return error_errno(err, saved, "unlock the pseudo terminal");
    }
    /* TIOCGPTPEER rather than ptsname()+open: no path lookup that a
     * container could redirect. */
    int peer = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (peer < 0) {
        int saved = errno;
        close(master);
        return error_errno(err, saved, "open the pseudo terminal's peer");
    }
    *master_out = master;
    *peer_out = peer;
    return 0;
}

int make_controlling_terminal(int terminal, struct error *err)
{
    if (ioctl(terminal, TIOCSCTTY, 0) < 0 || dup2(terminal, 0) < 0 || dup2(terminal, 1) < 0 ||
        dup2(terminal, 2) < 0)
        return error_errno(err, errno, "make the pseudo terminal the controlling terminal and stdio");
    return 0;
}

int set_terminal_size(int terminal, uint32_t size, struct error *err)
{
    struct winsize winsize = {.ws_col = (unsigned short)(size & 0xffff), .ws_row = (unsigned short)(size >> 16)};
    if (ioctl(terminal, TIOCSWINSZ, &winsize) < 0)
        return error_errno(err, errno, "set the terminal's size to %ux%u", winsize.ws_col, winsize.ws_row);
    return 0;
}

int send_fd(int socket_fd, char tag, int fd, struct error *err)
{
    struct iovec iov = {&tag, 1};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                             .msg_controllen = sizeof(control.space)};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    ssize_t sent;
    do {
        sent = sendmsg(socket_fd, &message, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return error_errno(err, errno, "sendmsg");
    if (sent != 1)
        return error_plain(err, EIO, "sendmsg sent %zd bytes instead of 1", sent);
    return 0;
}
