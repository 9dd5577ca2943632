/* The x86 intrinsics of kernels_x86.c, from the compiler or from SIMDe.
 *
 * Normally <immintrin.h>, each kernel compiled for its instruction set with a target attribute
 * (WL_TARGET), so the library runs on any x86-64 and picks its kernels at run time.
 *
 * With WL_SIMDE defined (tests/native_simde.py: a second library, for the tests only), the same
 * intrinsics come from SIMDe (header-only, portable C for AVX2, FMA, AVX-512F/BW/VL and VNNI) under
 * their native names, and the target attributes are empty: the AVX2 and AVX-512 VNNI kernels then run
 * on any x86-64, whatever its CPU, and are held to the reference bit for bit there. Baseline x86-64
 * (SSE2) is the only instruction set that build asks of the compiler. */
#ifndef WORDLM_X86_SIMD_H
#define WORDLM_X86_SIMD_H

#ifdef WL_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h> /* AVX-512F/BW/VL/VNNI and, below them, AVX2 and the SSE family */
#include <simde/x86/fma.h>
#ifndef _MM_FROUND_NO_EXC /* the one name used here that SIMDe does not alias */
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif
#define WL_TARGET(isa)
#define WL_DPBUSD(acc, a, w) ((acc) = _mm512_dpbusd_epi32((acc), (a), (w)))
#else
#include <immintrin.h>
#define WL_TARGET(isa) __attribute__((target(isa)))
/* acc += the products of a's unsigned and w's signed bytes, by groups of 4 (vpdpbusd), as one
 * instruction of inline assembly: GCC 12 compiles the intrinsic in a loop as a copy of the accumulator
 * into another register and a copy back around each vpdpbusd (two moves per multiply-add instruction:
 * 10 vpdpbusd and 20 moves a step of the decoder's 5-row micro-kernel). w: a register or memory. */
#define WL_DPBUSD(acc, a, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(w))
#endif

#endif
