"""Counting the allocator's calls (issue 19): how many blocks the interpreter and
compiled code ask of CPython's allocators, including those freed again at once.

``sys.getallocatedblocks()`` and ``tracemalloc`` see only what is still alive; a
per-message object that is made and dropped (a tuple, a bound method, a bytes copy)
leaves no trace there. This wraps the ``PYMEM_DOMAIN_OBJ`` (objects: ``PyObject_Malloc``)
and ``PYMEM_DOMAIN_MEM`` (``PyMem_Malloc``: list item arrays, buffers) allocators with
counting pass-throughs (a small C file compiled with the system's ``cc`` at first use)
and reads the counts. Free lists (small ints, floats, tuples of some sizes, frames)
are not counted: those objects never reach the allocator.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SOURCE = r"""
#include <Python.h>
static PyMemAllocatorEx orig_obj, orig_mem;
static unsigned long long n_obj, n_mem;
#define O orig_obj
#define M orig_mem
static void *o_malloc(void *c, size_t s) { n_obj++; return O.malloc(O.ctx, s); }
static void *o_calloc(void *c, size_t n, size_t s) { n_obj++; return O.calloc(O.ctx, n, s); }
static void *o_realloc(void *c, void *p, size_t s) {
    if (!p) n_obj++;
    return O.realloc(O.ctx, p, s);
}
static void o_free(void *c, void *p) { orig_obj.free(orig_obj.ctx, p); }
static void *m_malloc(void *c, size_t s) { n_mem++; return M.malloc(M.ctx, s); }
static void *m_calloc(void *c, size_t n, size_t s) { n_mem++; return M.calloc(M.ctx, n, s); }
static void *m_realloc(void *c, void *p, size_t s) {
    if (!p) n_mem++;
    return M.realloc(M.ctx, p, s);
}
static void m_free(void *c, void *p) { orig_mem.free(orig_mem.ctx, p); }
void ac_install(void) {
    PyMemAllocatorEx o = {NULL, o_malloc, o_calloc, o_realloc, o_free};
    PyMemAllocatorEx m = {NULL, m_malloc, m_calloc, m_realloc, m_free};
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &orig_obj);
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &orig_mem);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &o);
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &m);
}
unsigned long long ac_obj(void) { return n_obj; }
unsigned long long ac_mem(void) { return n_mem; }
"""


class Counter:
    """The counting allocators, installed for the rest of the process."""

    def __init__(self) -> None:
        tag = hashlib.sha1(SOURCE.encode()).hexdigest()[:12]
        lib = Path(tempfile.gettempdir()) / f"iotbroker-alloccount-{tag}.so"
        if not lib.exists():
            src = lib.with_suffix(".c")
            src.write_text(SOURCE)
            subprocess.run(["cc", "-O2", "-shared", "-fPIC",
                            f"-I{sysconfig.get_paths()['include']}",
                            "-o", str(lib), str(src)], check=True)
        self.lib = ctypes.PyDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        self.lib.ac_obj.restype = ctypes.c_ulonglong
        self.lib.ac_mem.restype = ctypes.c_ulonglong
        self.lib.ac_install()

    def counts(self) -> tuple[int, int]:
        """(object-domain, mem-domain) allocations so far."""
        return int(self.lib.ac_obj()), int(self.lib.ac_mem())


if __name__ == "__main__":  # a self-check: one list of 10 new tuples
    c = Counter()
    a = c.counts()
    x = [(i, str(i)) for i in range(1000, 1010)]
    b = c.counts()
    print(b[0] - a[0], b[1] - a[1], len(x), sys.version)
