/* Parsing of 512-byte tar headers: ustar, GNU and v7 layouts, octal and
 * base-256 numeric fields, header checksums. No I/O here. */
#ifndef CRIO_FAST_TAR_FORMAT_H
#define CRIO_FAST_TAR_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TAR_BLOCK_SIZE 512

/* Type flags handled by the extractor. */
#define TAR_TYPE_REGULAR '0'
#define TAR_TYPE_REGULAR_OLD '\0'
#define TAR_TYPE_HARDLINK '1'
#define TAR_TYPE_SYMLINK '2'
#define TAR_TYPE_CHAR_DEVICE '3'
#define TAR_TYPE_BLOCK_DEVICE '4'
#define TAR_TYPE_DIRECTORY '5'
#define TAR_TYPE_FIFO '6'
#define TAR_TYPE_CONTIGUOUS '7'
#define TAR_TYPE_PAX_LOCAL 'x'
#define TAR_TYPE_PAX_GLOBAL 'g'
#define TAR_TYPE_GNU_LONGNAME 'L'
#define TAR_TYPE_GNU_LONGLINK 'K'
#define TAR_TYPE_GNU_VOLUME_LABEL 'V'

struct tar_header {
    char type;
    /* "prefix/name" for POSIX ustar, else the name field; NUL-terminated. */
    char name[100 + 1 + 155 + 1];
    size_t name_len;
    char linkname[100 + 1];
    size_t linkname_len;
    uint32_t mode; /* permission and setuid/setgid/sticky bits only */
    int64_t uid;
    int64_t gid;
    int64_t size;
    int64_t mtime;
    int64_t dev_major;
    int64_t dev_minor;
};

/* True when all 512 bytes are zero (one half of the end-of-archive marker). */
bool tar_block_is_zero(const unsigned char *block);

/* Verifies the header checksum, accepting both the unsigned sum (POSIX) and
 * the signed sum some historic tars wrote. */
bool tar_checksum_matches(const unsigned char *block);

/* Decodes a header. On a malformed numeric field returns -1 and points
 * *bad_field at the field's name. */
int tar_parse_header(const unsigned char *block, struct tar_header *out, const char **bad_field);

#endif
