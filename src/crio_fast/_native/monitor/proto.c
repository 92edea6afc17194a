/*
 * TLV encoding shared by the control protocol and the launch plan.
 *
 * A field is u16 tag, u32 length, value; integers are little-endian (this
 * code only runs on the host that wrote them, but the format is fixed so it
 * can be documented and tested byte for byte). Every read is bounds-checked:
 * malformed input is an error, never a crash.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "monitor.h"

static uint16_t load_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t load_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t load_u64(const uint8_t *p)
{
    return (uint64_t)load_u32(p) | ((uint64_t)load_u32(p + 4) << 32);
}

static void store_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void store_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void store_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void tlv_reader_init(struct tlv_reader *reader, const uint8_t *data, size_t length)
{
    reader->position = data;
    reader->end = data + length;
}

int tlv_next(struct tlv_reader *reader, struct tlv_field *field, struct error *err)
{
    size_t remaining = (size_t)(reader->end - reader->position);
    if (remaining == 0)
        return 0;
    if (remaining < TLV_HEADER_SIZE)
        return error_plain(err, EINVAL, "truncated field header (%zu bytes left)", remaining);
    field->tag = load_u16(reader->position);
    field->length = load_u32(reader->position + 2);
    if (field->length > remaining - TLV_HEADER_SIZE)
        return error_plain(err, EINVAL, "field %u claims %u bytes but only %zu remain", field->tag, field->length,
                           remaining - TLV_HEADER_SIZE);
    field->value = reader->position + TLV_HEADER_SIZE;
    reader->position += TLV_HEADER_SIZE + field->length;
    return 1;
}

int tlv_string(const struct tlv_field *field, const char **out, struct error *err)
{
    if (field->length == 0 || field->value[field->length - 1] != 0)
        return error_plain(err, EINVAL, "field %u: string is not NUL-terminated", field->tag);
    if (memchr(field->value, 0, field->length) != field->value + field->length - 1)
        return error_plain(err, EINVAL, "field %u: string contains a NUL byte", field->tag);
    *out = (const char *)field->value;
    return 0;
}

int tlv_u32(const struct tlv_field *field, uint32_t *out, struct error *err)
{
    if (field->length != 4)
        return error_plain(err, EINVAL, "field %u: expected 4 bytes, got %u", field->tag, field->length);
    *out = load_u32(field->value);
    return 0;
}

int tlv_i32(const struct tlv_field *field, int32_t *out, struct error *err)
{
    uint32_t raw = 0;
    if (tlv_u32(field, &raw, err) < 0)
        return -1;
    memcpy(out, &raw, sizeof(raw));
    return 0;
}

int tlv_u64(const struct tlv_field *field, uint64_t *out, struct error *err)
{
    if (field->length != 8)
        return error_plain(err, EINVAL, "field %u: expected 8 bytes, got %u", field->tag, field->length);
    *out = load_u64(field->value);
    return 0;
}

int tlv_bool(const struct tlv_field *field, bool *out, struct error *err)
{
    uint32_t raw = 0;
    if (tlv_u32(field, &raw, err) < 0)
        return -1;
    if (raw > 1)
        return error_plain(err, EINVAL, "field %u: boolean must be 0 or 1, got %u", field->tag, raw);
    *out = raw == 1;
    return 0;
}

/* --------------------------------------------------------------- buffer */

void buffer_reserve(struct buffer *buffer, size_t extra)
{
    if (buffer->failed)
        return;
    if (buffer->length + extra <= buffer->capacity)
        return;
    size_t capacity = buffer->capacity ? buffer->capacity : 256;
    while (capacity < buffer->length + extra)
        capacity *= 2;
    uint8_t *grown = realloc(buffer->data, capacity);
    if (!grown) {
        buffer->failed = true;
        return;
    }
    buffer->data = grown;
    buffer->capacity = capacity;
}

void buffer_append(struct buffer *buffer, const void *data, size_t length)
{
    buffer_reserve(buffer, length);
    if (buffer->failed)
        return;
    memcpy(buffer->data + buffer->length, data, length);
    buffer->length += length;
}

void buffer_put(struct buffer *buffer, uint16_t tag, const void *value, size_t length)
{
    if (length > UINT32_MAX) {
        buffer->failed = true;
        return;
    }
    buffer_reserve(buffer, TLV_HEADER_SIZE + length);
    if (buffer->failed)
        return;
    uint8_t *p = buffer->data + buffer->length;
    store_u16(p, tag);
    store_u32(p + 2, (uint32_t)length);
    if (length)
        memcpy(p + TLV_HEADER_SIZE, value, length);
    buffer->length += TLV_HEADER_SIZE + length;
}

void buffer_put_string(struct buffer *buffer, uint16_t tag, const char *value)
{
    buffer_put(buffer, tag, value, strlen(value) + 1);
}

void buffer_put_u32(struct buffer *buffer, uint16_t tag, uint32_t value)
{
    uint8_t raw[4];
    store_u32(raw, value);
    buffer_put(buffer, tag, raw, sizeof(raw));
}

void buffer_put_i32(struct buffer *buffer, uint16_t tag, int32_t value)
{
    uint32_t raw = 0;
    memcpy(&raw, &value, sizeof(raw));
    buffer_put_u32(buffer, tag, raw);
}

void buffer_put_u64(struct buffer *buffer, uint16_t tag, uint64_t value)
{
    uint8_t raw[8];
    store_u64(raw, value);
    buffer_put(buffer, tag, raw, sizeof(raw));
}

size_t buffer_begin_nested(struct buffer *buffer, uint16_t tag)
{
    size_t offset = buffer->length;
    buffer_put(buffer, tag, NULL, 0);
    return offset;
}

void buffer_end_nested(struct buffer *buffer, size_t offset)
{
    if (buffer->failed)
        return;
    size_t length = buffer->length - offset - TLV_HEADER_SIZE;
    if (length > UINT32_MAX) {
        buffer->failed = true;
        return;
    }
    store_u32(buffer->data + offset + 2, (uint32_t)length);
}

void buffer_free(struct buffer *buffer)
{
    free(buffer->data);
    buffer->data = NULL;
    buffer->length = buffer->capacity = 0;
    buffer->failed = false;
}
