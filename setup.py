"""The native kernels (wordlm/native/*.c) and the packaged default model; everything else is in
pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

SHIPPED = "wikitext2-lstm-15mb"  # wordlm.models.SHIPPED_NAME


class build_py_with_model(build_py):
    """Copies models/SHIPPED (kept beside the other models in the repository, its files too large for the
    package's source tree) into the build as wordlm/shipped/SHIPPED: a wheel carries its default model."""

    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "models" / SHIPPED
        if not self.editable_mode and source.is_dir():
            target = Path(self.build_lib) / "wordlm" / "shipped" / SHIPPED
            shutil.copytree(source, target, dirs_exist_ok=True)


setup(
    cmdclass={"build_py": build_py_with_model},
    ext_modules=[
        Extension(
            "wordlm.native._kernels",
            # entry.c: the ISA dispatch and entry points (wordlm.h); kernels.c: contract, portable C, the
            # drivers; threads.c: the thread pool; kernels_x86.c: AVX2, AVX-512 VNNI; kernels_arm.c: ARM64
            # NEON, dot product, I8MM (each compiled per function with target attributes, and empty off its
            # architecture); sample.c: the sampler; embed.c: the embedding's rows; context.c, checkpoint.c,
            # json.c: libwordlm's context (the same library is libwordlm.so: `make lib`)
            sources=[
                "wordlm/native/entry.c",
                "wordlm/native/kernels.c",
                "wordlm/native/threads.c",
                "wordlm/native/kernels_x86.c",
                "wordlm/native/kernels_arm.c",
                "wordlm/native/sample.c",
                "wordlm/native/embed.c",
                "wordlm/native/context.c",
                "wordlm/native/checkpoint.c",
                "wordlm/native/json.c",
            ],
            depends=[
                "wordlm/native/wordlm.h",
                "wordlm/native/checkpoint.h",
                "wordlm/native/json.h",
                "wordlm/native/kernels.h",
                "wordlm/native/sample.h",
                "wordlm/native/threads.h",
                "wordlm/native/x86_simd.h",
            ],
            # no fused multiply-add contraction: the kernels and the numpy reference agree bit for bit
            # (GCC contracts by default on ARM64, where a*b+c would become one FMADD)
            extra_compile_args=["-O3", "-ffp-contract=off", "-pthread"],
            extra_link_args=["-pthread"],
        )
    ],
)
