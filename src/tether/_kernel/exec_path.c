/*
 * exec_path.c — what an exec is given, made in C where the common case allows: the PATH
 * search where it finds the program (core.find_program), argv's common case encoded in one
 * call (core.fs_args), and the envp of a dict of bytes (tether_env_array, for the guard's
 * launch and core.spawn, which also sets the lifeline's variable: tether_spawn_envp).
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
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core_convert.h"
#include "guard_proto.h"

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
 * if any item is not exactly a str or bytes, or holds a NUL byte: spec.convert_argv's common case
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
        else if (PyUnicode_CheckExact(item)) /* (a subclass may encode() otherwise) */
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

/* env (a dict of bytes) as "KEY=VALUE" strings in one buffer, the lifeline's variable left
 * out (the clone adds it, with the pipe's identity), plus two free slots: the lifeline's
 * entry and the NULL. *buffer is the caller's to free with the array. */
char **tether_env_array(PyObject *env, char **buffer)
{
    Py_ssize_t pos = 0, n = PyDict_Size(env), i = 0;
    size_t size = 0;
    PyObject *key, *value;
    char **out, *at;
    while (PyDict_Next(env, &pos, &key, &value)) {
        if (!PyBytes_Check(key) || !PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "env must map bytes to bytes");
            return NULL;
        }
        size += (size_t)PyBytes_GET_SIZE(key) + (size_t)PyBytes_GET_SIZE(value) + 2;
    }
    out = PyMem_Calloc((size_t)n + 2, sizeof(char *));
    *buffer = out ? PyMem_Malloc(size + 1) : NULL;
    if (*buffer == NULL) {
        PyMem_Free(out);
        PyErr_NoMemory();
        return NULL;
    }
    at = *buffer;
    pos = 0;
    while (PyDict_Next(env, &pos, &key, &value)) {
        Py_ssize_t klen = PyBytes_GET_SIZE(key), vlen = PyBytes_GET_SIZE(value);
        if (klen == (Py_ssize_t)strlen(TETHER_LIFELINE_ENV)
            && memcmp(PyBytes_AS_STRING(key), TETHER_LIFELINE_ENV, (size_t)klen) == 0)
            continue;
        out[i++] = at;
        memcpy(at, PyBytes_AS_STRING(key), (size_t)klen);
        at[klen] = '=';
        memcpy(at + klen + 1, PyBytes_AS_STRING(value), (size_t)vlen);
        at[klen + 1 + vlen] = '\0';
        at += klen + vlen + 2;
    }
    out[i] = NULL;
    return out;
}

int tether_lifeline_entry(char *text, size_t size, int lifeline_src, int lifeline_dst)
{
    struct stat st;
    if (fstat(lifeline_src, &st) != 0)
        return -errno;
    snprintf(text, size, TETHER_LIFELINE_FORMAT, lifeline_dst, (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    return 0;
}

/* The lifeline's variable in the free slot tether_env_array left at the end of envp. */
static int env_lifeline(char **envp, int lifeline_src, int lifeline_dst, char *text)
{
    Py_ssize_t n = 0;
    int rc = tether_lifeline_entry(text, TETHER_LIFELINE_ENTRY_MAX, lifeline_src, lifeline_dst);
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    while (envp[n] != NULL)
        n++;
    envp[n] = text;
    envp[n + 1] = NULL;
    return 0;
}

/* core.spawn's envp: its env (a dict of bytes) made here, with TETHER_LIFELINE_FD set, if
 * there is a lifeline, to its number and identity ("N:<st_dev>:<st_ino>", which
 * lifeline.attach checks; the entry in text, TETHER_LIFELINE_ENTRY_MAX bytes). *buffer is the
 * caller's to free with the array. */
char **tether_spawn_envp(PyObject *env, int lifeline_src, int lifeline_dst, char **buffer,
                         char *text)
{
    char **out = tether_env_array(env, buffer);
    if (out != NULL && lifeline_src >= 0 && env_lifeline(out, lifeline_src, lifeline_dst,
                                                         text) < 0) {
        PyMem_Free(out);
        PyMem_Free(*buffer);
        *buffer = NULL;
        return NULL;
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
