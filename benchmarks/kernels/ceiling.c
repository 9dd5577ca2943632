/* The arithmetic ceiling of one core for the int8 GEMMs: multiply-adds per second of the inner
 * instructions alone, with enough independent accumulators to hide their latency and no loads.
 *   AVX2: vpmaddubsw (u8 x s8, pairs summed in int16) then vpmaddwd by 1 (pairs of pairs into int32) and
 *         vpaddd: 32 multiply-adds per ymm, the kernels' int8 path (kernels_x86.c's dot4_avx2);
 *   AVX-512 VNNI: vpdpbusd, 64 multiply-adds per zmm.
 * Also the clock, from a chain of dependent adds (one a cycle), and the VNNI decoder's micro-kernel loop
 * alone (vnni_micro_loop_gmacs). Prints one line per measure.
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

/* The VNNI decoder's micro-kernel loop alone (kernels_x86.c's micro2_vnni at 5 rows), in inline assembly
 * over K = 256 from L1: per group of 4 inputs two panels' 64 bytes loaded, each of 5 rows' 4 codes
 * broadcast, 10 vpdpbusd. What that mix of instructions reaches with no driver, epilogue or log-sum-exp
 * around it, to set the decoder's figure against: the broadcasts share ports with vpdpbusd. */
__attribute__((target("avx512f,avx512vnni"))) static double vnni_micro_loop_gmacs(void) {
    static int8_t panels[2][64 * 64] __attribute__((aligned(64)));
    static uint8_t rows[5][256] __attribute__((aligned(64)));
    for (int i = 0; i < 64 * 64; i++) panels[0][i] = (int8_t)(i * 7), panels[1][i] = (int8_t)(i * 5);
    for (int i = 0; i < 5 * 256; i++) rows[i / 256][i % 256] = (uint8_t)(i * 3 & 127);
    double t = now();
    for (long i = 0; i < ITERS / 64; i++) /* 64 groups of 4 inputs a pass */
        __asm__ volatile("xor %%eax, %%eax\n"
                         "xor %%ecx, %%ecx\n"
                         "1:\n"
                         "vmovdqa64 (%[w0],%%rcx), %%zmm20\n"
                         "vmovdqa64 (%[w1],%%rcx), %%zmm21\n"
                         "vpbroadcastd (%[u],%%rax), %%zmm25\n"
                         "vpdpbusd %%zmm20, %%zmm25, %%zmm0\n"
                         "vpdpbusd %%zmm21, %%zmm25, %%zmm1\n"
                         "vpbroadcastd 256(%[u],%%rax), %%zmm26\n"
                         "vpdpbusd %%zmm20, %%zmm26, %%zmm2\n"
                         "vpdpbusd %%zmm21, %%zmm26, %%zmm3\n"
                         "vpbroadcastd 512(%[u],%%rax), %%zmm27\n"
                         "vpdpbusd %%zmm20, %%zmm27, %%zmm4\n"
                         "vpdpbusd %%zmm21, %%zmm27, %%zmm5\n"
                         "vpbroadcastd 768(%[u],%%rax), %%zmm28\n"
                         "vpdpbusd %%zmm20, %%zmm28, %%zmm6\n"
                         "vpdpbusd %%zmm21, %%zmm28, %%zmm7\n"
                         "vpbroadcastd 1024(%[u],%%rax), %%zmm29\n"
                         "vpdpbusd %%zmm20, %%zmm29, %%zmm8\n"
                         "vpdpbusd %%zmm21, %%zmm29, %%zmm9\n"
                         "add $4, %%eax\n"
                         "add $64, %%ecx\n"
                         "cmp $256, %%eax\n"
                         "jne 1b\n"
                         :
                         : [w0] "r"(panels[0]), [w1] "r"(panels[1]), [u] "r"(rows[0])
                         : "rax", "rcx", "memory", "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8",
                           "zmm9", "zmm20", "zmm21", "zmm25", "zmm26", "zmm27", "zmm28", "zmm29");
    return 64.0 * 10 * (double)(ITERS / 64) * 64 / (now() - t) / 1e9;
}

int main(void) {
    __builtin_cpu_init();
    printf("clock %.2f GHz\n", clock_ghz());
    if (__builtin_cpu_supports("avx2")) printf("avx2 %.1f G multiply-adds/s\n", avx2_gmacs());
    if (__builtin_cpu_supports("avx512vnni")) {
        printf("avx512-vnni %.1f G multiply-adds/s\n", vnni_gmacs());
        printf("vnni-micro-loop %.1f G multiply-adds/s\n", vnni_micro_loop_gmacs());
    }
    return 0;
}
