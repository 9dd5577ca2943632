"""The native kernels' names per architecture (x86, ARM64, others), on whichever machine runs this.

tests/arm/python.sh runs this file and tests/test_native.py on ARM64 too (Debian's arm64 Python under
QEMU, `make test-arm`); tests/arm/test_kernels.c tests every ARM kernel without Python.
"""

import pytest

from wordlm import native
from wordlm.errors import WordLMError


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "x86"),  # Linux, macOS on Intel
        ("AMD64", "x86"),  # Windows
        ("i686", "x86"),
        ("aarch64", "arm64"),  # Linux, Android
        ("arm64", "arm64"),  # macOS
        ("ARM64", "arm64"),  # Windows
        ("armv7l", "other"),  # 32-bit ARM: portable C
        ("riscv64", "other"),
        ("", "other"),
    ],
)
def test_architecture_of_a_machine_name(machine, arch):
    assert native.architecture(machine) == arch


def test_the_kernels_of_each_architecture():
    assert native.ISAS_BY_ARCH == {
        "x86": ("portable", "avx2", "avx512-vnni"),
        "arm64": ("portable", "neon", "dotprod", "i8mm"),
    }
    assert native.ISAS == native.ISAS_BY_ARCH.get(native.architecture(), ("portable",))


def test_the_library_holds_this_architectures_kernels():
    """kernels.c names its tables (wl_isa_name) as ISAS does, lowest first; loading checks it too."""
    lib, names = native.lib(), []
    while (name := lib.wl_isa_name(len(names))) is not None:
        names.append(name.decode())
    assert tuple(names) == native.ISAS
    assert lib.wl_isa_name(-1) is None
    assert native.available_isas() == native.ISAS[: native.ISAS.index(native.best_isa()) + 1]


def test_another_architectures_kernel_is_not_a_kernel_here():
    foreign = "neon" if native.architecture() == "x86" else "avx2"
    with pytest.raises(WordLMError, match=f"'{foreign}' is not a kernel; choose one of portable"):
        native._checked(foreign, "WORDLM_ISA")


@pytest.mark.skipif(native.architecture() != "arm64", reason="an ARM64 machine (or QEMU's)")
def test_every_arm64_cpu_runs_neon():
    """Advanced SIMD is part of every ARMv8-A CPU that Linux, Android or macOS runs on."""
    assert native.available_isas()[:2] == ("portable", "neon")
