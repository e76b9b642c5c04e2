/*
 * Completions of libgfapi's asynchronous calls, without a Python thread in between.
 *
 * glfs_pread_async() and its kin wind the call down the client's translator graph on the
 * calling thread and return; the reply arrives on one of gfapi's event threads, which calls a
 * C callback. A Python callback there (ctypes) would have to take the GIL on gfapi's thread,
 * held up behind the event loop, and every other reply with it. This callback never touches
 * Python: it appends (token, result, errno) to a queue under a mutex and writes an eventfd the
 * first time the queue turns non-empty; the event loop reads the eventfd and takes the whole
 * batch (drain()). One queue per process, never freed: a callback may run after everything
 * Python held is gone.
 *
 * The libgfapi functions are called through addresses the caller passes in (ctypes resolves
 * them, with their default symbol versions, GFAPI_6.0): nothing here links against libgfapi
 * or needs its headers, and importing this module works without GlusterFS installed.
 *
 * The queue holds at most `capacity` entries (set by setup()); the caller must never have more
 * calls in flight than that (completions are only counted out once drained), so a callback
 * never has to allocate.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/types.h>
#include <unistd.h>

/* glfs_io_cbk of GlusterFS >= 6: (glfs_fd_t *, ssize_t, struct glfs_stat *pre, *post, data) */
typedef void (*io_cbk)(void *glfd, ssize_t ret, void *prestat, void *poststat, void *data);
typedef int (*pread_async_fn)(void *glfd, void *buf, size_t count, off_t offset, int flags,
                              io_cbk fn, void *data);
typedef int (*pwrite_async_fn)(void *glfd, const void *buf, int count, off_t offset, int flags,
                               io_cbk fn, void *data);
typedef int (*fsync_async_fn)(void *glfd, io_cbk fn, void *data);

struct done {
    uint64_t token;
    int64_t ret;
    int64_t err;
};

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static struct done *q_items;  /* the callbacks' side */
static struct done *q_spare;  /* drain()'s side: swapped with q_items under the lock */
static size_t q_len;
static size_t q_cap;
static int q_efd = -1;
static int q_wake_pending;
static unsigned long long q_lost; /* completions that found the queue full (a caller's bug) */

static void
completed(void *glfd, ssize_t ret, void *prestat, void *poststat, void *data)
{
    int err = ret < 0 ? errno : 0;
    int wake;
    (void)glfd;
    (void)prestat;
    (void)poststat;
    pthread_mutex_lock(&q_lock);
    if (q_len < q_cap) {
        q_items[q_len].token = (uint64_t)(uintptr_t)data;
        q_items[q_len].ret = (int64_t)ret;
        q_items[q_len].err = err;
        q_len++;
    } else {
        q_lost++;
    }
    wake = !q_wake_pending;
    q_wake_pending = 1;
    pthread_mutex_unlock(&q_lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t n;
        do {
            n = write(q_efd, &one, sizeof one);
        } while (n < 0 && errno == EINTR);
    }
}

static PyObject *
aio_setup(PyObject *self, PyObject *args)
{
    int efd;
    Py_ssize_t capacity;
    (void)self;
    if (!PyArg_ParseTuple(args, "in", &efd, &capacity))
        return NULL;
    if (capacity <= 0) {
        PyErr_SetString(PyExc_ValueError, "capacity must be positive");
        return NULL;
    }
    pthread_mutex_lock(&q_lock);
    if (q_items != NULL) {
        pthread_mutex_unlock(&q_lock);
        PyErr_SetString(PyExc_RuntimeError, "already set up (one queue per process)");
        return NULL;
    }
    q_items = calloc((size_t)capacity, sizeof(struct done));
    q_spare = calloc((size_t)capacity, sizeof(struct done));
    if (q_items == NULL || q_spare == NULL) {
        free(q_items);
        free(q_spare);
        q_items = q_spare = NULL;
        pthread_mutex_unlock(&q_lock);
        return PyErr_NoMemory();
    }
    q_cap = (size_t)capacity;
    q_efd = efd;
    pthread_mutex_unlock(&q_lock);
    Py_RETURN_NONE;
}

static PyObject *
aio_callback_address(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromVoidPtr((void *)completed);
}

/* drain() -> list of (token, result, errno), in completion order */
static PyObject *
aio_drain(PyObject *self, PyObject *unused)
{
    struct done *items;
    size_t n, i;
    PyObject *out;
    (void)self;
    (void)unused;
    pthread_mutex_lock(&q_lock);
    items = q_items;
    n = q_len;
    q_items = q_spare;
    q_spare = items;
    q_len = 0;
    q_wake_pending = 0;
    pthread_mutex_unlock(&q_lock);
    out = PyList_New((Py_ssize_t)n);
    if (out == NULL)
        return NULL; /* (the entries are lost: out of memory in the daemon) */
    for (i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(KLL)", (unsigned long long)items[i].token,
                                    (long long)items[i].ret, (long long)items[i].err);
        if (t == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, t);
    }
    return out;
}

/* waiting() -> completions queued and not yet drained (a hint: read without the lock) */
static PyObject *
aio_waiting(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromSize_t(__atomic_load_n(&q_len, __ATOMIC_RELAXED));
}

static PyObject *
aio_lost(PyObject *self, PyObject *unused)
{
    unsigned long long n;
    (void)self;
    (void)unused;
    pthread_mutex_lock(&q_lock);
    n = q_lost;
    pthread_mutex_unlock(&q_lock);
    return PyLong_FromUnsignedLongLong(n);
}

static int
not_set_up(void)
{
    if (q_items == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup() first");
        return 1;
    }
    return 0;
}

/*
 * pread(fn, glfd, buffer, offset, token) and pwrite(fn, glfd, buffer, offset, token): start one
 * call; 0 when started (the callback will come, perhaps already has), else the errno of the
 * refusal (no callback). The buffer must stay alive and unmoved until the completion is drained:
 * the caller keeps a reference (a memoryview also pins a bytearray's size). The GIL is released
 * during the call: winding through the graph may wait on gfapi's locks, which its own threads
 * hold while they call Python (upcalls).
 */
static PyObject *
aio_pread(PyObject *self, PyObject *args)
{
    unsigned long long fn, glfd, token;
    long long offset;
    Py_buffer view;
    int rc, err = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKw*LK", &fn, &glfd, &view, &offset, &token))
        return NULL;
    if (not_set_up()) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = ((pread_async_fn)(uintptr_t)fn)((void *)(uintptr_t)glfd, view.buf, (size_t)view.len,
                                         (off_t)offset, 0, completed,
                                         (void *)(uintptr_t)token);
    if (rc < 0)
        err = errno ? errno : EIO;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromLong(rc < 0 ? err : 0);
}

static PyObject *
aio_pwrite(PyObject *self, PyObject *args)
{
    unsigned long long fn, glfd, token;
    long long offset;
    Py_buffer view;
    int rc, err = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKy*LK", &fn, &glfd, &view, &offset, &token))
        return NULL;
    if (not_set_up()) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (view.len > 0x7fffffff) { /* glfs_pwrite_async takes an int count */
        PyBuffer_Release(&view);
        return PyLong_FromLong(EINVAL);
    }
    Py_BEGIN_ALLOW_THREADS
    rc = ((pwrite_async_fn)(uintptr_t)fn)((void *)(uintptr_t)glfd, view.buf, (int)view.len,
                                          (off_t)offset, 0, completed,
                                          (void *)(uintptr_t)token);
    if (rc < 0)
        err = errno ? errno : EIO;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromLong(rc < 0 ? err : 0);
}

/* fsync(fn, glfd, token): glfs_fsync_async or glfs_fdatasync_async, as pread */
static PyObject *
aio_fsync(PyObject *self, PyObject *args)
{
    unsigned long long fn, glfd, token;
    int rc, err = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKK", &fn, &glfd, &token))
        return NULL;
    if (not_set_up())
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = ((fsync_async_fn)(uintptr_t)fn)((void *)(uintptr_t)glfd, completed,
                                         (void *)(uintptr_t)token);
    if (rc < 0)
        err = errno ? errno : EIO;
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(rc < 0 ? err : 0);
}

static PyMethodDef methods[] = {
    {"setup", aio_setup, METH_VARARGS, "setup(eventfd, capacity): the process's one queue"},
    {"callback_address", aio_callback_address, METH_NOARGS, "the C completion callback"},
    {"drain", aio_drain, METH_NOARGS, "drain() -> [(token, result, errno), ...]"},
    {"waiting", aio_waiting, METH_NOARGS, "completions not yet drained (a hint)"},
    {"lost", aio_lost, METH_NOARGS, "completions dropped because the queue was full"},
    {"pread", aio_pread, METH_VARARGS, "pread(fn, glfd, buffer, offset, token) -> 0 or errno"},
    {"pwrite", aio_pwrite, METH_VARARGS, "pwrite(fn, glfd, buffer, offset, token) -> 0 or errno"},
    {"fsync", aio_fsync, METH_VARARGS, "fsync(fn, glfd, token) -> 0 or errno"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_aio",
    "Completions of libgfapi's asynchronous calls through a C callback and an eventfd.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__aio(void)
{
    return PyModule_Create(&module);
}
