/* Evict a range of memory from every level of the CPU's caches, for cold-cache timing samples.
 *
 * Each cache line of the range is flushed with the instruction the architecture provides for it:
 * CLFLUSHOPT (x86-64 CPUs that have it), else CLFLUSH (every x86-64), DC CIVAC (AArch64: clean and
 * invalidate by virtual address to the point of coherency). A dirty line is written back first, so
 * nothing is left for the timed step to write back. The range is walked in 64-byte steps, the
 * smallest line size of these CPUs; on a CPU with longer lines some steps flush a line twice, which
 * is harmless. A fence at the end orders the flushes before whatever runs next.
 *
 * Plain C with no dependency beyond the compiler's intrinsics, so that it builds in well under a
 * second (harness/measure/evict.py compiles it on first use and loads it with ctypes).
 */
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif !defined(__aarch64__)
#error "no cache-line flush instruction known for this architecture"
#endif

#define STEP 64

void attnbench_evict(const void *start, size_t nbytes) {
    const char *p = (const char *)((uintptr_t)start & ~(uintptr_t)(STEP - 1));
    const char *end = (const char *)start + nbytes;
    for (; p < end; p += STEP) {
#if defined(__CLFLUSHOPT__)
        _mm_clflushopt((void *)p);
#elif defined(__x86_64__) || defined(__i386__)
        _mm_clflush(p);
#else
        __asm__ volatile("dc civac, %0" : : "r"(p) : "memory");
#endif
    }
#if defined(__x86_64__) || defined(__i386__)
    _mm_sfence();
#else
    __asm__ volatile("dsb ish" : : : "memory");
#endif
}
