/* The extractor's state, shared by the stream engine (extractor.c), the
 * entry writers (entry_writer.c) and whiteout handling (whiteout.c). */
#ifndef CRIO_FAST_EXTRACTOR_INTERNAL_H
#define CRIO_FAST_EXTRACTOR_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "byte_buffer.h"
#include "content_writer.h"
#include "extract_error.h"
#include "extractor.h"
#include "pax.h"
#include "safe_path.h"
#include "tar_format.h"

/* One archive member with PAX and GNU overrides already merged in. */
struct tar_entry {
    char type;           /* a TAR_TYPE_* of a real member ('0' for all regular files) */
    const char *name;    /* the name as the archive spells it, for messages */
    const char *path;    /* cleaned root-relative path; "" is the root */
    size_t path_len;
    const char *link;    /* link target as the archive spells it */
    size_t link_len;
    uint64_t size;
    uint32_t mode;       /* permission bits with setuid/setgid/sticky */
    uint32_t uid;
    uint32_t gid;
    struct timespec mtime;
    uint32_t dev_major;
    uint32_t dev_minor;
    const struct xattr_list *global_xattrs;
    const struct xattr_list *local_xattrs; /* applied after the global ones */
};

/* A directory whose mode and mtime are set at finish, once nothing more will
 * be written into it. */
struct deferred_dir {
    char *path;
    uint32_t mode;
    struct timespec mtime;
};

enum stream_state {
    STATE_HEADER,    /* collecting a 512-byte header */
    STATE_FILE_DATA, /* writing regular file content */
    STATE_META_DATA, /* collecting the data of a PAX or GNU long-name header */
    STATE_SKIP,      /* discarding padding or ignored data */
    STATE_END,       /* end-of-archive marker seen; the rest is record padding */
};

struct tar_extractor {
    int root_fd;
    struct tar_extractor_options options;
    mode_t umask;

    enum stream_state state;
    uint64_t offset;         /* archive bytes consumed, for messages */
    uint64_t header_offset;  /* where the current header started */
    unsigned char header_block[TAR_BLOCK_SIZE];
    size_t header_fill;
    int zero_blocks;         /* consecutive zero blocks seen */
    uint64_t data_remaining; /* content bytes left in the current member */
    uint64_t pad_remaining;  /* padding after the content, to the next block */
    uint64_t skip_remaining;

    int file_fd;             /* regular file being written, or -1 */
    char meta_type;          /* 'x', 'g', 'L' or 'K' while in STATE_META_DATA */
    struct byte_buffer meta;

    struct tar_header header;
    struct tar_entry entry;
    struct byte_buffer entry_name;
    struct byte_buffer entry_path;
    struct byte_buffer link_path; /* cleaned hardlink target */
    bool has_long_name;
    struct byte_buffer long_name;
    bool has_long_link;
    struct byte_buffer long_link;
    struct pax_attrs pax_local;
    struct pax_attrs pax_global;

    struct content_writer writers;

    struct dir_cache parent_cache;
    struct dir_cache link_target_cache;

    struct deferred_dir *dirs;
    size_t dir_count;
    size_t dir_cap;

    struct tar_extract_stats stats;
    struct extract_error error;
    bool failed;
    bool finished;
};

/* entry_writer.c */
int entry_open_regular_file(struct tar_extractor *ex, const struct tar_entry *entry);
/* Writes all of `data` to the open regular file. */
int entry_write_content(struct tar_extractor *ex, const struct tar_entry *entry, const unsigned char *data, size_t len);
int entry_close_regular_file(struct tar_extractor *ex, const struct tar_entry *entry);
/* Hands the rest of the open regular file (all in `data`) to the writer
 * pool: 1 if taken, 0 if the caller must write it, -1 on error. */
int entry_hand_off_content(struct tar_extractor *ex, const struct tar_entry *entry, const unsigned char *data,
                           size_t len);
int entry_write_directory(struct tar_extractor *ex, const struct tar_entry *entry);
int entry_write_symlink(struct tar_extractor *ex, const struct tar_entry *entry);
int entry_write_hardlink(struct tar_extractor *ex, const struct tar_entry *entry);
int entry_write_special(struct tar_extractor *ex, const struct tar_entry *entry);
int entry_apply_deferred_dirs(struct tar_extractor *ex);

/* Shared by the writers and whiteout.c. */
int entry_resolve_parent(struct tar_extractor *ex, const struct tar_entry *entry, int *parent_fd, const char **leaf);
int entry_remove_in_the_way(struct tar_extractor *ex, const struct tar_entry *entry, const char *name, int *parent_fd);
int entry_set_owner_at(struct tar_extractor *ex, const struct tar_entry *entry, int parent_fd, const char *leaf);

/* whiteout.c */
enum whiteout_kind {
    WHITEOUT_NONE,    /* an ordinary entry */
    WHITEOUT_FILE,    /* .wh.NAME: NAME is deleted */
    WHITEOUT_OPAQUE,  /* .wh..wh..opq: the directory hides lower layers */
    WHITEOUT_IGNORED, /* other .wh..wh.* markers (aufs bookkeeping) */
};
enum whiteout_kind whiteout_classify(const char *path, size_t len);
int whiteout_write(struct tar_extractor *ex, const struct tar_entry *entry, enum whiteout_kind kind);

#endif
