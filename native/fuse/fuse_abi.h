/*
 * fuse_abi.h: the parts of the kernel's /dev/fuse protocol island's server speaks, written
 * from the documented layout of include/uapi/linux/fuse.h. island negotiates protocol 7.38
 * at most (the kernel answers with the lower of its minor and this one); nothing past 7.38
 * (passthrough, io_uring, request extensions) is requested, so none of it is defined here.
 *
 * Every request is a fuse_in_header followed by the op's input struct (and, for some ops,
 * names or data); every reply is a fuse_out_header followed by the op's output struct.
 * All fields are in the machine's byte order; structs are naturally aligned, no packing.
 */
#ifndef ISLAND_FUSE_ABI_H
#define ISLAND_FUSE_ABI_H

#include <stdint.h>
#include <sys/ioctl.h>

#define FUSE_KERNEL_VERSION 7
/* The highest minor island asks for. */
#define ISL_FUSE_MINOR 38
#define FUSE_ROOT_ID 1

/* Opcodes island answers (anything else gets ENOSYS). */
enum {
  FUSE_LOOKUP = 1,
  FUSE_FORGET = 2, /* no reply */
  FUSE_GETATTR = 3,
  FUSE_SETATTR = 4,
  FUSE_OPEN = 14,
  FUSE_READ = 15,
  FUSE_WRITE = 16,
  FUSE_STATFS = 17,
  FUSE_RELEASE = 18,
  FUSE_FSYNC = 20,
  FUSE_SETXATTR = 21,
  FUSE_GETXATTR = 22,
  FUSE_LISTXATTR = 23,
  FUSE_REMOVEXATTR = 24,
  FUSE_FLUSH = 25,
  FUSE_INIT = 26,
  FUSE_OPENDIR = 27,
  FUSE_READDIR = 28,
  FUSE_RELEASEDIR = 29,
  FUSE_FSYNCDIR = 30,
  FUSE_INTERRUPT = 36, /* no reply */
  FUSE_DESTROY = 38,
  FUSE_BATCH_FORGET = 42, /* no reply */
  FUSE_FALLOCATE = 43,
  FUSE_READDIRPLUS = 44,
};

/* INIT flags (fuse_init_in.flags / fuse_init_out.flags). */
#define FUSE_ASYNC_READ (1u << 0)
#define FUSE_BIG_WRITES (1u << 5)
#define FUSE_DO_READDIRPLUS (1u << 13)
#define FUSE_ASYNC_DIO (1u << 15)
#define FUSE_PARALLEL_DIROPS (1u << 18)
#define FUSE_MAX_PAGES (1u << 22)

/* OPEN reply flags (fuse_open_out.open_flags). */
#define FOPEN_DIRECT_IO (1u << 0)
#define FOPEN_KEEP_CACHE (1u << 1)
#define FOPEN_PARALLEL_DIRECT_WRITES (1u << 6) /* protocol 7.38, kernel 6.2 */

/* SETATTR valid bits. */
#define FATTR_MODE (1u << 0)
#define FATTR_UID (1u << 1)
#define FATTR_GID (1u << 2)
#define FATTR_SIZE (1u << 3)
#define FATTR_ATIME (1u << 4)
#define FATTR_MTIME (1u << 5)
#define FATTR_FH (1u << 6)

/* Notifications (fuse_out_header.error with unique 0). */
#define FUSE_NOTIFY_INVAL_ENTRY 3

#define FUSE_DEV_IOC_CLONE _IOR(229, 0, uint32_t)

/* Before 7.23 the INIT reply ended after max_write. */
#define FUSE_COMPAT_22_INIT_OUT_SIZE 24
/* SETXATTR input without the 7.33 extension (island never negotiates FUSE_SETXATTR_EXT). */
#define FUSE_COMPAT_SETXATTR_IN_SIZE 8

struct fuse_in_header {
  uint32_t len;
  uint32_t opcode;
  uint64_t unique;
  uint64_t nodeid;
  uint32_t uid;
  uint32_t gid;
  uint32_t pid;
  uint16_t total_extlen;
  uint16_t padding;
};

struct fuse_out_header {
  uint32_t len;
  int32_t error;
  uint64_t unique;
};

struct fuse_attr {
  uint64_t ino;
  uint64_t size;
  uint64_t blocks;
  uint64_t atime;
  uint64_t mtime;
  uint64_t ctime;
  uint32_t atimensec;
  uint32_t mtimensec;
  uint32_t ctimensec;
  uint32_t mode;
  uint32_t nlink;
  uint32_t uid;
  uint32_t gid;
  uint32_t rdev;
  uint32_t blksize;
  uint32_t flags;
};

struct fuse_entry_out {
  uint64_t nodeid;
  uint64_t generation;
  uint64_t entry_valid;
  uint64_t attr_valid;
  uint32_t entry_valid_nsec;
  uint32_t attr_valid_nsec;
  struct fuse_attr attr;
};

struct fuse_forget_in {
  uint64_t nlookup;
};

struct fuse_forget_one {
  uint64_t nodeid;
  uint64_t nlookup;
};

struct fuse_batch_forget_in {
  uint32_t count;
  uint32_t dummy;
};

struct fuse_getattr_in {
  uint32_t getattr_flags;
  uint32_t dummy;
  uint64_t fh;
};

struct fuse_attr_out {
  uint64_t attr_valid;
  uint32_t attr_valid_nsec;
  uint32_t dummy;
  struct fuse_attr attr;
};

struct fuse_setattr_in {
  uint32_t valid;
  uint32_t padding;
  uint64_t fh;
  uint64_t size;
  uint64_t lock_owner;
  uint64_t atime;
  uint64_t mtime;
  uint64_t ctime;
  uint32_t atimensec;
  uint32_t mtimensec;
  uint32_t ctimensec;
  uint32_t mode;
  uint32_t unused4;
  uint32_t uid;
  uint32_t gid;
  uint32_t unused5;
};

struct fuse_open_in {
  uint32_t flags;
  uint32_t open_flags;
};

struct fuse_open_out {
  uint64_t fh;
  uint32_t open_flags;
  uint32_t padding; /* backing_id from 7.40; island leaves it 0 */
};

struct fuse_release_in {
  uint64_t fh;
  uint32_t flags;
  uint32_t release_flags;
  uint64_t lock_owner;
};

struct fuse_flush_in {
  uint64_t fh;
  uint32_t unused;
  uint32_t padding;
  uint64_t lock_owner;
};

struct fuse_read_in {
  uint64_t fh;
  uint64_t offset;
  uint32_t size;
  uint32_t read_flags;
  uint64_t lock_owner;
  uint32_t flags;
  uint32_t padding;
};

struct fuse_write_in {
  uint64_t fh;
  uint64_t offset;
  uint32_t size;
  uint32_t write_flags;
  uint64_t lock_owner;
  uint32_t flags;
  uint32_t padding;
};

struct fuse_write_out {
  uint32_t size;
  uint32_t padding;
};

struct fuse_kstatfs {
  uint64_t blocks;
  uint64_t bfree;
  uint64_t bavail;
  uint64_t files;
  uint64_t ffree;
  uint32_t bsize;
  uint32_t namelen;
  uint32_t frsize;
  uint32_t padding;
  uint32_t spare[6];
};

struct fuse_statfs_out {
  struct fuse_kstatfs st;
};

struct fuse_fsync_in {
  uint64_t fh;
  uint32_t fsync_flags;
  uint32_t padding;
};

struct fuse_setxattr_in {
  uint32_t size;
  uint32_t flags;
  /* setxattr_flags and padding follow only with FUSE_SETXATTR_EXT */
};

struct fuse_getxattr_in {
  uint32_t size;
  uint32_t padding;
};

struct fuse_getxattr_out {
  uint32_t size;
  uint32_t padding;
};

struct fuse_init_in {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  /* flags2 and unused[11] follow from 7.36 with FUSE_INIT_EXT; island does not read them */
};

struct fuse_init_out {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  uint16_t max_background;
  uint16_t congestion_threshold;
  uint32_t max_write;
  uint32_t time_gran;
  uint16_t max_pages;
  uint16_t map_alignment;
  uint32_t flags2;
  uint32_t unused[7];
};

struct fuse_interrupt_in {
  uint64_t unique;
};

struct fuse_fallocate_in {
  uint64_t fh;
  uint64_t offset;
  uint64_t length;
  uint32_t mode;
  uint32_t padding;
};

struct fuse_dirent {
  uint64_t ino;
  uint64_t off;
  uint32_t namelen;
  uint32_t type;
  char name[];
};

/* A dirent's size: header plus name, rounded up to 8 bytes. */
#define FUSE_DIRENT_SIZE(namelen) ((offsetof(struct fuse_dirent, name) + (namelen) + 7) & ~(size_t)7)

struct fuse_direntplus {
  struct fuse_entry_out entry_out;
  struct fuse_dirent dirent;
};

#define FUSE_DIRENTPLUS_SIZE(namelen) ((offsetof(struct fuse_direntplus, dirent.name) + (namelen) + 7) & ~(size_t)7)

struct fuse_notify_inval_entry_out {
  uint64_t parent;
  uint32_t namelen;
  uint32_t flags;
};

#endif
