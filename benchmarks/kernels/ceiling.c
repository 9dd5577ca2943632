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

static double clock_ghz(void) {
    uint64_t x = 1;
    double t = now();
    for (long i = 0; i < ITERS; i++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    return 4.0 * ITERS / (now() - t) / 1e9;
}

__attribute__((target("avx2"))) static double avx2_gmacs(void) {
    __m256i acc[8], a = _mm256_set1_epi8(3), w = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_si256();
    double t = now();
    for (long i = 0; i < ITERS / 4; i++)
        for (int j = 0; j < 8; j++) {
            __asm__ volatile("" : "+x"(a)); /* keep the products in the loop */
            acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), one));
        }
    t = now() - t;
    int sink = 0;
    for (int j = 0; j < 8; j++) sink += _mm256_extract_epi32(acc[j], 0);
    return sink == 42 ? 0 : 32.0 * 8 * (ITERS / 4) / t / 1e9;
}

__attribute__((target("avx512f,avx512vnni"))) static double vnni_gmacs(void) {
    __m512i acc[12], a = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2);
    for (int j = 0; j < 12; j++) acc[j] = _mm512_setzero_si512();
    double t = now();
    for (long i = 0; i < ITERS / 4; i++)
        for (int j = 0; j < 12; j++) {
            __asm__ volatile("" : "+v"(a));
            acc[j] = _mm512_dpbusd_epi32(acc[j], a, w);
        }
    t = now() - t;
    int sink = 0;
    for (int j = 0; j < 12; j++) sink += _mm_cvtsi128_si32(_mm512_castsi512_si128(acc[j]));
    return sink == 42 ? 0 : 64.0 * 12 * (ITERS / 4) / t / 1e9;
}

int main(void) {
    __builtin_cpu_init();
    printf("clock %.2f GHz\n", clock_ghz());
    if (__builtin_cpu_supports("avx2")) printf("avx2 %.1f G multiply-adds/s\n", avx2_gmacs());
    if (__builtin_cpu_supports("avx512vnni")) printf("avx512-vnni %.1f G multiply-adds/s\n", vnni_gmacs());
    return 0;
}
