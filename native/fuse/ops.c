/*
 * ops.c: one handler per FUSE request. Each checks the request's length and ids before it
 * reads anything (a bad one gets EINVAL, an unknown node ENOENT), answers on the fd the
 * request came from, and returns 1 when the file parked it (the file wakes it later and
 * the retry thread calls the handler again) or 0 when it is answered or needs no answer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include "fuse_server.h"

#define ENTRY_VALID_S 1
#define ATTR_VALID_S 1
#define OUT(r) ((r)->out + sizeof(struct fuse_out_header))
#define OUT_MAX (FS_BUFSZ - sizeof(struct fuse_out_header))
#define NAMESPACE_OPS_EPERM 1

#define NEED(type) \
  do { \
    if (alen < sizeof(type)) return bad(r); \
  } while (0)

static int bad(struct fs_req *r) {
  atomic_fetch_add(&r->srv->malformed, 1);
  fs_reply(r, -EINVAL, NULL, 0);
  return 0;
}

/* ENOTDIR for a request on a file that only a directory answers, ENOENT for an unknown node. */
static int not_dir(struct fs_req *r, uint64_t nodeid) {
  struct fs_node *n = fs_node_get(r->srv, nodeid);
  if (n) fs_node_unref(n);
  fs_reply(r, n ? -ENOTDIR : -ENOENT, NULL, 0);
  return 0;
}

static int err(struct fs_req *r, int e) {
  fs_reply(r, e, NULL, 0);
  return 0;
}

/* The request keeps a reference to its node while it is in flight (also while parked). */
static void hold(struct fs_req *r, struct fs_node *n) {
  if (r->node) fs_node_unref(r->node);
  r->node = n;
}

/* Park the request until JavaScript has brought the namespace up to date (fs_synced). */
static int wait_sync(struct fs_req *r) {
  struct fs_server *s = r->srv;
  if (r->synced || s->host.sync == NULL) return 0;
  pthread_mutex_lock(&s->ns);
  r->qnext = s->sync_waiters;
  s->sync_waiters = r;
  int ask = !s->sync_pending;
  s->sync_pending = 1;
  pthread_mutex_unlock(&s->ns);
  if (ask) s->host.sync(s);
  return 1;
}

/* A C string of at most `max` bytes within the argument (its NUL included), or NULL. */
static const char *arg_string(const char *arg, size_t alen, size_t *len) {
  const char *z = memchr(arg, '\0', alen);
  if (z == NULL) return NULL;
  *len = (size_t)(z - arg);
  return arg;
}


static void entry(struct fs_server *s, struct fs_node *n, struct fuse_entry_out *e) {
  memset(e, 0, sizeof *e);
  e->nodeid = n->nodeid;
  e->entry_valid = ENTRY_VALID_S;
  e->attr_valid = ATTR_VALID_S;
  fs_node_attr(s, n, &e->attr);
}

static int op_init(struct fs_req *r, const char *arg, size_t alen) {
  struct fs_server *s = r->srv;
  NEED(struct fuse_init_in);
  const struct fuse_init_in *in = (const void *)arg;
  struct fuse_init_out o = { 0 };
  o.major = FUSE_KERNEL_VERSION;
  o.minor = ISL_FUSE_MINOR;
  if (in->major < FUSE_KERNEL_VERSION) return err(r, -EPROTO);
  if (in->major > FUSE_KERNEL_VERSION) return fs_reply(r, 0, &o, sizeof o), 0; /* the kernel asks again in 7.x */
  if (in->minor < 12) {
    /* Before 7.12 (Linux 2.6.29) entry and attribute replies were shorter: not spoken. */
    fs_log(s, "error", "the kernel speaks FUSE 7.%u; island's server needs 7.12 or later", in->minor);
    return err(r, -EPROTO);
  }
  s->kernel_minor = in->minor;
  uint32_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES;
  o.flags = in->flags & want;
  o.max_readahead = in->max_readahead;
  o.max_background = 64;
  o.congestion_threshold = 48;
  o.max_write = FS_MAX_WRITE;
  o.time_gran = 1;
  o.max_pages = (o.flags & FUSE_MAX_PAGES) ? FS_MAX_PAGES : 0;
  s->open_flags = FOPEN_DIRECT_IO | (in->minor >= 38 ? FOPEN_PARALLEL_DIRECT_WRITES : 0);
  fs_reply(r, 0, &o, in->minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof o);
  atomic_store(&s->initialized, 1);
  fs_log(s, "info", "FUSE protocol 7.%u (kernel 7.%u), max_write %u, max_pages %u, %d threads, open flags%s%s", in->minor < ISL_FUSE_MINOR ? in->minor : ISL_FUSE_MINOR,
         in->minor, FS_MAX_WRITE, o.max_pages, s->nthreads, " direct_io", (s->open_flags & FOPEN_PARALLEL_DIRECT_WRITES) ? " parallel_direct_writes" : " (no parallel direct writes before 7.38)");
  return 0;
}

static int op_lookup(struct fs_req *r, uint64_t parent, const char *arg, size_t alen) {
  size_t len;
  const char *name = arg_string(arg, alen, &len);
  if (name == NULL) return bad(r);
  if (parent != FUSE_ROOT_ID) return not_dir(r, parent);
  if (wait_sync(r)) return 1;
  struct fs_node *n = fs_node_by_name(r->srv, name, len);
  if (n == NULL) return err(r, -ENOENT);
  hold(r, n);
  struct fuse_entry_out e;
  entry(r->srv, n, &e);
  fs_reply(r, 0, &e, sizeof e);
  return 0;
}

static int op_getattr(struct fs_req *r, uint64_t nodeid) {
  struct fuse_attr_out o = { 0 };
  o.attr_valid = ATTR_VALID_S;
  if (nodeid == FUSE_ROOT_ID) fs_root_attr(r->srv, &o.attr);
  else {
    struct fs_node *n = fs_node_get(r->srv, nodeid);
    if (n == NULL) return err(r, -ENOENT);
    hold(r, n);
    fs_node_attr(r->srv, n, &o.attr);
  }
  fs_reply(r, 0, &o, sizeof o);
  return 0;
}

static int op_setattr(struct fs_req *r, uint64_t nodeid, const char *arg, size_t alen) {
  struct fs_server *s = r->srv;
  NEED(struct fuse_setattr_in);
  const struct fuse_setattr_in *in = (const void *)arg;
  struct fuse_attr_out o = { 0 };
  o.attr_valid = ATTR_VALID_S;
  if (nodeid == FUSE_ROOT_ID) {
    if (in->valid & (FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE)) return err(r, -EPERM);
    fs_root_attr(s, &o.attr);
    return fs_reply(r, 0, &o, sizeof o), 0;
  }
  struct fs_node *n = fs_node_get(s, nodeid);
  if (n == NULL) return err(r, -ENOENT);
  hold(r, n);
  if (in->valid & FATTR_SIZE) {
    if (atomic_load(&n->readonly)) return err(r, -EROFS);
    int e = n->late && n->late->truncate ? n->late->truncate(n->file, in->size, &r->w) : n->ops->truncate(n->file, in->size);
    if (e == ISL_PARKED) return 1;
    if (e < 0) return err(r, e);
    atomic_store(&n->mtime_ns, fs_now_ns());
  }
  if (in->valid & (FATTR_MODE | FATTR_UID | FATTR_GID)) {
    /* The kernel has checked that the caller may (default_permissions). */
    pthread_mutex_lock(&s->ns);
    if (in->valid & FATTR_MODE) n->mode = in->mode & 07777u;
    if (in->valid & FATTR_UID) n->uid = in->uid;
    if (in->valid & FATTR_GID) n->gid = in->gid;
    pthread_mutex_unlock(&s->ns);
    atomic_store(&n->ctime_ns, fs_now_ns());
  }
  fs_node_attr(s, n, &o.attr);
  fs_reply(r, 0, &o, sizeof o);
  return 0;
}

static int op_open(struct fs_req *r, uint64_t nodeid, const char *arg, size_t alen) {
  NEED(struct fuse_open_in);
  const struct fuse_open_in *in = (const void *)arg;
  if (nodeid == FUSE_ROOT_ID) return err(r, -EISDIR);
  if (wait_sync(r)) return 1; /* a file removed meanwhile must not open */
  struct fs_node *n = fs_node_get(r->srv, nodeid);
  if (n == NULL) return err(r, -ENOENT);
  int writable = (in->flags & O_ACCMODE) != O_RDONLY;
  if (writable && atomic_load(&n->readonly)) {
    fs_node_unref(n);
    return err(r, -EROFS);
  }
  /* The handle takes the node reference. */
  atomic_fetch_add(&n->opens, 1);
  uint64_t fh = fs_handle_new(r->srv, n, writable);
  if (fh == 0) {
    atomic_fetch_sub(&n->opens, 1);
    fs_node_unref(n);
    return err(r, -ENOMEM);
  }
  struct fuse_open_out o = { .fh = fh, .open_flags = r->srv->open_flags };
  if (fs_reply(r, 0, &o, sizeof o) != 0) {
    /* Not delivered: the kernel never sends a RELEASE for it. */
    fs_handle_free(r->srv, fh);
    atomic_fetch_sub(&n->opens, 1);
    fs_node_unref(n);
  }
  return 0;
}

static int op_release(struct fs_req *r, const char *arg, size_t alen) {
  NEED(struct fuse_release_in);
  const struct fuse_release_in *in = (const void *)arg;
  struct fs_node *n = fs_handle_free(r->srv, in->fh);
  if (n == NULL) return err(r, -EBADF);
  atomic_fetch_sub(&n->opens, 1);
  fs_node_unref(n);
  return err(r, 0);
}

static int op_read(struct fs_req *r, const char *arg, size_t alen) {
  NEED(struct fuse_read_in);
  const struct fuse_read_in *in = (const void *)arg;
  struct fs_handle *h = fs_handle_get(r->srv, in->fh);
  if (h == NULL) return err(r, -EBADF);
  if (in->size > OUT_MAX) return bad(r);
  struct fs_node *n = h->node;
  atomic_fetch_add(&n->refs, 1);
  hold(r, n);
  int64_t got = n->ops->read(n->file, OUT(r), in->size, in->offset, &r->w);
  if (got == ISL_PARKED) return 1;
  if (got < 0) return err(r, (int)got);
  fs_reply_out(r, (size_t)got);
  return 0;
}

static int op_write(struct fs_req *r, const char *arg, size_t alen) {
  NEED(struct fuse_write_in);
  const struct fuse_write_in *in = (const void *)arg;
  if (alen - sizeof *in < in->size) return bad(r);
  struct fs_handle *h = fs_handle_get(r->srv, in->fh);
  if (h == NULL || !h->writable) return err(r, -EBADF);
  struct fs_node *n = h->node;
  /* A file can turn read-only under an open handle (fenced by another host). */
  if (atomic_load(&n->readonly)) return err(r, -EROFS);
  atomic_fetch_add(&n->refs, 1);
  hold(r, n);
  int64_t put = n->ops->write(n->file, arg + sizeof *in, in->size, in->offset, &r->w);
  if (put == ISL_PARKED) return 1;
  if (put < 0) return err(r, (int)put);
  atomic_store(&n->mtime_ns, fs_now_ns());
  struct fuse_write_out o = { .size = (uint32_t)put };
  fs_reply(r, 0, &o, sizeof o);
  return 0;
}

static int op_fsync(struct fs_req *r, const char *arg, size_t alen) {
  NEED(struct fuse_fsync_in);
  const struct fuse_fsync_in *in = (const void *)arg;
  struct fs_handle *h = fs_handle_get(r->srv, in->fh);
  if (h == NULL) return err(r, -EBADF);
  struct fs_node *n = h->node;
  atomic_fetch_add(&n->refs, 1);
  hold(r, n);
  int e = n->late && n->late->fsync ? n->late->fsync(n->file, &r->w) : n->ops->fsync(n->file);
  if (e == ISL_PARKED) return 1;
  return err(r, e < 0 ? e : 0);
}

static int op_fallocate(struct fs_req *r, const char *arg, size_t alen) {
  NEED(struct fuse_fallocate_in);
  const struct fuse_fallocate_in *in = (const void *)arg;
  struct fs_handle *h = fs_handle_get(r->srv, in->fh);
  if (h == NULL || !h->writable) return err(r, -EBADF);
  struct fs_node *n = h->node;
  if (atomic_load(&n->readonly)) return err(r, -EROFS);
  if (in->mode & ~(uint32_t)(ISL_FALLOC_KEEP_SIZE | ISL_FALLOC_PUNCH_HOLE | ISL_FALLOC_ZERO_RANGE)) return err(r, -EOPNOTSUPP);
  if (n->ops->fallocate == NULL) return err(r, -EOPNOTSUPP);
  atomic_fetch_add(&n->refs, 1);
  hold(r, n);
  int e = n->ops->fallocate(n->file, (int)in->mode, in->offset, in->length, &r->w);
  if (e == ISL_PARKED) return 1;
  if (e < 0) return err(r, e);
  atomic_store(&n->mtime_ns, fs_now_ns());
  return err(r, 0);
}

static int op_statfs(struct fs_req *r) {
  struct fs_server *s = r->srv;
  struct statfs st;
  if (statfs(s->space_dir, &st) < 0) return err(r, -errno);
  struct fuse_statfs_out o = { 0 };
  o.st.blocks = st.f_blocks;
  o.st.bfree = st.f_bfree;
  o.st.bavail = st.f_bavail;
  pthread_mutex_lock(&s->ns);
  o.st.files = (uint64_t)s->nfiles;
  pthread_mutex_unlock(&s->ns);
  o.st.ffree = 0;
  o.st.bsize = (uint32_t)st.f_bsize;
  o.st.frsize = (uint32_t)st.f_bsize;
  o.st.namelen = FS_NAME_MAX;
  fs_reply(r, 0, &o, sizeof o);
  return 0;
}

static int op_opendir(struct fs_req *r, uint64_t nodeid, const char *arg, size_t alen) {
  NEED(struct fuse_open_in);
  if (nodeid != FUSE_ROOT_ID) return not_dir(r, nodeid);
  if (wait_sync(r)) return 1; /* a listing shows the files JavaScript serves now */
  struct fuse_open_out o = { 0 };
  fs_reply(r, 0, &o, sizeof o);
  return 0;
}

/* READDIR and READDIRPLUS: ".", "..", then the files; an entry's offset is its index + 1. */
static int op_readdir(struct fs_req *r, uint64_t nodeid, const char *arg, size_t alen, int plus) {
  struct fs_server *s = r->srv;
  NEED(struct fuse_read_in);
  const struct fuse_read_in *in = (const void *)arg;
  if (nodeid != FUSE_ROOT_ID) return err(r, -ENOTDIR);
  size_t cap = in->size < OUT_MAX ? in->size : OUT_MAX;
  /* The files past the offset, referenced, so their attributes can be read without the lock. */
  pthread_mutex_lock(&s->ns);
  int total = s->nfiles;
  struct fs_node **list = calloc((size_t)(total > 0 ? total : 1), sizeof *list);
  int count = 0;
  if (list != NULL)
    for (struct fs_node *n = s->nodes; n; n = n->next) {
      atomic_fetch_add(&n->refs, 1);
      list[count++] = n;
    }
  pthread_mutex_unlock(&s->ns);
  if (list == NULL) return err(r, -ENOMEM);
  size_t used = 0;
  for (uint64_t i = in->offset; i < (uint64_t)count + 2; i++) {
    const char *name = i == 0 ? "." : i == 1 ? ".." : list[i - 2]->name;
    size_t nl = strlen(name);
    size_t sz = plus ? FUSE_DIRENTPLUS_SIZE(nl) : FUSE_DIRENT_SIZE(nl);
    if (used + sz > cap) break;
    char *p = OUT(r) + used;
    memset(p, 0, sz);
    struct fuse_dirent *d;
    if (plus) {
      struct fuse_direntplus *dp = (void *)p;
      if (i >= 2) entry(s, list[i - 2], &dp->entry_out); /* "." and "..": nodeid 0, no lookup counted */
      d = &dp->dirent;
    } else d = (void *)p;
    d->ino = i < 2 ? FUSE_ROOT_ID : list[i - 2]->nodeid;
    d->off = i + 1;
    d->namelen = (uint32_t)nl;
    d->type = (i < 2 ? S_IFDIR : S_IFREG) >> 12; /* the DT_ value of the mode */
    memcpy(d->name, name, nl);
    used += sz;
  }
  for (int i = 0; i < count; i++) fs_node_unref(list[i]);
  free(list);
  fs_reply_out(r, used);
  return 0;
}

static int op_getxattr(struct fs_req *r, uint64_t nodeid, const char *arg, size_t alen, int list) {
  NEED(struct fuse_getxattr_in);
  const struct fuse_getxattr_in *in = (const void *)arg;
  size_t nl;
  const char *name = list ? "" : arg_string(arg + sizeof *in, alen - sizeof *in, &nl);
  if (name == NULL) return bad(r);
  size_t size = in->size < OUT_MAX ? in->size : OUT_MAX;
  int got;
  if (nodeid == FUSE_ROOT_ID) got = list ? 0 : -ENODATA;
  else {
    struct fs_node *n = fs_node_get(r->srv, nodeid);
    if (n == NULL) return err(r, -ENOENT);
    hold(r, n);
    got = list ? fs_xattr_list(r->srv, n, OUT(r), size) : fs_xattr_get(r->srv, n, name, OUT(r), size);
  }
  if (got < 0) return err(r, got);
  if (in->size == 0) {
    struct fuse_getxattr_out o = { .size = (uint32_t)got };
    return fs_reply(r, 0, &o, sizeof o), 0;
  }
  fs_reply_out(r, (size_t)got);
  return 0;
}

static int op_setxattr(struct fs_req *r, uint64_t nodeid, const char *arg, size_t alen) {
  if (alen < FUSE_COMPAT_SETXATTR_IN_SIZE) return bad(r);
  const struct fuse_setxattr_in *in = (const void *)arg;
  size_t nl;
  const char *name = arg_string(arg + FUSE_COMPAT_SETXATTR_IN_SIZE, alen - FUSE_COMPAT_SETXATTR_IN_SIZE, &nl);
  if (name == NULL) return bad(r);
  size_t rest = alen - FUSE_COMPAT_SETXATTR_IN_SIZE - nl - 1;
  if (rest < in->size) return bad(r);
  if (nodeid == FUSE_ROOT_ID) return err(r, -EPERM);
  struct fs_node *n = fs_node_get(r->srv, nodeid);
  if (n == NULL) return err(r, -ENOENT);
  hold(r, n);
  return err(r, fs_xattr_set(r->srv, n, name, name + nl + 1, in->size, in->flags));
}

static int op_removexattr(struct fs_req *r, uint64_t nodeid, const char *arg, size_t alen) {
  size_t nl;
  const char *name = arg_string(arg, alen, &nl);
  if (name == NULL) return bad(r);
  if (nodeid == FUSE_ROOT_ID) return err(r, -EPERM);
  struct fs_node *n = fs_node_get(r->srv, nodeid);
  if (n == NULL) return err(r, -ENOENT);
  hold(r, n);
  return err(r, fs_xattr_remove(r->srv, n, name));
}

int fs_dispatch(struct fs_req *r) {
  struct fs_server *s = r->srv;
  if (r->len < sizeof(struct fuse_in_header)) {
    /* Too short to carry a request id: nothing can be answered. */
    atomic_fetch_add(&s->malformed, 1);
    return 0;
  }
  const struct fuse_in_header *h = (const void *)r->in;
  if (h->len != r->len || (size_t)h->total_extlen * 8 > r->len - sizeof *h) return bad(r);
  const char *arg = r->in + sizeof *h;
  size_t alen = r->len - sizeof *h - (size_t)h->total_extlen * 8;
  if (!atomic_load(&s->initialized) && h->opcode != FUSE_INIT) return err(r, -EIO);
  switch (h->opcode) {
  case FUSE_INIT: return op_init(r, arg, alen);
  case FUSE_DESTROY: return err(r, 0);
  case FUSE_LOOKUP: return op_lookup(r, h->nodeid, arg, alen);
  case FUSE_FORGET:
  case FUSE_BATCH_FORGET:
  case FUSE_INTERRUPT:
    /* No answer is due. Nodes are never reused, so lookup counts need no keeping; an
       interrupted request is answered when its file answers (a miss is bounded there). */
    return 0;
  case FUSE_GETATTR: return op_getattr(r, h->nodeid);
  case FUSE_SETATTR: return op_setattr(r, h->nodeid, arg, alen);
  case FUSE_OPEN: return op_open(r, h->nodeid, arg, alen);
  case FUSE_READ: return op_read(r, arg, alen);
  case FUSE_WRITE: return op_write(r, arg, alen);
  case FUSE_FLUSH: return err(r, 0);
  case FUSE_RELEASE: return op_release(r, arg, alen);
  case FUSE_FSYNC: return op_fsync(r, arg, alen);
  case FUSE_FALLOCATE: return op_fallocate(r, arg, alen);
  case FUSE_STATFS: return op_statfs(r);
  case FUSE_OPENDIR: return op_opendir(r, h->nodeid, arg, alen);
  case FUSE_READDIR: return op_readdir(r, h->nodeid, arg, alen, 0);
  case FUSE_READDIRPLUS: return op_readdir(r, h->nodeid, arg, alen, 1);
  case FUSE_RELEASEDIR:
  case FUSE_FSYNCDIR: return err(r, 0);
  case FUSE_GETXATTR: return op_getxattr(r, h->nodeid, arg, alen, 0);
  case FUSE_LISTXATTR: return op_getxattr(r, h->nodeid, arg, alen, 1);
  case FUSE_SETXATTR: return op_setxattr(r, h->nodeid, arg, alen);
  case FUSE_REMOVEXATTR: return op_removexattr(r, h->nodeid, arg, alen);
  /* Files are made and removed by island only, as with the fuse-native transport. */
  case 6: /* SYMLINK */
  case 8: /* MKNOD */
  case 9: /* MKDIR */
  case 10: /* UNLINK */
  case 11: /* RMDIR */
  case 12: /* RENAME */
  case 13: /* LINK */
  case 35: /* CREATE */
  case 45: /* RENAME2 */
  case 51: /* TMPFILE */
    return err(r, -EPERM);
  default:
    atomic_fetch_add(&s->unknown_ops, 1);
    return err(r, -ENOSYS);
  }
}
