#include "tar_format.h"

#include <string.h>

/* Field offsets and widths of the ustar header block. */
enum {
    OFF_NAME = 0, LEN_NAME = 100,
    OFF_MODE = 100, LEN_MODE = 8,
    OFF_UID = 108, LEN_UID = 8,
    OFF_GID = 116, LEN_GID = 8,
    OFF_SIZE = 124, LEN_SIZE = 12,
    OFF_MTIME = 136, LEN_MTIME = 12,
    OFF_CHKSUM = 148, LEN_CHKSUM = 8,
    OFF_TYPEFLAG = 156,
    OFF_LINKNAME = 157, LEN_LINKNAME = 100,
    OFF_MAGIC = 257,
    OFF_DEVMAJOR = 329, LEN_DEVMAJOR = 8,
    OFF_DEVMINOR = 337, LEN_DEVMINOR = 8,
    OFF_PREFIX = 345, LEN_PREFIX = 155,
};

static const unsigned char ZERO_BLOCK[TAR_BLOCK_SIZE];

bool tar_block_is_zero(const unsigned char *block)
{
    return memcmp(block, ZERO_BLOCK, TAR_BLOCK_SIZE) == 0;
}

/* Octal digits, optionally surrounded by spaces and terminated by NUL or
 * space. An all-blank field reads as 0 (several tars leave device numbers
 * empty). Returns -1 on any other character or on overflow. */
static int parse_octal(const unsigned char *field, size_t width, uint64_t *out)
{
    size_t i = 0;
    uint64_t value = 0;
    while (i < width && field[i] == ' ')
        i++;
    for (; i < width && field[i] >= '0' && field[i] <= '7'; i++) {
        if (value > (UINT64_MAX >> 3))
            return -1;
        value = (value << 3) | (uint64_t)(field[i] - '0');
    }
    for (; i < width; i++) {
        if (field[i] != ' ' && field[i] != '\0')
            return -1;
    }
    *out = value;
    return 0;
}

/* GNU base-256: the high bit of the first byte marks it; bit 6 of the first
 * byte is the sign of a two's complement big-endian number. */
static int parse_base256(const unsigned char *field, size_t width, int64_t *out)
{
    bool negative = (field[0] & 0x40) != 0;
    unsigned char flip = negative ? 0xff : 0x00;
    uint64_t magnitude = 0; /* of the bit-inverted value when negative */
    for (size_t i = 0; i < width; i++) {
        unsigned char byte = field[i] ^ flip;
        if (i == 0)
            byte &= 0x7f;
        if (magnitude >> 55)
            return -1;
        magnitude = (magnitude << 8) | byte;
    }
    if (magnitude >> 63)
        return -1;
    /* For negative numbers the inverted bits hold -value-1. */
    *out = negative ? -(int64_t)magnitude - 1 : (int64_t)magnitude;
    return 0;
}

static int parse_number(const unsigned char *field, size_t width, int64_t *out)
{
    if (field[0] & 0x80)
        return parse_base256(field, width, out);
    uint64_t value;
    if (parse_octal(field, width, &value) < 0 || value > (uint64_t)INT64_MAX)
        return -1;
    *out = (int64_t)value;
    return 0;
}

bool tar_checksum_matches(const unsigned char *block)
{
    uint64_t stored;
    if (parse_octal(block + OFF_CHKSUM, LEN_CHKSUM, &stored) < 0)
        return false;
    uint64_t unsigned_sum = 0;
    int64_t signed_sum = 0;
    for (size_t i = 0; i < TAR_BLOCK_SIZE; i++) {
        unsigned char byte = (i >= OFF_CHKSUM && i < OFF_CHKSUM + LEN_CHKSUM) ? ' ' : block[i];
        unsigned_sum += byte;
        signed_sum += (signed char)byte;
    }
    return stored == unsigned_sum || (int64_t)stored == signed_sum;
}

static size_t field_length(const unsigned char *field, size_t width)
{
    const unsigned char *nul = memchr(field, '\0', width);
    return nul ? (size_t)(nul - field) : width;
}

int tar_parse_header(const unsigned char *block, struct tar_header *out, const char **bad_field)
{
    /* Only POSIX ustar ("ustar\0" + "00") has the prefix field: GNU tar keeps
     * atime/ctime and sparse maps in those bytes. */
    bool posix_ustar = memcmp(block + OFF_MAGIC, "ustar\0", 6) == 0;

    out->type = (char)block[OFF_TYPEFLAG];

    size_t name_len = field_length(block + OFF_NAME, LEN_NAME);
    size_t prefix_len = posix_ustar ? field_length(block + OFF_PREFIX, LEN_PREFIX) : 0;
    size_t pos = 0;
    if (prefix_len > 0) {
        memcpy(out->name, block + OFF_PREFIX, prefix_len);
        pos = prefix_len;
        out->name[pos++] = '/';
    }
    memcpy(out->name + pos, block + OFF_NAME, name_len);
    pos += name_len;
    out->name[pos] = '\0';
    out->name_len = pos;

    out->linkname_len = field_length(block + OFF_LINKNAME, LEN_LINKNAME);
    memcpy(out->linkname, block + OFF_LINKNAME, out->linkname_len);
    out->linkname[out->linkname_len] = '\0';

    int64_t mode;
    if (parse_number(block + OFF_MODE, LEN_MODE, &mode) < 0 || mode < 0) {
        *bad_field = "mode";
        return -1;
    }
    out->mode = (uint32_t)(mode & 07777);
    if (parse_number(block + OFF_UID, LEN_UID, &out->uid) < 0 || out->uid < 0) {
        *bad_field = "uid";
        return -1;
    }
    if (parse_number(block + OFF_GID, LEN_GID, &out->gid) < 0 || out->gid < 0) {
        *bad_field = "gid";
        return -1;
    }
    if (parse_number(block + OFF_SIZE, LEN_SIZE, &out->size) < 0 || out->size < 0) {
        *bad_field = "size";
        return -1;
    }
    if (parse_number(block + OFF_MTIME, LEN_MTIME, &out->mtime) < 0) {
        *bad_field = "mtime";
        return -1;
    }
    out->dev_major = 0;
    out->dev_minor = 0;
    if (out->type != '3' && out->type != '4')
        return 0; /* old tars leave junk in the device fields of other entries */
    if (parse_number(block + OFF_DEVMAJOR, LEN_DEVMAJOR, &out->dev_major) < 0 || out->dev_major < 0) {
        *bad_field = "devmajor";
        return -1;
    }
    if (parse_number(block + OFF_DEVMINOR, LEN_DEVMINOR, &out->dev_minor) < 0 || out->dev_minor < 0) {
        *bad_field = "devminor";
        return -1;
    }
    return 0;
}
