/*
 * files.c: the namespace of the native server, one flat directory of served files, with
 * the owner, mode and extended attributes each file carries while it is on the mount (the
 * same rules as src/fuse/attrs.ts: security.* and trusted.* kept in memory, bounded; every
 * other namespace ENOTSUP). JavaScript adds and removes files; a removed file leaves the
 * directory at once and lives on, counted, until its last handle and request are done.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuse_server.h"

#define XATTR_VALUE_MAX 4096
#define XATTR_COUNT_MAX 64
#define XATTR_BYTES_MAX (64 * 1024)
#define XATTR_CREATE 1
#define XATTR_REPLACE 2
#define MODE_BITS 07777u
#define WRITE_BITS 0222u

int fs_valid_name(const char *name) {
  size_t len = strlen(name), sl = strlen(FS_SUFFIX);
  if (len <= sl || len > FS_NAME_MAX || strcmp(name + len - sl, FS_SUFFIX) != 0) return 0;
  if (strchr(name, '/') != NULL) return 0;
  return 1;
}

static void node_free(struct fs_node *n) {
  if (n->ops && n->ops->unref) n->ops->unref(n->file);
  while (n->xattrs) {
    struct fs_xattr *x = n->xattrs;
    n->xattrs = x->next;
    free(x->value);
    free(x);
  }
  free(n);
}

void fs_node_unref(struct fs_node *n) {
  if (atomic_fetch_sub(&n->refs, 1) == 1) node_free(n);
}

static struct fs_node *find_name(struct fs_server *s, const char *name, size_t len) {
  for (struct fs_node *n = s->nodes; n; n = n->next)
    if (strlen(n->name) == len && memcmp(n->name, name, len) == 0) return n;
  return NULL;
}

int fs_add(struct fs_server *s, const char *name, int readonly, uint32_t uid, uint32_t gid, uint32_t mode,
           const struct isl_file_ops *ops, void *file, const struct fs_late_ops *late) {
  if (!fs_valid_name(name)) return -EINVAL;
  struct fs_node *n = calloc(1, sizeof *n);
  if (n == NULL) return -ENOMEM;
  strcpy(n->name, name);
  n->ops = ops;
  n->file = file;
  n->late = late;
  n->uid = uid;
  n->gid = gid;
  n->mode = mode & MODE_BITS;
  atomic_init(&n->refs, 1);
  atomic_init(&n->readonly, readonly ? 1 : 0);
  atomic_init(&n->mtime_ns, fs_now_ns());
  atomic_init(&n->ctime_ns, atomic_load(&n->mtime_ns));
  pthread_mutex_lock(&s->ns);
  if (find_name(s, name, strlen(name)) != NULL) {
    pthread_mutex_unlock(&s->ns);
    n->ops = NULL; /* the caller keeps its reference */
    free(n);
    return -EEXIST;
  }
  n->nodeid = s->next_nodeid++;
  struct fs_node **p = &s->nodes; /* listed in the order they were added */
  while (*p) p = &(*p)->next;
  *p = n;
  s->nfiles++;
  pthread_mutex_unlock(&s->ns);
  return 0;
}

int fs_remove(struct fs_server *s, const char *name) {
  pthread_mutex_lock(&s->ns);
  struct fs_node **p = &s->nodes;
  while (*p && strcmp((*p)->name, name) != 0) p = &(*p)->next;
  struct fs_node *n = *p;
  if (n != NULL) {
    *p = n->next;
    s->nfiles--;
  }
  pthread_mutex_unlock(&s->ns);
  if (n == NULL) return -ENOENT;
  fs_queue_inval(s, name);
  fs_node_unref(n);
  return 0;
}

int fs_set_readonly(struct fs_server *s, const char *name, int readonly) {
  pthread_mutex_lock(&s->ns);
  struct fs_node *n = find_name(s, name, strlen(name));
  if (n) atomic_store(&n->readonly, readonly ? 1 : 0);
  pthread_mutex_unlock(&s->ns);
  return n ? 0 : -ENOENT;
}

int fs_open_count(struct fs_server *s, const char *name) {
  pthread_mutex_lock(&s->ns);
  struct fs_node *n = find_name(s, name, strlen(name));
  int c = n ? atomic_load(&n->opens) : 0;
  pthread_mutex_unlock(&s->ns);
  return c;
}

struct fs_node *fs_node_get(struct fs_server *s, uint64_t nodeid) {
  pthread_mutex_lock(&s->ns);
  struct fs_node *n = s->nodes;
  while (n && n->nodeid != nodeid) n = n->next;
  if (n) atomic_fetch_add(&n->refs, 1);
  pthread_mutex_unlock(&s->ns);
  return n;
}

struct fs_node *fs_node_by_name(struct fs_server *s, const char *name, size_t len) {
  pthread_mutex_lock(&s->ns);
  struct fs_node *n = find_name(s, name, len);
  if (n) atomic_fetch_add(&n->refs, 1);
  pthread_mutex_unlock(&s->ns);
  return n;
}

static void set_time(uint64_t ns, uint64_t *sec, uint32_t *nsec) {
  *sec = ns / 1000000000ull;
  *nsec = (uint32_t)(ns % 1000000000ull);
}

void fs_node_attr(struct fs_server *s, struct fs_node *n, struct fuse_attr *a) {
  memset(a, 0, sizeof *a);
  uint64_t size = n->ops->size(n->file);
  uint64_t m = atomic_load(&n->mtime_ns), c = atomic_load(&n->ctime_ns);
  if (c < m) c = m;
  a->ino = n->nodeid;
  a->size = size;
  a->blocks = (size + 511) / 512;
  set_time(m, &a->mtime, &a->mtimensec);
  set_time(m, &a->atime, &a->atimensec);
  set_time(c, &a->ctime, &a->ctimensec);
  pthread_mutex_lock(&s->ns);
  uint32_t mode = n->mode;
  a->uid = n->uid;
  a->gid = n->gid;
  pthread_mutex_unlock(&s->ns);
  if (atomic_load(&n->readonly)) mode &= ~WRITE_BITS;
  a->mode = S_IFREG | mode;
  a->nlink = 1;
  a->blksize = 65536;
}

void fs_root_attr(struct fs_server *s, struct fuse_attr *a) {
  memset(a, 0, sizeof *a);
  a->ino = FUSE_ROOT_ID;
  a->size = 4096;
  a->mode = S_IFDIR | 0755;
  a->nlink = 2;
  a->uid = s->root_uid;
  a->gid = s->root_gid;
  set_time(s->started_ns, &a->mtime, &a->mtimensec);
  set_time(s->started_ns, &a->atime, &a->atimensec);
  set_time(s->started_ns, &a->ctime, &a->ctimensec);
  a->blksize = 4096;
}

void fs_release_all(struct fs_server *s) {
  pthread_mutex_lock(&s->ns);
  struct fs_node *n = s->nodes;
  s->nodes = NULL;
  s->nfiles = 0;
  pthread_mutex_unlock(&s->ns);
  while (n) {
    struct fs_node *next = n->next;
    fs_node_unref(n);
    n = next;
  }
}

static int kept(const char *name) {
  static const char *ns[] = { "security.", "trusted." };
  for (size_t i = 0; i < 2; i++) {
    size_t l = strlen(ns[i]);
    if (strncmp(name, ns[i], l) == 0 && name[l] != '\0') return 1;
  }
  return 0;
}

static struct fs_xattr **xfind(struct fs_node *n, const char *name) {
  struct fs_xattr **p = &n->xattrs;
  while (*p && strcmp((*p)->name, name) != 0) p = &(*p)->next;
  return p;
}

int fs_xattr_set(struct fs_server *s, struct fs_node *n, const char *name, const void *value, size_t size, uint32_t flags) {
  if (!kept(name)) return -ENOTSUP;
  if (size > XATTR_VALUE_MAX) return -E2BIG;
  size_t nl = strlen(name);
  pthread_mutex_lock(&s->ns);
  struct fs_xattr **p = xfind(n, name), *old = *p;
  int err = 0;
  if (old && (flags & XATTR_CREATE)) err = -EEXIST;
  else if (!old && (flags & XATTR_REPLACE)) err = -ENODATA;
  else if (!old && n->xcount >= XATTR_COUNT_MAX) err = -ENOSPC;
  size_t bytes = n->xbytes - (old ? nl + old->size : 0) + nl + size;
  if (!err && bytes > XATTR_BYTES_MAX) err = -ENOSPC;
  char *copy = NULL;
  if (!err && (copy = malloc(size ? size : 1)) == NULL) err = -ENOMEM;
  if (!err) {
    memcpy(copy, value, size);
    if (old) {
      free(old->value);
      old->value = copy;
      old->size = size;
    } else {
      struct fs_xattr *x = malloc(sizeof *x + nl + 1);
      if (x == NULL) {
        free(copy);
        err = -ENOMEM;
      } else {
        memcpy(x->name, name, nl + 1);
        x->value = copy;
        x->size = size;
        x->next = NULL;
        *p = x;
        n->xcount++;
      }
    }
    if (!err) {
      n->xbytes = bytes;
      atomic_store(&n->ctime_ns, fs_now_ns());
    }
  }
  pthread_mutex_unlock(&s->ns);
  return err;
}

/* The value's length; copied when size > 0 (ERANGE when it does not fit). */
int fs_xattr_get(struct fs_server *s, struct fs_node *n, const char *name, void *buf, size_t size) {
  if (!kept(name)) return -ENOTSUP;
  pthread_mutex_lock(&s->ns);
  struct fs_xattr *x = *xfind(n, name);
  int r;
  if (x == NULL) r = -ENODATA;
  else if (size > 0 && x->size > size) r = -ERANGE;
  else {
    if (size > 0) memcpy(buf, x->value, x->size);
    r = (int)x->size;
  }
  pthread_mutex_unlock(&s->ns);
  return r;
}

int fs_xattr_list(struct fs_server *s, struct fs_node *n, char *buf, size_t size) {
  pthread_mutex_lock(&s->ns);
  size_t total = 0;
  for (struct fs_xattr *x = n->xattrs; x; x = x->next) total += strlen(x->name) + 1;
  int r = (int)total;
  if (size > 0 && total > size) r = -ERANGE;
  else if (size > 0) {
    size_t off = 0;
    for (struct fs_xattr *x = n->xattrs; x; x = x->next) {
      size_t l = strlen(x->name) + 1;
      memcpy(buf + off, x->name, l);
      off += l;
    }
  }
  pthread_mutex_unlock(&s->ns);
  return r;
}

int fs_xattr_remove(struct fs_server *s, struct fs_node *n, const char *name) {
  if (!kept(name)) return -ENOTSUP;
  pthread_mutex_lock(&s->ns);
  struct fs_xattr **p = xfind(n, name), *x = *p;
  if (x) {
    *p = x->next;
    n->xcount--;
    n->xbytes -= strlen(x->name) + x->size;
    atomic_store(&n->ctime_ns, fs_now_ns());
  }
  pthread_mutex_unlock(&s->ns);
  if (x == NULL) return -ENODATA;
  free(x->value);
  free(x);
  return 0;
}
