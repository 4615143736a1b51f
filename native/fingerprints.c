/*
 * openai_batch_fingerprints: the set of request-id fingerprints prepare checks each chunk against
 * (see openai_batch.prepare._SeenIds), as a compact hash table in C.
 *
 * A key is a 64-bit integer (the id's hash() reduced modulo 2**64). Its low 16 bits pick one of
 * 65,536 tables, its next 32 bits are the fingerprint stored there (0 is stored as 1: an empty
 * slot is 0). Two keys that share those 48 bits look alike, which only makes the caller look the
 * id up in its exact table; a key added is always found again. Each table is open addressing
 * with linear probing, at most 3/4 full, its slot picked by the fingerprint's own bits, so a
 * table can grow without the key: 7-9 bytes per id with the headers (68 MB for 10M ids).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TABLES 65536

typedef struct {
    uint32_t *slots;
    uint32_t capacity; /* 0 or a power of two */
    uint32_t count;
} Table;

typedef struct {
    PyObject_HEAD
    Table *tables;
    Py_ssize_t size;
    Py_ssize_t bytes;
} Fingerprints;

static int grow(Fingerprints *self, Table *table) {
    uint32_t capacity = table->capacity ? table->capacity * 2 : 4;
    uint32_t *slots = calloc(capacity, sizeof(uint32_t));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    uint32_t mask = capacity - 1;
    for (uint32_t i = 0; i < table->capacity; i++) {
        uint32_t fp = table->slots[i];
        if (fp == 0) continue;
        uint32_t at = fp & mask;
        while (slots[at] != 0) at = (at + 1) & mask;
        slots[at] = fp;
    }
    free(table->slots);
    self->bytes += (Py_ssize_t)(capacity - table->capacity) * (Py_ssize_t)sizeof(uint32_t);
    table->slots = slots;
    table->capacity = capacity;
    return 0;
}

/* 1 when the key was there already, 0 when it was added, -1 on error. */
static int check_add_one(Fingerprints *self, uint64_t key) {
    Table *table = &self->tables[key & 0xFFFF];
    uint32_t fp = (uint32_t)(key >> 16);
    if (fp == 0) fp = 1;
    if (table->capacity) {
        uint32_t mask = table->capacity - 1;
        uint32_t at = fp & mask;
        while (table->slots[at] != 0) {
            if (table->slots[at] == fp) return 1;
            at = (at + 1) & mask;
        }
    }
    if ((uint64_t)(table->count + 1) * 4 > (uint64_t)table->capacity * 3 && grow(self, table) < 0) return -1;
    uint32_t mask = table->capacity - 1;
    uint32_t at = fp & mask;
    while (table->slots[at] != 0) at = (at + 1) & mask;
    table->slots[at] = fp;
    table->count++;
    self->size++;
    return 0;
}

static PyObject *Fingerprints_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Fingerprints() takes no arguments");
        return NULL;
    }
    Fingerprints *self = (Fingerprints *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->tables = calloc(TABLES, sizeof(Table));
    if (self->tables == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->bytes = (Py_ssize_t)(TABLES * sizeof(Table));
    return (PyObject *)self;
}

static void Fingerprints_dealloc(Fingerprints *self) {
    if (self->tables != NULL) {
        for (Py_ssize_t i = 0; i < TABLES; i++) free(self->tables[i].slots);
        free(self->tables);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(check_add_doc,
             "check_add(keys) -> list[int]\n\n"
             "Add each integer of the iterable ``keys`` (taken modulo 2**64); return the positions, in\n"
             "order, of the keys whose fingerprint was there before (added earlier, or earlier in keys).");

static PyObject *Fingerprints_check_add(Fingerprints *self, PyObject *keys) {
    PyObject *iterator = PyObject_GetIter(keys);
    if (iterator == NULL) return NULL;
    PyObject *found = PyList_New(0);
    if (found == NULL) {
        Py_DECREF(iterator);
        return NULL;
    }
    PyObject *item;
    Py_ssize_t position = 0;
    while ((item = PyIter_Next(iterator)) != NULL) {
        if (!PyLong_Check(item)) {
            PyErr_Format(PyExc_TypeError, "check_add: keys must be integers, got %.100s", Py_TYPE(item)->tp_name);
            Py_DECREF(item);
            goto error;
        }
        uint64_t key = (uint64_t)PyLong_AsUnsignedLongLongMask(item);
        Py_DECREF(item);
        if (PyErr_Occurred()) goto error;
        int seen = check_add_one(self, key);
        if (seen < 0) goto error;
        if (seen) {
            PyObject *at = PyLong_FromSsize_t(position);
            if (at == NULL) goto error;
            int appended = PyList_Append(found, at);
            Py_DECREF(at);
            if (appended < 0) goto error;
        }
        position++;
    }
    if (PyErr_Occurred()) goto error;
    Py_DECREF(iterator);
    return found;
error:
    Py_DECREF(iterator);
    Py_DECREF(found);
    return NULL;
}

static Py_ssize_t Fingerprints_len(Fingerprints *self) { return self->size; }

static PyObject *Fingerprints_get_nbytes(Fingerprints *self, void *closure) {
    return PyLong_FromSsize_t(self->bytes);
}

static PyMethodDef Fingerprints_methods[] = {
    {"check_add", (PyCFunction)Fingerprints_check_add, METH_O, check_add_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Fingerprints_getset[] = {
    {"nbytes", (getter)Fingerprints_get_nbytes, NULL, "bytes the tables hold (slots and headers)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Fingerprints_as_sequence = {
    .sq_length = (lenfunc)Fingerprints_len,
};

static PyTypeObject FingerprintsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "openai_batch_fingerprints.Fingerprints",
    .tp_doc = PyDoc_STR("Fingerprints() -> an empty set of 48-bit key fingerprints (see the module)"),
    .tp_basicsize = sizeof(Fingerprints),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Fingerprints_new,
    .tp_dealloc = (destructor)Fingerprints_dealloc,
    .tp_methods = Fingerprints_methods,
    .tp_getset = Fingerprints_getset,
    .tp_as_sequence = &Fingerprints_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "openai_batch_fingerprints",
    "The request-id fingerprints of prepare's duplicate check, in C (optional: prepare has a Python table).",
    -1, NULL,
};

PyMODINIT_FUNC PyInit_openai_batch_fingerprints(void) {
    if (PyType_Ready(&FingerprintsType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Fingerprints", (PyObject *)&FingerprintsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
