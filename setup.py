"""The native kernels (wordlm/native/kernels*.c); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wordlm.native._kernels",
            # entry.c: the ISA dispatch and entry points (wordlm.h); kernels.c: contract, portable C, the
            # drivers; threads.c: the thread pool; kernels_x86.c: AVX2, AVX-512 VNNI; kernels_arm.c: ARM64
            # NEON, dot product, I8MM (each compiled per function with target attributes, and empty off its
            # architecture); sample.c: the sampler; context.c, checkpoint.c, json.c: libwordlm's context
            # (the same library is libwordlm.so: `make lib`)
            sources=[
                "wordlm/native/entry.c",
                "wordlm/native/kernels.c",
                "wordlm/native/threads.c",
                "wordlm/native/kernels_x86.c",
                "wordlm/native/kernels_arm.c",
                "wordlm/native/sample.c",
                "wordlm/native/context.c",
                "wordlm/native/checkpoint.c",
                "wordlm/native/json.c",
            ],
            depends=[
                "wordlm/native/wordlm.h",
                "wordlm/native/checkpoint.h",
                "wordlm/native/json.h",
                "wordlm/native/kernels.h",
                "wordlm/native/threads.h",
                "wordlm/native/x86_simd.h",
            ],
            # no fused multiply-add contraction: the kernels and the numpy reference agree bit for bit
            # (GCC contracts by default on ARM64, where a*b+c would become one FMADD)
            extra_compile_args=["-O3", "-ffp-contract=off", "-pthread"],
            extra_link_args=["-pthread"],
        )
    ]
)
