# cython: language_level=3
"""Streaming tar layer extraction (native), for :mod:`crio_fast.image.unpack`.

``LayerExtractor`` takes the uncompressed tar stream in chunks of any size
(splits inside headers included) and writes each entry below ``root`` as soon
as its bytes arrive. ``feed`` runs without the GIL, so layers extracted in
different threads proceed in parallel. Nothing is created, changed or
followed outside ``root``: see ``extract/safe_path.h``.

Extended attributes the filesystem refuses as unsupported (ENOTSUP), and
``user.*`` attributes on symlinks (which Linux never allows), are skipped and
counted in ``stats["xattrs_skipped"]``; every other xattr failure is an error.
"""

import os

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint64_t
from libc.string cimport memset


cdef extern from "extract/extract_error.h" nogil:
    struct extract_error:
        int errnum
        char *entry
        char *message

    void extract_error_clear(extract_error *err)


cdef extern from "extract/extractor.h" nogil:
    struct tar_extractor:
        pass

    struct tar_extractor_options:
        bint preserve_owner
        bint overlay_whiteouts
        bint allow_devices
        unsigned writer_threads

    struct tar_extract_stats:
        uint64_t entries
        uint64_t files
        uint64_t dirs
        uint64_t symlinks
        uint64_t hardlinks
        uint64_t devices
        uint64_t fifos
        uint64_t whiteouts
        uint64_t skipped
        uint64_t xattrs_skipped
        uint64_t bytes

    tar_extractor *tar_extractor_new(const char *root, const tar_extractor_options *options, extract_error *err)
    int tar_extractor_feed(tar_extractor *ex, const unsigned char *data, size_t length)
    int tar_extractor_finish(tar_extractor *ex, tar_extract_stats *stats)
    const extract_error *tar_extractor_error(const tar_extractor *ex)
    void tar_extractor_free(tar_extractor *ex)


class ExtractError(Exception):
    """Extraction failed: a malformed or truncated archive, or a failed syscall.

    ``errno`` is the failing call's errno (None for archive format errors) and
    ``entry`` the archive name of the entry involved (None when no entry was).
    """

    def __init__(self, message: str, errno: int | None = None, entry: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.entry = entry


cdef object _error_from(const extract_error *err):
    if err.message == NULL:
        return ExtractError("extraction failed without a recorded reason")
    message = (<bytes>err.message).decode("utf-8", "backslashreplace")
    entry = os.fsdecode(<bytes>err.entry) if err.entry != NULL else None
    return ExtractError(message, err.errnum if err.errnum != 0 else None, entry)


cdef class LayerExtractor:
    """Extracts one tar stream into ``root`` (an existing, normally empty, directory).

    ``preserve_owner``: chown entries to the archive's uid/gid.
    ``overlay_whiteouts``: turn ``.wh.NAME`` into a 0:0 character device and
    ``.wh..wh..opq`` into ``trusted.overlay.opaque=y`` on its directory.
    ``allow_devices``: create character/block devices; when false they are
    skipped (counted in ``stats["skipped"]``). FIFOs and whiteout devices are
    always created.
    ``writer_threads``: helper threads that write file content while the
    stream is parsed (copying into the page cache is most of the cost and
    scales across cores); 0 writes everything on the calling thread. No
    helper touches the fed buffer after ``feed`` returns.

    One thread at a time per extractor; concurrent calls raise RuntimeError.
    """

    cdef tar_extractor *_extractor
    cdef bint _busy
    cdef object _closed_reason

    def __cinit__(
        self,
        root,
        *,
        bint preserve_owner=True,
        bint overlay_whiteouts=True,
        bint allow_devices=True,
        unsigned int writer_threads=1,
    ):
        cdef tar_extractor_options options
        cdef extract_error err
        memset(&err, 0, sizeof(err))
        options.preserve_owner = preserve_owner
        options.overlay_whiteouts = overlay_whiteouts
        options.allow_devices = allow_devices
        options.writer_threads = writer_threads
        root_bytes = os.fsencode(root)
        if b"\0" in root_bytes:
            raise ValueError("root path contains a NUL byte")
        self._busy = False
        self._closed_reason = None
        self._extractor = tar_extractor_new(root_bytes, &options, &err)
        if self._extractor == NULL:
            exc = _error_from(&err)
            extract_error_clear(&err)
            raise exc

    def __dealloc__(self):
        if self._extractor != NULL:
            tar_extractor_free(self._extractor)
            self._extractor = NULL

    cdef _enter(self):
        if self._busy:
            raise RuntimeError("LayerExtractor is in use by another thread")
        if self._extractor == NULL:
            raise ValueError(f"LayerExtractor is already {self._closed_reason}")
        self._busy = True

    def feed(self, data) -> None:
        """Consume the next bytes of the tar stream (bytes-like, any length)."""
        cdef Py_buffer view
        cdef int rc
        self._enter()
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                with nogil:
                    rc = tar_extractor_feed(self._extractor, <const unsigned char *>view.buf, <size_t>view.len)
            finally:
                PyBuffer_Release(&view)
            if rc < 0:
                raise _error_from(tar_extractor_error(self._extractor))
        finally:
            self._busy = False

    def finish(self) -> dict:
        """Check the archive ended properly, set directory modes and mtimes, release fds.

        Returns counts: entries, files, dirs, symlinks, hardlinks, devices,
        fifos, whiteouts, skipped, xattrs_skipped and bytes (regular file
        content). On error the extractor is closed; the caller removes root.
        """
        cdef tar_extract_stats stats
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = tar_extractor_finish(self._extractor, &stats)
            if rc < 0:
                raise _error_from(tar_extractor_error(self._extractor))
            return {
                "entries": stats.entries,
                "files": stats.files,
                "dirs": stats.dirs,
                "symlinks": stats.symlinks,
                "hardlinks": stats.hardlinks,
                "devices": stats.devices,
                "fifos": stats.fifos,
                "whiteouts": stats.whiteouts,
                "skipped": stats.skipped,
                "xattrs_skipped": stats.xattrs_skipped,
                "bytes": stats.bytes,
            }
        finally:
            self._release("finished")
            self._busy = False

    def abort(self) -> None:
        """Release every fd and buffer now; idempotent. The caller removes root."""
        if self._busy:
            raise RuntimeError("LayerExtractor is in use by another thread")
        if self._extractor != NULL:
            self._release("aborted")

    cdef _release(self, reason):
        if self._extractor != NULL:
            tar_extractor_free(self._extractor)
            self._extractor = NULL
            self._closed_reason = reason
