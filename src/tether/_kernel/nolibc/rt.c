/*
 * rt.c — the libc-free guard's C runtime: _start's C half and exactly the libc functions the
 * guard's sources (guard*.c, clone.c, clone_raw.c) call, under their libc names and with the
 * prototypes of the system's libc headers, so those sources compile against it unchanged.
 *
 * Why: a static glibc guard spends ~0.5 ms of every guarded spawn in glibc's start-up (CPU
 * feature detection, IRELATIVE relocations, TLS set-up) and keeps ~700 KiB resident; with no
 * libc at all the guard is at the exec floor. The headers still come from the system (types
 * and constants only); no libc code is linked. Built with -nostdlib -ffreestanding by setup.py.
 *
 * What it relies on: the guard is one single-threaded process (errno is a plain global; a
 * CLONE_VM child shares it exactly as it shares glibc's thread's errno); the guard allocates
 * twice, before the loop (malloc is one mmap per block); the kernel's sigset is 8 bytes on
 * x86_64 and aarch64 (the libc's larger sigset_t is filled and read in its first 8 bytes).
 * Every syscall wrapper follows libc's convention: -1 with errno set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include "arch_x86_64.h"
#elif defined(__aarch64__)
#include "arch_aarch64.h"
#else
#error "the libc-free guard supports x86_64 and aarch64; setup.py builds the libc guard elsewhere"
#endif

#define KERNEL_SIGSET_SIZE 8

char **environ;
static int errno_value;

int *__errno_location(void)
{
    return &errno_value;
}

/* The kernel says -4095..-1 for -errno; libc says -1 and errno. */
static long ret(long r)
{
    if ((unsigned long)r > -4096UL) {
        errno_value = (int)-r;
        return -1;
    }
    return r;
}

#define SYS(n, a, b, c, d, e, f) \
    ret(rt_syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f)))

int main(int argc, char **argv);

/* Called by _start with the initial stack (see arch_*.h for its layout). */
__attribute__((noreturn, used)) void tether_rt_start(long *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    environ = argv + argc + 1;
    _exit(main(argc, argv));
}

/* ---- process ------------------------------------------------------------------------------ */

void _exit(int status)
{
    for (;;)
        rt_syscall6(SYS_exit_group, status, 0, 0, 0, 0, 0);
}

long syscall(long n, ...)
{
    va_list ap;
    long a[6];
    va_start(ap, n);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long); /* extra ones are junk the kernel ignores (musl does so too) */
    va_end(ap);
    return SYS(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}

int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...)
{
    extern long tether_rt_clone(int (*)(void *), void *, unsigned long, void *, void *,
                                void *, void *);
    va_list ap;
    void *parent_tid, *tls, *child_tid;
    va_start(ap, arg);
    parent_tid = va_arg(ap, void *);
    tls = va_arg(ap, void *);
    child_tid = va_arg(ap, void *);
    va_end(ap);
    return (int)ret(tether_rt_clone(fn, stack, (unsigned long)(unsigned)flags, arg,
                                    parent_tid, tls, child_tid));
}

pid_t getpid(void) { return (pid_t)SYS(SYS_getpid, 0, 0, 0, 0, 0, 0); }
pid_t getppid(void) { return (pid_t)SYS(SYS_getppid, 0, 0, 0, 0, 0, 0); }
pid_t getpgrp(void) { return (pid_t)SYS(SYS_getpgid, 0, 0, 0, 0, 0, 0); }
uid_t getuid(void) { return (uid_t)SYS(SYS_getuid, 0, 0, 0, 0, 0, 0); }
uid_t geteuid(void) { return (uid_t)SYS(SYS_geteuid, 0, 0, 0, 0, 0, 0); }
gid_t getgid(void) { return (gid_t)SYS(SYS_getgid, 0, 0, 0, 0, 0, 0); }
gid_t getegid(void) { return (gid_t)SYS(SYS_getegid, 0, 0, 0, 0, 0, 0); }
int setpgid(pid_t pid, pid_t pgid) { return (int)SYS(SYS_setpgid, pid, pgid, 0, 0, 0, 0); }
int kill(pid_t pid, int sig) { return (int)SYS(SYS_kill, pid, sig, 0, 0, 0, 0); }
int chdir(const char *path) { return (int)SYS(SYS_chdir, path, 0, 0, 0, 0, 0); }

int waitid(idtype_t idtype, id_t id, siginfo_t *info, int options)
{
    /* The kernel's waitid has a fifth argument, a struct rusage * the libc call lacks. */
    return (int)SYS(SYS_waitid, idtype, id, info, options, NULL, 0);
}

int prctl(int option, ...)
{
    va_list ap;
    unsigned long a[4];
    va_start(ap, option);
    for (int i = 0; i < 4; i++)
        a[i] = va_arg(ap, unsigned long);
    va_end(ap);
    return (int)SYS(SYS_prctl, option, a[0], a[1], a[2], a[3], 0);
}

int clock_gettime(clockid_t clock, struct timespec *ts)
{
    return (int)SYS(SYS_clock_gettime, clock, ts, 0, 0, 0, 0);
}

int nanosleep(const struct timespec *req, struct timespec *rem)
{
    return (int)SYS(SYS_nanosleep, req, rem, 0, 0, 0, 0);
}

/* ---- files -------------------------------------------------------------------------------- */

int open(const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;
    va_start(ap, flags);
    mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
    va_end(ap);
    return (int)SYS(SYS_openat, AT_FDCWD, path, flags, mode, 0, 0);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;
    va_start(ap, flags);
    mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
    va_end(ap);
    return (int)SYS(SYS_openat, dirfd, path, flags, mode, 0, 0);
}

int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    unsigned long arg;
    va_start(ap, cmd);
    arg = va_arg(ap, unsigned long);
    va_end(ap);
    return (int)SYS(SYS_fcntl, fd, cmd, arg, 0, 0, 0);
}

int close(int fd) { return (int)SYS(SYS_close, fd, 0, 0, 0, 0, 0); }
int pipe2(int fds[2], int flags) { return (int)SYS(SYS_pipe2, fds, flags, 0, 0, 0, 0); }
int fstat(int fd, struct stat *st) { return (int)SYS(SYS_fstat, fd, st, 0, 0, 0, 0); }
int getrusage(int who, struct rusage *ru) { return (int)SYS(SYS_getrusage, who, ru, 0, 0, 0, 0); }
int rmdir(const char *path) { return (int)SYS(SYS_unlinkat, AT_FDCWD, path, AT_REMOVEDIR, 0, 0, 0); }

int unlinkat(int dirfd, const char *path, int flags)
{
    return (int)SYS(SYS_unlinkat, dirfd, path, flags, 0, 0, 0);
}

ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t n)
{
    return SYS(SYS_readlinkat, dirfd, path, buf, n, 0, 0);
}

int dup2(int from, int to)
{
    /* dup3 (the only one aarch64 has) refuses from == to; dup2 then checks from is open. */
    if (from == to)
        return fcntl(from, F_GETFD) < 0 ? -1 : to;
    return (int)SYS(SYS_dup3, from, to, 0, 0, 0, 0);
}

ssize_t read(int fd, void *buf, size_t n) { return SYS(SYS_read, fd, buf, n, 0, 0, 0); }
ssize_t write(int fd, const void *buf, size_t n) { return SYS(SYS_write, fd, buf, n, 0, 0, 0); }

ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
    return SYS(SYS_pread64, fd, buf, n, off, 0, 0);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    return SYS(SYS_pwrite64, fd, buf, n, off, 0, 0);
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
    return SYS(SYS_writev, fd, iov, n, 0, 0, 0);
}

ssize_t recv(int fd, void *buf, size_t n, int flags)
{
    return SYS(SYS_recvfrom, fd, buf, n, flags, NULL, NULL);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    return SYS(SYS_sendmsg, fd, msg, flags, 0, 0, 0);
}

int poll(struct pollfd *fds, nfds_t n, int timeout_ms)
{
    /* ppoll: aarch64 has no poll. */
    struct timespec ts, *tsp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        tsp = &ts;
    }
    return (int)SYS(SYS_ppoll, fds, n, tsp, NULL, KERNEL_SIGSET_SIZE, 0);
}

/* ---- terminals ---------------------------------------------------------------------------- */

int isatty(int fd)
{
    unsigned char termios_buf[sizeof(struct termios)] __attribute__((aligned(8)));
    return SYS(SYS_ioctl, fd, TCGETS, termios_buf, 0, 0, 0) == 0;
}

pid_t tcgetpgrp(int fd)
{
    pid_t pgrp;
    return SYS(SYS_ioctl, fd, TIOCGPGRP, &pgrp, 0, 0, 0) < 0 ? -1 : pgrp;
}

int tcsetpgrp(int fd, pid_t pgrp)
{
    return (int)SYS(SYS_ioctl, fd, TIOCSPGRP, &pgrp, 0, 0, 0);
}

/* ---- signals ------------------------------------------------------------------------------ */

int sigemptyset(sigset_t *set)
{
    memset(set, 0, sizeof *set);
    return 0;
}

int sigfillset(sigset_t *set)
{
    memset(set, 0xff, sizeof *set);
    return 0;
}

int sigaddset(sigset_t *set, int sig)
{
    if (sig < 1 || sig > KERNEL_SIGSET_SIZE * 8) {
        errno_value = EINVAL;
        return -1;
    }
    ((uint64_t *)(void *)set)[0] |= 1ULL << (sig - 1);
    return 0;
}

int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
    return (int)SYS(SYS_rt_sigprocmask, how, set, old, KERNEL_SIGSET_SIZE, 0, 0);
}

int pthread_sigmask(int how, const sigset_t *set, sigset_t *old)
{
    /* One thread: the process mask; the error comes back as the result, not in errno. */
    return sigprocmask(how, set, old) == 0 ? 0 : errno_value;
}

int signalfd(int fd, const sigset_t *mask, int flags)
{
    return (int)SYS(SYS_signalfd4, fd, mask, KERNEL_SIGSET_SIZE, flags, 0, 0);
}

/* The kernel's struct sigaction (not the libc's, whose mask is 128 bytes). */
struct rt_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif

__sighandler_t signal(int sig, __sighandler_t handler)
{
    struct rt_sigaction act = {0}, old;
    act.handler = handler;
    act.flags = SA_RESTART; /* BSD semantics, as glibc's signal() */
#if TETHER_RT_NEEDS_RESTORER
    if (handler != SIG_DFL && handler != SIG_IGN) {
        extern void tether_rt_restore(void);
        act.flags |= SA_RESTORER;
        act.restorer = tether_rt_restore;
    }
#endif
    if (SYS(SYS_rt_sigaction, sig, &act, &old, KERNEL_SIGSET_SIZE, 0, 0) < 0)
        return SIG_ERR;
    return old.handler;
}

/* ---- memory ------------------------------------------------------------------------------- */

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return (void *)SYS(SYS_mmap, addr, len, prot, flags, fd, off);
}

int munmap(void *addr, size_t len) { return (int)SYS(SYS_munmap, addr, len, 0, 0, 0, 0); }

/* One mapping per block, its size in a 16-byte header: the guard allocates twice. */
void *malloc(size_t n)
{
    size_t total = n + 16;
    char *block;
    if (total < n) {
        errno_value = ENOMEM;
        return NULL;
    }
    block = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (block == MAP_FAILED)
        return NULL;
    *(size_t *)(void *)block = total;
    return block + 16;
}

void free(void *p)
{
    if (p != NULL) {
        char *block = (char *)p - 16;
        munmap(block, *(size_t *)(void *)block);
    }
}

/* ---- strings (gcc may also emit memcpy/memset/memmove/memcmp calls itself) ---------------- */

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

void *memcpy(void *restrict dst, const void *restrict src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

size_t strlen(const char *s)
{
    const char *p = s;
    while (*p)
        p++;
    return (size_t)(p - s);
}

char *strchr(const char *s, int c)
{
    for (;; s++) {
        if (*s == (char)c)
            return (char *)s;
        if (*s == '\0')
            return NULL;
    }
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (unsigned char)*a - (unsigned char)*b;
        if (*a == '\0')
            return 0;
    }
    return 0;
}

int strcmp(const char *a, const char *b)
{
    return strncmp(a, b, (size_t)-1);
}

char *getenv(const char *name)
{
    size_t len = strlen(name);
    for (char **e = environ; e != NULL && *e != NULL; e++)
        if (strncmp(*e, name, len) == 0 && (*e)[len] == '=')
            return *e + len + 1;
    return NULL;
}
