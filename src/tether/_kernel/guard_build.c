/*
 * guard_build.c — what kind of guard this binary is, readable from the file itself (tether
 * doctor and benchmarks/run.py look for the marker, so the answer cannot go stale beside the
 * binary). setup.py compiles it into every guard build, with TETHER_GUARD_LIBC_FREE for the
 * freestanding one (nolibc/) and TETHER_GUARD_LINK ("static" or "dynamic") for the others.
 */
#if defined(TETHER_GUARD_LIBC_FREE)
#if defined(__x86_64__)
#define TETHER_GUARD_KIND "libc-free (x86_64)"
#elif defined(__aarch64__)
#define TETHER_GUARD_KIND "libc-free (aarch64)"
#endif
#else
#include <features.h>
#if defined(__UCLIBC__)
#define TETHER_GUARD_LIBC "uClibc"
#elif defined(__GLIBC__)
#define TETHER_GUARD_LIBC "glibc"
#else
#define TETHER_GUARD_LIBC "musl" /* the one Linux libc without a macro naming itself */
#endif
#define TETHER_GUARD_KIND TETHER_GUARD_LIBC " " TETHER_GUARD_LINK
#endif

__attribute__((used)) const char tether_guard_build[] = "tether-guard-build: " TETHER_GUARD_KIND;
