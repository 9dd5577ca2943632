"""The native kernels (wordlm/native/decoder.c); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wordlm.native._decoder",
            sources=["wordlm/native/decoder.c"],
            # no fused multiply-add contraction: the kernels and the numpy reference agree bit for bit
            extra_compile_args=["-O3", "-ffp-contract=off"],
        )
    ]
)
