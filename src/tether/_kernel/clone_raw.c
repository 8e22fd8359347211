/*
 * clone_raw.c — the one raw clone of tether (contract: clone.h, tether_clone_raw).
 *
 * clone3(CLONE_PIDFD|CLONE_CLEAR_SIGHAND|CLONE_VM|CLONE_VFORK) through a small trampoline, or
 * the legacy clone(CLONE_PIDFD|CLONE_VM|CLONE_VFORK) where seccomp or an old kernel refuses
 * clone3. The exec path (clone.c, tether_clone_exec) and the capability probe
 * (tether_probe_method) both clone through here, so the two branches exist once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>

#include "clone.h"

/* Flag values from the kernel uapi, spelled out so older headers still build. */
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000 /* since 5.2 */
#endif
#define TETHER_CLONE_CLEAR_SIGHAND 0x100000000ULL /* since 5.5 */
#define TETHER_CLONE_INTO_CGROUP 0x200000000ULL   /* since 5.7 */

#define LEGACY_STACK_SIZE (64 * 1024)

struct tether_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

/* ------------------------------------------------------------------------------------------ */
/* The clone3 trampoline.                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* long tether_clone3_raw(struct tether_clone_args *args, size_t size, int (*fn)(void *), void *arg)
 *
 * Returns the child's pid (or -errno) in the parent. The child never returns through C: it
 * calls fn(arg) on the parent's stack below the parent's live frames (stack=0, size=0: the
 * glibc vfork trick; the parent is suspended until the child execs or exits), then exit_group.
 * glibc has no clone3 wrapper, and a plain syscall() would return into a frame the parent
 * still owns. The symbol is local to this object file (no .globl). */
#if defined(__x86_64__)
#define TETHER_HAVE_CLONE3_TRAMPOLINE 1
__asm__(".text\n"
        ".p2align 4\n"
        ".type tether_clone3_raw,@function\n"
        "tether_clone3_raw:\n"
        "    mov %rdx, %r8\n"      /* fn: r8/r9 survive the syscall (only rcx, r11 do not) */
        "    mov %rcx, %r9\n"      /* arg */
        "    mov $435, %eax\n"     /* SYS_clone3 */
        "    syscall\n"
        "    test %rax, %rax\n"
        "    jnz 1f\n"
        "    xor %ebp, %ebp\n"
        "    and $-16, %rsp\n"     /* ABI: 16-byte aligned before the call */
        "    mov %r9, %rdi\n"
        "    call *%r8\n"
        "    mov %eax, %edi\n"
        "    mov $231, %eax\n"     /* SYS_exit_group */
        "    syscall\n"
        "    hlt\n"
        "1:  ret\n"
        ".size tether_clone3_raw, .-tether_clone3_raw\n");
#elif defined(__aarch64__)
#define TETHER_HAVE_CLONE3_TRAMPOLINE 1
__asm__(".text\n"
        ".p2align 4\n"
        ".type tether_clone3_raw,%function\n"
        "tether_clone3_raw:\n"
        "    mov x9, x2\n"
        "    mov x10, x3\n"
        "    mov x8, #435\n"
        "    svc #0\n"
        "    cbnz x0, 1f\n"
        "    mov x29, xzr\n"
        "    mov x0, x10\n"
        "    blr x9\n"
        "    mov x8, #94\n"        /* SYS_exit_group */
        "    svc #0\n"
        "1:  ret\n"
        ".size tether_clone3_raw, .-tether_clone3_raw\n");
#else
#define TETHER_HAVE_CLONE3_TRAMPOLINE 0
#endif

#if TETHER_HAVE_CLONE3_TRAMPOLINE
long tether_clone3_raw(struct tether_clone_args *args, size_t size, int (*fn)(void *), void *arg)
    __attribute__((visibility("hidden")));
#endif

long tether_clone_raw(int method, uint64_t extra_flags, int cgroup_fd, int (*fn)(void *),
                      void *arg, int *pidfd_out)
{
    sigset_t all, old;
    long pid = -ENOSYS;

    *pidfd_out = -1;
    /* Block everything around the clone so no handler of ours runs in the child before it
     * has reset handlers and mask (musl's order). */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (method == TETHER_CLONE_CLONE3) {
#if TETHER_HAVE_CLONE3_TRAMPOLINE
        struct tether_clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | TETHER_CLONE_CLEAR_SIGHAND |
                     extra_flags;
        args.pidfd = (uint64_t)(uintptr_t)pidfd_out;
        args.exit_signal = SIGCHLD;
        if (cgroup_fd >= 0) {
            args.flags |= TETHER_CLONE_INTO_CGROUP;
            args.cgroup = (uint64_t)cgroup_fd;
        }
        pid = tether_clone3_raw(&args, sizeof args, fn, arg);
#endif
    } else if (method == TETHER_CLONE_LEGACY && (extra_flags & ~(uint64_t)CLONE_FILES) == 0
               && cgroup_fd < 0) {
        /* The legacy clone needs a stack of its own: glibc's wrapper switches to it before
         * calling fn, so the child cannot borrow the parent's as the clone3 trampoline does. */
        void *stack = mmap(NULL, LEGACY_STACK_SIZE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) {
            pid = -errno;
        } else {
            pid = clone(fn, (char *)stack + LEGACY_STACK_SIZE,
                        CLONE_VM | CLONE_VFORK | CLONE_PIDFD | (int)extra_flags | SIGCHLD, arg,
                        pidfd_out);
            if (pid < 0)
                pid = -errno;
            munmap(stack, LEGACY_STACK_SIZE);
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pid;
}

long tether_clone_raw_beside(int method, int cgroup_fd, int (*fn)(void *), void *arg,
                             char *stack, size_t stack_size, int *pidfd_out)
{
    long pid = -ENOSYS;
    *pidfd_out = -1;
    if (method == TETHER_CLONE_CLONE3) {
#if TETHER_HAVE_CLONE3_TRAMPOLINE
        struct tether_clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_VM | CLONE_PIDFD | TETHER_CLONE_CLEAR_SIGHAND;
        args.pidfd = (uint64_t)(uintptr_t)pidfd_out;
        args.exit_signal = SIGCHLD;
        args.stack = (uint64_t)(uintptr_t)stack;
        args.stack_size = (uint64_t)stack_size;
        if (cgroup_fd >= 0) {
            args.flags |= TETHER_CLONE_INTO_CGROUP;
            args.cgroup = (uint64_t)cgroup_fd;
        }
        pid = tether_clone3_raw(&args, sizeof args, fn, arg);
#endif
    } else if (method == TETHER_CLONE_LEGACY && cgroup_fd < 0) {
        pid = clone(fn, stack + stack_size, CLONE_VM | CLONE_PIDFD | SIGCHLD, arg, pidfd_out);
        if (pid < 0)
            pid = -errno;
    }
    return pid;
}
