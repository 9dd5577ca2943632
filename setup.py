"""The native kernels (wordlm/native/kernels*.c); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wordlm.native._kernels",
            # kernels.c: contract, portable C, entry points; threads.c: the thread pool; kernels_x86.c:
            # AVX2, AVX-512 VNNI; kernels_arm.c: ARM64 NEON, dot product, I8MM (each compiled per function
            # with target attributes, and empty off its architecture); sample.c: the sampler
            sources=[
                "wordlm/native/kernels.c",
                "wordlm/native/threads.c",
                "wordlm/native/kernels_x86.c",
                "wordlm/native/kernels_arm.c",
                "wordlm/native/sample.c",
            ],
            depends=[
                "wordlm/native/api.h",
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
