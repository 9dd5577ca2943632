/* The arithmetic ceiling of one core for the int8 GEMMs: multiply-adds per second of the inner
 * instructions alone, with enough independent accumulators to hide their latency and no loads.
 *   AVX2: vpmaddubsw (u8 x s8, pairs summed in int16) then vpmaddwd by 1 (pairs of pairs into int32) and
 *         vpaddd: 32 multiply-adds per ymm, the kernels' int8 path (kernels_x86.c's dot4_avx2);
 *   AVX-512 VNNI: vpdpbusd, 64 multiply-adds per zmm.
 * Also the clock, from a chain of dependent adds (one a cycle). Prints one line per measure.
 *   cc -O2 -march=native benchmarks/kernels/ceiling.c -o ceiling && ./ceiling   (benchmarks/kernels.py) */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define ITERS 20000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* a chain of dependent register adds, one a cycle (an add of an immediate may be folded at rename on
 * recent Intel cores, so the addend is a register) */
static double clock_ghz(void) {
    uint64_t x = 1, one = 1;
    double t = now();
    for (long i = 0; i < ITERS; i++)
        __asm__ volatile("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0" : "+r"(x) : "r"(one));
    return 4.0 * ITERS / (now() - t) / 1e9;
}

/* eight independent accumulators in named registers (an array would live in memory, its stores and
 * loads a chain of their own); the empty asm before each product keeps the compiler from computing the
 * same product once for all eight */
#define AVX2_STEP(acc)                                                                                 \
    do {                                                                                               \
        __asm__ volatile("" : "+x"(a));                                                                \
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), one));              \
    } while (0)
__attribute__((target("avx2"))) static double avx2_gmacs(void) {
    __m256i a = _mm256_set1_epi8(3), w = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    double t = now();
    for (long i = 0; i < ITERS / 4; i++) {
        AVX2_STEP(c0);
        AVX2_STEP(c1);
        AVX2_STEP(c2);
        AVX2_STEP(c3);
        AVX2_STEP(c4);
        AVX2_STEP(c5);
        AVX2_STEP(c6);
        AVX2_STEP(c7);
    }
    t = now() - t;
    __m256i all = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                                   _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)));
    return _mm256_extract_epi32(all, 0) == 42 ? 0 : 32.0 * 8 * (ITERS / 4) / t / 1e9;
}

#define VNNI_STEP(acc) acc = _mm512_dpbusd_epi32(acc, a, w)
__attribute__((target("avx512f,avx512vnni"))) static double vnni_gmacs(void) {
    __m512i a = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0,
            c9 = c0, c10 = c0, c11 = c0;
    double t = now();
    for (long i = 0; i < ITERS / 4; i++) {
        __asm__ volatile("" : "+v"(a));
        VNNI_STEP(c0), VNNI_STEP(c1), VNNI_STEP(c2), VNNI_STEP(c3), VNNI_STEP(c4), VNNI_STEP(c5);
        VNNI_STEP(c6), VNNI_STEP(c7), VNNI_STEP(c8), VNNI_STEP(c9), VNNI_STEP(c10), VNNI_STEP(c11);
    }
    t = now() - t;
    __m512i all = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                   _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    all = _mm512_add_epi32(all, _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
    return _mm512_reduce_add_epi32(all) == 42 ? 0 : 64.0 * 12 * (ITERS / 4) / t / 1e9;
}

int main(void) {
    __builtin_cpu_init();
    printf("clock %.2f GHz\n", clock_ghz());
    if (__builtin_cpu_supports("avx2")) printf("avx2 %.1f G multiply-adds/s\n", avx2_gmacs());
    if (__builtin_cpu_supports("avx512vnni")) printf("avx512-vnni %.1f G multiply-adds/s\n", vnni_gmacs());
    return 0;
}
