/*
 * exec_path.c — the PATH search in C where it finds the program (core.find_program), and
 * argv's common case encoded in one call (core.fs_args).
 *
 * spec.resolve_executable looks a bare program name up in PATH, as execvp would, before any
 * clone: the first candidate that exists is checked (a directory, not executable: EACCES)
 * and run. Most candidates do not exist (true is in the ninth of seventeen directories
 * here), and in Python each miss cost a stat() whose FileNotFoundError, made and caught,
 * took 1.5 us, most of a spawn's 35 us search. Here the misses are skipped with one stat()
 * each, the GIL released, and the first file found is tested as the Python loop would test
 * it (not a directory, access(X_OK)); only if that test fails, or stat() said something
 * else (EACCES, ELOOP...), does the Python loop decide, from that candidate on, exactly as
 * before. The hit costs no Python-level stat() and access() (cold, a few microseconds each
 * on every spawn's critical path).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/stat.h>

#include "core_convert.h"

/* core.find_program(paths: tuple[bytes, ...]) -> (int, bool): the index of the first path
 * whose stat() does not fail with ENOENT or ENOTDIR (len(paths) if every one does), and
 * whether that path is runnable as it stands (stat() succeeds, not a directory, access(X_OK)
 * succeeds: the Python loop's own test, so it returns that candidate at once). A path with
 * a NUL byte is not skipped (os.stat raises ValueError for it, in the Python loop). */
static PyObject *core_find_program(PyObject *self, PyObject *arg)
{
    Py_ssize_t count, at;
    struct stat st;
    const char **paths;
    int runnable = 0;
    (void)self;
    if (!PyTuple_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "find_program() takes a tuple of bytes");
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
            PyErr_SetString(PyExc_TypeError, "find_program() takes a tuple of bytes");
            return NULL;
        }
        /* (the tuple, the caller's, keeps every bytes alive while the GIL is released) */
        paths[at] = strlen(PyBytes_AS_STRING(item)) == (size_t)PyBytes_GET_SIZE(item)
                        ? PyBytes_AS_STRING(item) : NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (at = 0; at < count; at++) {
        if (paths[at] == NULL)
            break;
        if (stat(paths[at], &st) == 0) {
            runnable = !S_ISDIR(st.st_mode) && access(paths[at], X_OK) == 0;
            break;
        }
        if (errno != ENOENT && errno != ENOTDIR)
            break;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(paths);
    return Py_BuildValue("(nO)", at, runnable ? Py_True : Py_False);
}

/* core.fs_args(args: list | tuple) -> list[bytes] | None: each item as os.fsencode gives it
 * (str encoded with the filesystem codec and its error handler; bytes as they are), or None
 * if any item is neither str nor bytes, or holds a NUL byte: spec.convert_argv's common case
 * in one call, its checks and their messages left to the Python code. */
static PyObject *core_fs_args(PyObject *self, PyObject *arg)
{
    Py_ssize_t count, at;
    PyObject *items, *out;
    (void)self;
    if (PyList_Check(arg))
        items = PyList_AsTuple(arg); /* (a snapshot: a codec could run code that edits it) */
    else if (PyTuple_Check(arg))
        items = Py_NewRef(arg);
    else
        Py_RETURN_NONE;
    if (items == NULL)
        return NULL;
    count = PyTuple_GET_SIZE(items);
    out = PyList_New(count);
    for (at = 0; out != NULL && at < count; at++) {
        PyObject *item = PyTuple_GET_ITEM(items, at), *raw;
        if (PyBytes_CheckExact(item))
            raw = Py_NewRef(item);
        else if (PyUnicode_Check(item))
            raw = PyUnicode_EncodeFSDefault(item);
        else
            break;
        if (raw == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, at, raw);
        if (raw != NULL && strlen(PyBytes_AS_STRING(raw)) != (size_t)PyBytes_GET_SIZE(raw))
            break;
    }
    Py_DECREF(items);
    if (out != NULL && at < count) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

static PyMethodDef exec_path_methods[] = {
    {"find_program", core_find_program, METH_O,
     "The first path stat() does not report missing, and whether it is runnable."},
    {"fs_args", core_fs_args, METH_O,
     "A list or tuple of str/bytes without NUL as os.fsencode's bytes, else None."},
    {NULL, NULL, 0, NULL},
};

int tether_add_exec_path(PyObject *module)
{
    return PyModule_AddFunctions(module, exec_path_methods);
}
