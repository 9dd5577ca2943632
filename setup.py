"""The native kernels (wordlm/native/kernels.c); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wordlm.native._kernels",
            sources=["wordlm/native/kernels.c"],
            # no fused multiply-add contraction: the kernels and the numpy reference agree bit for bit
            extra_compile_args=["-O3", "-ffp-contract=off"],
        )
    ]
)
