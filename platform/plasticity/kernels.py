"""A compiled one-pass kernel for the rule-based update of the recurrent weights (CPU, float32).

The update of one network is ``W[j, i] = (W[j, i] + (eta r)[h_i, h_j]) * graph[j, i]`` (additive)
or ``W[j, i] * (1 + eta r[h_i, h_j])`` (multiplicative), with ``h`` the neurons' T-bit firing
histories. The torch form (``plasticity.learning.RuleLearner._update``) is a rank-2^T ``baddbmm_``
followed by ``mul_`` by the graph: two passes over the V x V weights (read and write each) plus
the graph's read. This kernel does it in one: each post-synaptic row j loads its table row
((eta r)^T[h_j], 2^T <= 8 entries) into one AVX2 register, and every 8 weights of the row take
their entries by one in-register permutation (``vpermps``) indexed by the pre-synaptic histories,
add (or multiply) and mask by the graph (stored once as uint8). The arithmetic is the torch
form's, term for term, so the weights are bit-identical (signed zeros aside).

Why by hand: no library op fuses a gather from a tiny table with an add and a mask (measured
against torch's ops and ``torch.compile`` in bench/README.md); the kernel is ~30 lines of C.
It is compiled at first use with the system C compiler (``$CC`` or ``cc``, ``-O3 -mavx2``)
into a per-user cache (``$PLASTICITY_KERNEL_CACHE``, default ``~/.cache/plasticity/kernels``)
under a name hashed from the source, the compiler and the machine type, written to a temporary
file and renamed into place (concurrent processes race harmlessly). Where there is no compiler,
no AVX2, another dtype or device, or ``PLASTICITY_KERNELS=off``, the torch form runs instead:
the kernel changes speed, never results.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

LANES = 8  # float32 lanes of an AVX2 register: the largest table row (2^T states) it holds

SOURCE = r"""
#include <stdint.h>
#include <immintrin.h>

int plasticity_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

/* n networks' V x V weights W (contiguous), their uint8 graphs G, the histories h [n, V] (uint8),
   the padded tables Tt: row s holds (eta r)^T[s, 0..7] (additive) or 1 + eta r^T (multiplicative),
   network b's table at Tt + b * t_stride; live [n] (NULL: all) selects the networks updated. */
void plasticity_rule_update_f32(float* restrict W, const uint8_t* restrict G,
                                const float* restrict Tt, int64_t t_stride,
                                const uint8_t* restrict hist, const uint8_t* restrict live,
                                int64_t n, int64_t V, int mult) {
    for (int64_t b = 0; b < n; b++) {
        if (live && !live[b]) continue;
        const uint8_t* h = hist + b * V;
        const float* tb = Tt + b * t_stride;
        for (int64_t j = 0; j < V; j++) {
            const float* row = tb + (int64_t)h[j] * 8;
            __m256 p = _mm256_loadu_ps(row);
            float* w = W + (b * V + j) * V;
            const uint8_t* g = G + (b * V + j) * V;
            int64_t i = 0;
            if (mult) {
                for (; i + 8 <= V; i += 8) {
                    __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(h + i)));
                    __m256 d = _mm256_permutevar8x32_ps(p, idx);
                    _mm256_storeu_ps(w + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), d));
                }
                for (; i < V; i++) w[i] = w[i] * row[h[i]];
            } else {
                for (; i + 8 <= V; i += 8) {
                    __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(h + i)));
                    __m256 d = _mm256_permutevar8x32_ps(p, idx);
                    __m256 m = _mm256_cvtepi32_ps(
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(g + i))));
                    _mm256_storeu_ps(w + i, _mm256_mul_ps(_mm256_add_ps(_mm256_loadu_ps(w + i), d), m));
                }
                for (; i < V; i++) w[i] = (w[i] + row[h[i]]) * (float)g[i];
            }
        }
    }
}
"""

_lib: ctypes.CDLL | None | bool = None  # None: not tried yet; False: unavailable


def cache_dir() -> Path:
    return Path(os.environ.get("PLASTICITY_KERNEL_CACHE",
                               Path.home() / ".cache" / "plasticity" / "kernels"))


def _compile() -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = ["-O3", "-mavx2", "-fPIC", "-shared"]
    key = hashlib.sha256("\0".join([SOURCE, cc, *flags, platform.machine()]).encode()).hexdigest()
    out = cache_dir() / f"rule_update-{key[:16]}.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src, so = Path(tmp) / "k.c", Path(tmp) / "k.so"
            src.write_text(SOURCE)
            subprocess.run([cc, *flags, "-o", str(so), str(src)], check=True,
                           capture_output=True, timeout=120)
            os.replace(so, out)  # atomic: a concurrent process sees the old file or the new one
    lib = ctypes.CDLL(str(out))
    if not lib.plasticity_avx2():
        return None
    f = lib.plasticity_rule_update_f32
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    f.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, or None where it cannot run (compiled once per process)."""
    global _lib
    if os.environ.get("PLASTICITY_KERNELS", "on").lower() in ("off", "0", "false", "no"):
        return None
    if _lib is None:
        try:
            _lib = _compile() or False
        except (OSError, subprocess.SubprocessError) as e:
            log.info("compiled rule-update kernel unavailable (%s): using the torch form", e)
            _lib = False
    return _lib or None


def usable(W: torch.Tensor, states: int) -> bool:
    """Whether :func:`rule_update` can update these weights (CPU float32, 2^T <= 8 states)."""
    return (W.device.type == "cpu" and W.dtype == torch.float32 and states <= LANES
            and library() is not None)


def pad_tables(tt: torch.Tensor) -> torch.Tensor:
    """Tables [..., S, S] -> [..., S, 8] float32 contiguous (the rows the kernel loads whole)."""
    out = tt.new_zeros(*tt.shape[:-1], LANES)
    out[..., :tt.shape[-1]] = tt
    return out.contiguous()


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def rule_update(W: torch.Tensor, graph8: torch.Tensor, tables: torch.Tensor,
                hist8: torch.Tensor, live8: torch.Tensor | None, multiplicative: bool) -> None:
    """Update, in place, n networks' weights W [n, V, V] (contiguous, float32) from their uint8
    graphs [n, V, V], padded tables ([S, 8] shared or [n, S, 8]) and histories [n, V] (uint8);
    ``live8`` [n] uint8 (None = all) selects the networks that update."""
    n, V = hist8.shape
    for t in (W, graph8, tables, hist8) + (() if live8 is None else (live8,)):
        if not t.is_contiguous():
            raise ValueError("rule_update needs contiguous tensors")
    assert W.shape == (n, V, V) and graph8.shape == W.shape and tables.dtype == torch.float32
    lib = library()
    if lib is None:
        raise RuntimeError("the compiled rule update is unavailable here: check usable() first")
    stride = 0 if tables.dim() == 2 else tables.shape[-2] * LANES
    lib.plasticity_rule_update_f32(_ptr(W), _ptr(graph8), _ptr(tables), stride, _ptr(hist8),
                                   _ptr(live8), n, V, int(multiplicative))
