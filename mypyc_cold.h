/* Force-included (-include) before every C file of the mypyc build (setup.py; issue 19,
 * i19-p50g): mypyc's error reporters are declared cold here (GCC merges the attribute
 * into lib-rt/CPy.h's own declarations), so GCC moves every block that calls them - the
 * error paths after each fallible operation - out of the functions' hot bodies into
 * their .cold parts. Same code, same behaviour; the path one message runs then spans
 * fewer instruction cache lines (benchmarks/cold_footprint.py). */
#ifndef IOTBROKER_MYPYC_COLD_H
#define IOTBROKER_MYPYC_COLD_H
#include <Python.h>
#define IOTBROKER_COLD __attribute__((cold))
void CPy_Raise(PyObject *exc) IOTBROKER_COLD;
void CPy_Reraise(void) IOTBROKER_COLD;
void CPyError_OutOfMemory(void) IOTBROKER_COLD;
void CPy_TypeError(const char *expected, PyObject *value) IOTBROKER_COLD;
void CPy_AddTraceback(const char *filename, const char *funcname, int line,
                      PyObject *globals) IOTBROKER_COLD;
void CPy_TypeErrorTraceback(const char *filename, const char *funcname, int line,
                            PyObject *globals, const char *expected,
                            PyObject *value) IOTBROKER_COLD;
void CPy_AttributeError(const char *filename, const char *funcname, const char *classname,
                        const char *attrname, int line, PyObject *globals) IOTBROKER_COLD;
#endif
