# cython: language_level=3
"""Batch I/O on cgroupfs control files with the GIL released.

A cgroup control file takes one value per write() and answers a read with a
few hundred bytes, so the cost of touching one is the syscalls, not the data.
Setting a container's limits (a dozen files) or gathering stats for hundreds
of containers (thousands of files) is therefore done here in one native loop
per call: Python prepares the paths and values, C opens, writes or reads and
closes each file, and Python sees one exception naming the file that failed.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EINTR, ENOENT, errno
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport strerror
from posix.fcntl cimport O_CLOEXEC, O_RDONLY, O_WRONLY, open
from posix.unistd cimport close, read, write

import os


class CgroupWriteError(OSError):
    """A control file refused a value; the message names file, value and errno text."""

    def __init__(self, error_number: int, path: str, value: bytes, reason: str) -> None:
        super().__init__(error_number, reason, path)
        self.value = value
        self.message = f"write {value.decode(errors='backslashreplace')} to {path}: {reason}"

    def __str__(self) -> str:
        return self.message


class CgroupReadError(OSError):
    """A control file could not be read (other than being absent)."""

    def __init__(self, error_number: int, path: str, reason: str) -> None:
        super().__init__(error_number, reason, path)
        self.message = f"read {path}: {reason}"

    def __str__(self) -> str:
        return self.message


# Where a failed batch stopped, filled without the GIL and turned into an
# exception with it.
cdef struct failure_t:
    Py_ssize_t index
    int error_number
    Py_ssize_t short_write  # bytes written by a short write, or -1


cdef int write_one(const char *path, const char *value, Py_ssize_t length, failure_t *failure) noexcept nogil:
    cdef int fd
    cdef Py_ssize_t written
    while True:
        fd = open(path, O_WRONLY | O_CLOEXEC)
        if fd >= 0 or errno != EINTR:
            break
    if fd < 0:
        failure.error_number = errno
        return -1
    while True:
        written = write(fd, value, <size_t>length)
        if written >= 0 or errno != EINTR:
            break
    if written < 0:
        failure.error_number = errno
        close(fd)
        return -1
    if written != length:
        # cgroupfs parses a value per write(); a split value would be two values.
        failure.error_number = 0
        failure.short_write = written
        close(fd)
        return -1
    # cgroupfs reports a rejected value from write(), not close(); a close()
    # failure is still reported. EINTR from close() on Linux means the
    # descriptor is closed already, so it is no failure.
    if close(fd) < 0 and errno != EINTR:
        failure.error_number = errno
        return -1
    return 0


def write_files(writes) -> None:
    """Write each (path, value) in order; stop at the first failure.

    ``value`` is ``str`` (encoded as UTF-8) or ``bytes``, written with a single
    write() to a file opened O_WRONLY|O_CLOEXEC. Raises CgroupWriteError naming
    the failed file, the value and the errno text; earlier writes stay applied.
    """
    cdef Py_ssize_t count = len(writes)
    cdef Py_ssize_t i
    cdef failure_t failure
    cdef const char **paths
    cdef const char **values
    cdef Py_ssize_t *lengths
    cdef int status = 0
    if count == 0:
        return
    # Python objects own the bytes; the C arrays only borrow their buffers.
    encoded_paths = []
    encoded_values = []
    for path, value in writes:
        encoded_paths.append(os.fsencode(path))
        if isinstance(value, str):
            encoded_values.append((<str>value).encode())
        elif isinstance(value, bytes):
            encoded_values.append(value)
        else:
            raise TypeError(f"value for {path} must be str or bytes, got {type(value).__name__}")
    paths = <const char **>malloc(count * sizeof(char *))
    values = <const char **>malloc(count * sizeof(char *))
    lengths = <Py_ssize_t *>malloc(count * sizeof(Py_ssize_t))
    if paths == NULL or values == NULL or lengths == NULL:
        free(paths)
        free(values)
        free(lengths)
        raise MemoryError()
    try:
        for i in range(count):
            paths[i] = PyBytes_AS_STRING(encoded_paths[i])
            values[i] = PyBytes_AS_STRING(encoded_values[i])
            lengths[i] = PyBytes_GET_SIZE(encoded_values[i])
        failure.index = -1
        failure.error_number = 0
        failure.short_write = -1
        with nogil:
            for i in range(count):
                if write_one(paths[i], values[i], lengths[i], &failure) < 0:
                    failure.index = i
                    status = -1
                    break
    finally:
        free(paths)
        free(values)
        free(lengths)
    if status == 0:
        return
    path = os.fsdecode(encoded_paths[failure.index])
    value = encoded_values[failure.index]
    if failure.short_write >= 0:
        raise CgroupWriteError(
            0, path, value, f"short write: {failure.short_write} of {len(value)} bytes accepted"
        )
    raise CgroupWriteError(failure.error_number, path, value, strerror(failure.error_number).decode())


# Contents of all files of one read_files call live in one growing arena;
# offsets[i] = -1 marks an absent file.
cdef struct arena_t:
    char *data
    size_t used
    size_t capacity


cdef int arena_reserve(arena_t *arena, size_t wanted) noexcept nogil:
    cdef size_t capacity = arena.capacity
    cdef char *grown
    if arena.used + wanted <= capacity:
        return 0
    while arena.used + wanted > capacity:
        if capacity > (<size_t>-1) // 2:
            return -1
        capacity *= 2
    grown = <char *>realloc(arena.data, capacity)
    if grown == NULL:
        return -1
    arena.data = grown
    arena.capacity = capacity
    return 0


cdef enum:
    # Small control files fit in one chunk; larger ones (memory.stat, long
    # cgroup.procs) take a few reads.
    READ_CHUNK = 4096
    # A failed arena growth, kept apart from the errno values of syscalls.
    ARENA_EXHAUSTED = -2


cdef int read_one(const char *path, arena_t *arena, Py_ssize_t *offset, Py_ssize_t *length,
                  failure_t *failure) noexcept nogil:
    cdef int fd
    cdef Py_ssize_t got
    cdef size_t start = arena.used
    while True:
        fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 or errno != EINTR:
            break
    if fd < 0:
        if errno == ENOENT:
            offset[0] = -1
            length[0] = 0
            return 0
        failure.error_number = errno
        return -1
    while True:
        if arena_reserve(arena, READ_CHUNK) < 0:
            close(fd)
            arena.used = start
            failure.error_number = ARENA_EXHAUSTED
            return -1
        got = read(fd, arena.data + arena.used, READ_CHUNK)
        if got < 0:
            if errno == EINTR:
                continue
            failure.error_number = errno
            close(fd)
            arena.used = start
            return -1
        if got == 0:
            break
        arena.used += <size_t>got
    if close(fd) < 0 and errno != EINTR:
        failure.error_number = errno
        arena.used = start
        return -1
    offset[0] = <Py_ssize_t>start
    length[0] = <Py_ssize_t>(arena.used - start)
    return 0


def read_files(paths) -> list:
    """Read each file whole; return its bytes, or None where the file does not exist.

    All files are read in one pass without the GIL. Any error other than
    ENOENT stops the batch and raises CgroupReadError naming the file.
    """
    cdef Py_ssize_t count = len(paths)
    cdef Py_ssize_t i
    cdef const char **c_paths
    cdef Py_ssize_t *offsets
    cdef Py_ssize_t *lengths
    cdef arena_t arena
    cdef failure_t failure
    cdef int status = 0
    if count == 0:
        return []
    encoded_paths = [os.fsencode(p) for p in paths]
    c_paths = <const char **>malloc(count * sizeof(char *))
    offsets = <Py_ssize_t *>malloc(count * sizeof(Py_ssize_t))
    lengths = <Py_ssize_t *>malloc(count * sizeof(Py_ssize_t))
    arena.capacity = <size_t>count * 256 + READ_CHUNK
    arena.used = 0
    arena.data = <char *>malloc(arena.capacity)
    if c_paths == NULL or offsets == NULL or lengths == NULL or arena.data == NULL:
        free(c_paths)
        free(offsets)
        free(lengths)
        free(arena.data)
        raise MemoryError()
    try:
        for i in range(count):
            c_paths[i] = PyBytes_AS_STRING(encoded_paths[i])
        failure.index = -1
        failure.error_number = 0
        failure.short_write = -1
        with nogil:
            for i in range(count):
                if read_one(c_paths[i], &arena, &offsets[i], &lengths[i], &failure) < 0:
                    failure.index = i
                    status = -1
                    break
        if status == 0:
            contents = []
            for i in range(count):
                if offsets[i] < 0:
                    contents.append(None)
                else:
                    contents.append(PyBytes_FromStringAndSize(arena.data + offsets[i], lengths[i]))
            return contents
    finally:
        free(c_paths)
        free(offsets)
        free(lengths)
        free(arena.data)
    if failure.error_number == ARENA_EXHAUSTED:
        raise MemoryError(f"read {os.fsdecode(encoded_paths[failure.index])}: out of memory")
    raise CgroupReadError(
        failure.error_number,
        os.fsdecode(encoded_paths[failure.index]),
        strerror(failure.error_number).decode(),
    )
