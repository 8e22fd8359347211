/*
 * arch_aarch64.h — the aarch64 kernel ABI, for the libc-free guard (rt.c includes it).
 *
 * System call: `svc #0` with the number in x8 and arguments in x0..x5; the result comes back
 * in x0: -4095..-1 is -errno, anything else is the value. No other register is clobbered.
 * aarch64 uses the generic syscall table: no open, dup2, poll, getpgrp (openat, dup3, ppoll,
 * getpgid(0) instead; rt.c uses those on both architectures).
 *
 * Process entry (_start, from execve): sp points at the initial stack,
 *   sp+0               argc
 *   sp+8               argv[0] .. argv[argc-1], NULL
 *   then               envp[0] .. NULL
 *   then               the auxiliary vector (type, value pairs, AT_NULL last)
 * sp is 16-byte aligned at entry (and must stay so). x0 may hold an atexit function from the
 * dynamic linker (never for a static binary, and ignored here).
 *
 * Signal return: the kernel returns through its vDSO sigreturn trampoline when no
 * SA_RESTORER is given, so no restorer is needed here.
 */
#ifndef TETHER_NOLIBC_ARCH_H
#define TETHER_NOLIBC_ARCH_H

#define TETHER_RT_NEEDS_RESTORER 0

static inline long rt_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc #0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory", "cc");
    return x0;
}

/* _start: hand the initial stack to C (tether_rt_start) with zero frame and link registers
 * so a debugger's backtrace ends here. */
__asm__(".text\n"
        ".global _start\n"
        ".type _start,%function\n"
        "_start:\n"
        "    mov x29, #0\n"
        "    mov x30, #0\n"
        "    mov x0, sp\n"
        "    bl tether_rt_start\n"
        "    brk #0\n"
        ".size _start, .-_start\n");

/* long tether_rt_clone(int (*fn)(void *), void *stack, unsigned long flags, void *arg,
 *                      void *parent_tid, void *tls, void *child_tid)
 * The legacy clone(2) on a stack of the caller's: kernel order flags, stack, parent_tid,
 * tls, child_tid. The child finds fn and arg on its new stack and exits with fn's result; it
 * never returns into the parent's frames. The parent gets the pid or -errno. */
__asm__(".text\n"
        ".type tether_rt_clone,%function\n"
        "tether_rt_clone:\n"
        "    and x1, x1, #-16\n"
        "    stp x0, x3, [x1, #-16]!\n" /* fn, arg */
        "    mov x0, x2\n"              /* flags */
        "    mov x2, x4\n"              /* parent_tid */
        "    mov x3, x5\n"              /* tls */
        "    mov x4, x6\n"              /* child_tid */
        "    mov x8, #220\n"            /* SYS_clone */
        "    svc #0\n"
        "    cbz x0, 1f\n"
        "    ret\n"
        "1:  mov x29, #0\n"
        "    ldp x1, x0, [sp], #16\n"
        "    blr x1\n"
        "    mov x8, #94\n"             /* SYS_exit_group */
        "    svc #0\n"
        "    brk #0\n"
        ".size tether_rt_clone, .-tether_rt_clone\n");

#endif /* TETHER_NOLIBC_ARCH_H */
