/*
 * arch_x86_64.h — the x86_64 kernel ABI, for the libc-free guard (rt.c includes it).
 *
 * System call: the number in rax, arguments in rdi, rsi, rdx, r10, r8, r9 (r10, not rcx: the
 * `syscall` instruction itself overwrites rcx with the return address and r11 with rflags).
 * The result comes back in rax: -4095..-1 is -errno, anything else is the value.
 *
 * Process entry (_start, from execve): no return address; rsp points at the initial stack,
 *   rsp+0              argc
 *   rsp+8              argv[0] .. argv[argc-1], NULL
 *   then               envp[0] .. NULL
 *   then               the auxiliary vector (type, value pairs, AT_NULL last)
 * rsp is 16-byte aligned at entry; rdx may hold an atexit function from the dynamic linker
 * (never for a static binary, and ignored here). The ABI wants rsp 16-aligned at every call.
 *
 * Signal return: x86_64 has no kernel-supplied trampoline for a static binary without a
 * vDSO mapping it, so every handler needs SA_RESTORER and a restorer that calls rt_sigreturn.
 */
#ifndef TETHER_NOLIBC_ARCH_H
#define TETHER_NOLIBC_ARCH_H

#define TETHER_RT_NEEDS_RESTORER 1

static inline long rt_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* _start: hand the initial stack to C (tether_rt_start), on an aligned stack, with a zero
 * frame pointer so a debugger's backtrace ends here. */
__asm__(".text\n"
        ".global _start\n"
        ".type _start,@function\n"
        "_start:\n"
        "    xor %ebp, %ebp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call tether_rt_start\n"
        "    hlt\n"
        ".size _start, .-_start\n");

/* The signal restorer: rt_sigreturn (15) with the frame the kernel left on the stack. */
__asm__(".text\n"
        ".type tether_rt_restore,@function\n"
        "tether_rt_restore:\n"
        "    mov $15, %eax\n"
        "    syscall\n"
        "    hlt\n"
        ".size tether_rt_restore, .-tether_rt_restore\n");

/* long tether_rt_clone(int (*fn)(void *), void *stack, unsigned long flags, void *arg,
 *                      void *parent_tid, void *tls, void *child_tid)
 * The legacy clone(2) on a stack of the caller's: kernel order flags, stack, parent_tid,
 * child_tid, tls. The child finds fn and arg on its new stack (the parent's registers are
 * its only other state) and exits with fn's result; it never returns into the parent's
 * frames. The parent gets the pid or -errno. */
__asm__(".text\n"
        ".type tether_rt_clone,@function\n"
        "tether_rt_clone:\n"
        "    and $-16, %rsi\n"
        "    sub $16, %rsi\n"
        "    mov %rcx, 8(%rsi)\n"      /* arg */
        "    mov %rdi, (%rsi)\n"       /* fn */
        "    mov %rdx, %rdi\n"         /* flags */
        "    mov %r8, %rdx\n"          /* parent_tid */
        "    mov %r9, %r8\n"           /* tls */
        "    mov 8(%rsp), %r10\n"      /* child_tid (7th argument, on the caller's stack) */
        "    mov $56, %eax\n"          /* SYS_clone */
        "    syscall\n"
        "    test %rax, %rax\n"
        "    jnz 1f\n"
        "    xor %ebp, %ebp\n"
        "    pop %rax\n"               /* fn */
        "    pop %rdi\n"               /* arg; rsp is 16-aligned again for the call */
        "    call *%rax\n"
        "    mov %eax, %edi\n"
        "    mov $231, %eax\n"         /* SYS_exit_group */
        "    syscall\n"
        "    hlt\n"
        "1:  ret\n"
        ".size tether_rt_clone, .-tether_rt_clone\n");

#endif /* TETHER_NOLIBC_ARCH_H */
