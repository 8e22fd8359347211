/*
 * exec_path.c — the PATH search's misses, skipped in C (core.first_present).
 *
 * spec.resolve_executable looks a bare program name up in PATH, as execvp would, before any
 * clone: the first candidate that exists is checked (a directory, not executable: EACCES)
 * and run. Most candidates do not exist (true is in the ninth of seventeen directories
 * here), and in Python each miss cost a stat() whose FileNotFoundError, made and caught,
 * took 1.5 us, most of a spawn's 35 us search. Here the misses are skipped with one stat()
 * each, the GIL released; whatever else a stat() says (the file, EACCES, ELOOP...) is left
 * to the Python loop, which decides from the candidate on exactly as before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/stat.h>

#include "core_convert.h"

/* core.first_present(paths: tuple[bytes, ...]) -> int: the index of the first path whose
 * stat() does not fail with ENOENT or ENOTDIR (len(paths) if every one does). A path with
 * a NUL byte is not skipped (os.stat raises ValueError for it, in the Python loop). */
static PyObject *core_first_present(PyObject *self, PyObject *arg)
{
    Py_ssize_t count, at;
    struct stat st;
    const char **paths;
    (void)self;
    if (!PyTuple_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "first_present() takes a tuple of bytes");
        return NULL;
    }
    count = PyTuple_GET_SIZE(arg);
    paths = PyMem_Malloc((size_t)(count ? count : 1) * sizeof *paths);
    if (paths == NULL)
        return PyErr_NoMemory();
    for (at = 0; at < count; at++) {
        PyObject *item = PyTuple_GET_ITEM(arg, at);
        if (!PyBytes_Check(item)) {
            PyMem_Free(paths);
            PyErr_SetString(PyExc_TypeError, "first_present() takes a tuple of bytes");
            return NULL;
        }
        /* (the tuple, the caller's, keeps every bytes alive while the GIL is released) */
        paths[at] = strlen(PyBytes_AS_STRING(item)) == (size_t)PyBytes_GET_SIZE(item)
                        ? PyBytes_AS_STRING(item) : NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (at = 0; at < count; at++) {
        if (paths[at] == NULL || stat(paths[at], &st) == 0)
            break;
        if (errno != ENOENT && errno != ENOTDIR)
            break;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(paths);
    return PyLong_FromSsize_t(at);
}

static PyMethodDef exec_path_methods[] = {
    {"first_present", core_first_present, METH_O,
     "The index of the first path stat() does not report missing (exec_path.c)."},
    {NULL, NULL, 0, NULL},
};

int tether_add_exec_path(PyObject *module)
{
    return PyModule_AddFunctions(module, exec_path_methods);
}
