/*
 * fuse_server.h: island's native FUSE server (see docs/fuse.md). Internal to native/fuse/:
 * the server (server.c: mount, threads, queues), the request handlers (ops.c), the namespace
 * of served files (files.c), the JavaScript-backed file (jsfile.c) and the addon (addon.c).
 */
#ifndef ISLAND_FUSE_SERVER_H
#define ISLAND_FUSE_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../island_io.h"
#include "fuse_abi.h"

/* Largest request data (READ and WRITE): 1 MiB, 256 pages. */
#define FS_MAX_WRITE (1u << 20)
#define FS_MAX_PAGES (FS_MAX_WRITE / 4096)
/* A request buffer: the data plus headers, with room to spare. */
#define FS_BUFSZ (FS_MAX_WRITE + 4096)
#define FS_NAME_MAX 255
#define FS_SUFFIX ".qcow2"

/*
 * Operations of island_io.h that take no waiter, in a form that may answer late: a file
 * whose fsync or truncate needs another thread's work (the JavaScript-backed file) offers
 * these; the server prefers them to the blocking ones of isl_file_ops. Same return values.
 */
struct fs_late_ops {
  int (*fsync)(void *file, struct isl_waiter *w);
  int (*truncate)(void *file, uint64_t size, struct isl_waiter *w);
};

struct fs_xattr {
  struct fs_xattr *next;
  size_t size;
  char *value;
  char name[];
};

/* One file on the mount. Counted: the table (until removed), each handle, each request. */
struct fs_node {
  struct fs_node *next;
  uint64_t nodeid;
  const struct isl_file_ops *ops;
  void *file;
  const struct fs_late_ops *late;
  atomic_int refs;
  atomic_int opens;
  atomic_int readonly;
  /* Nanoseconds since the epoch of the last write or truncate, and of the last change of owner, mode or an attribute. */
  atomic_uint_least64_t mtime_ns;
  atomic_uint_least64_t ctime_ns;
  /* Owner, mode and attributes: under the server's ns lock. */
  uint32_t uid, gid, mode;
  struct fs_xattr *xattrs;
  int xcount;
  size_t xbytes;
  char name[FS_NAME_MAX + 1]; /* "NAME.qcow2" */
};

/* An open file (handles.c); the kernel knows it by slot and generation. */
struct fs_handle {
  uint32_t gen;
  int writable;
  struct fs_node *node; /* the handle's reference */
};

struct fs_server;

/* One request read from /dev/fuse, with its reply buffer; owned by a thread or, parked, by the file. */
struct fs_req {
  struct isl_waiter w; /* first: the file wakes this */
  struct fs_server *srv;
  struct fs_req *qnext;
  int fd;
  int wake_err;
  int synced; /* the namespace was brought up to date for this request */
  size_t len;
  struct fs_node *node; /* a reference held while the request is in flight */
  char *in;
  char *out;
};

struct fs_inval {
  struct fs_inval *next;
  size_t namelen;
  char name[];
};

/* What the owner (the addon) supplies. */
struct fs_host {
  /* Bring the namespace up to date, then call fs_synced(); called with no lock held, any thread. */
  void (*sync)(struct fs_server *s);
  /* A line for the daemon's log (no request data); any thread. */
  void (*log)(struct fs_server *s, const char *level, const char *msg);
  void *data;
};

struct fs_server {
  int fd;
  int nthreads;
  int *fds;
  pthread_t *threads;
  pthread_t retry_thread, notify_thread;
  int threads_started, helpers_started;
  atomic_int stopping;
  atomic_int live_threads;
  atomic_int initialized;
  uint32_t kernel_minor;
  uint32_t open_flags;
  char *mountpoint;
  char *space_dir;
  uid_t root_uid;
  gid_t root_gid;
  uint64_t started_ns;
  struct fs_host host;

  /* Woken requests, for the retry thread. */
  pthread_mutex_t qlock;
  pthread_cond_t qcond;
  struct fs_req *qhead, *qtail;
  struct fs_req *free_reqs;
  int free_count;

  /* Entries to invalidate in the kernel, for the notify thread (it may block on the kernel's locks). */
  pthread_mutex_t nlock;
  pthread_cond_t ncond;
  struct fs_inval *nhead;

  /* The namespace: files, owners, modes, attributes. */
  pthread_mutex_t ns;
  struct fs_node *nodes;
  uint64_t next_nodeid;
  int nfiles;
  /* Requests waiting for the namespace to be brought up to date. */
  struct fs_req *sync_waiters;
  int sync_pending;

  /* Open handles (handles.c). */
  pthread_rwlock_t hlock;
  struct fs_handle **hslots;
  uint32_t hcap, hgen;

  /* Counters for status. */
  atomic_uint_least64_t parked, malformed, unknown_ops;
};

/* server.c */
struct fs_server *fs_create(const char *mountpoint, const char *space_dir, int nthreads, const struct fs_host *host);
int fs_mount(struct fs_server *s, char *err, size_t errlen);
void fs_stop(struct fs_server *s);
void fs_destroy(struct fs_server *s);
int fs_reply(struct fs_req *r, int err, const void *data, size_t len);
int fs_reply_out(struct fs_req *r, size_t len); /* data already at r->out + sizeof(fuse_out_header) */
void fs_requeue(struct fs_req *r, int err);
void fs_synced(struct fs_server *s);
uint64_t fs_now_ns(void);
/* Tests: one raw request through the handlers, answered on fd; 0 answered, 1 parked, < 0 errno. */
int fs_run_once(struct fs_server *s, const void *buf, size_t len, int fd);
void fs_log(struct fs_server *s, const char *level, const char *fmt, ...);

/* handles.c: an fh (0: out of memory), the handle of an fh (NULL: not ours), the node of a freed one. */
uint64_t fs_handle_new(struct fs_server *s, struct fs_node *n, int writable);
struct fs_handle *fs_handle_get(struct fs_server *s, uint64_t fh);
struct fs_node *fs_handle_free(struct fs_server *s, uint64_t fh);
void fs_handles_release(struct fs_server *s);

/* ops.c: 0 when answered (or no answer is due), 1 when parked. */
int fs_dispatch(struct fs_req *r);

/* files.c */
int fs_valid_name(const char *name);
int fs_add(struct fs_server *s, const char *name, int readonly, uint32_t uid, uint32_t gid, uint32_t mode,
           const struct isl_file_ops *ops, void *file, const struct fs_late_ops *late);
int fs_remove(struct fs_server *s, const char *name);
int fs_set_readonly(struct fs_server *s, const char *name, int readonly);
int fs_open_count(struct fs_server *s, const char *name);
struct fs_node *fs_node_get(struct fs_server *s, uint64_t nodeid);       /* referenced, or NULL */
struct fs_node *fs_node_by_name(struct fs_server *s, const char *name, size_t len); /* referenced, or NULL */
void fs_node_unref(struct fs_node *n);
void fs_node_attr(struct fs_server *s, struct fs_node *n, struct fuse_attr *a);
void fs_root_attr(struct fs_server *s, struct fuse_attr *a);
void fs_release_all(struct fs_server *s);
void fs_queue_inval(struct fs_server *s, const char *name); /* server.c */
int fs_xattr_set(struct fs_server *s, struct fs_node *n, const char *name, const void *value, size_t size, uint32_t flags);
int fs_xattr_get(struct fs_server *s, struct fs_node *n, const char *name, void *buf, size_t size);
int fs_xattr_list(struct fs_server *s, struct fs_node *n, char *buf, size_t size);
int fs_xattr_remove(struct fs_server *s, struct fs_node *n, const char *name);

#endif
