/* The kernels' entry points as the Python package (ctypes) and tests/arm's C harness call them: they
 * are libwordlm's public ones, declared once in wordlm.h, so that a changed signature breaks the build
 * of every caller instead of one calling an old one. */
#ifndef WORDLM_NATIVE_API_H
#define WORDLM_NATIVE_API_H

#include "wordlm.h"

#endif
