/*
 * server.c: the native FUSE server's machinery. Mounts with mount(2) on a /dev/fuse fd,
 * runs a pool of threads that each read requests from their own clone of that fd and
 * answer on it, a retry thread that reissues requests whose file woke them after a miss,
 * and a notify thread that tells the kernel to drop the entries of removed files (a
 * notification can wait on the kernel's directory lock, which a request in flight may hold,
 * so neither a server thread nor JavaScript ever sends one). docs/fuse.md has the design.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fuse_server.h"

/* Free request buffers kept for reuse (each is two FS_BUFSZ buffers, touched only as far as requests reach). */
#define FS_FREE_REQS_MAX 32

uint64_t fs_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void fs_log(struct fs_server *s, const char *level, const char *fmt, ...) {
  if (s->host.log == NULL) return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  s->host.log(s, level, msg);
}

static void req_wake(struct isl_waiter *w, int err) {
  fs_requeue((struct fs_req *)w, err);
}

static struct fs_req *req_new(struct fs_server *s) {
  pthread_mutex_lock(&s->qlock);
  struct fs_req *r = s->free_reqs;
  if (r != NULL) {
    s->free_reqs = r->qnext;
    s->free_count--;
  }
  pthread_mutex_unlock(&s->qlock);
  if (r == NULL) {
    r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->in = malloc(FS_BUFSZ);
    r->out = malloc(FS_BUFSZ);
    if (r->in == NULL || r->out == NULL) {
      free(r->in);
      free(r->out);
      free(r);
      return NULL;
    }
  }
  r->srv = s;
  r->w.wake = req_wake;
  r->w.next = NULL;
  r->qnext = NULL;
  r->synced = 0;
  r->wake_err = 0;
  r->node = NULL;
  r->len = 0;
  return r;
}

static void req_free(struct fs_req *r) {
  if (r == NULL) return;
  struct fs_server *s = r->srv;
  if (r->node != NULL) {
    fs_node_unref(r->node);
    r->node = NULL;
  }
  pthread_mutex_lock(&s->qlock);
  if (s->free_count < FS_FREE_REQS_MAX) {
    r->qnext = s->free_reqs;
    s->free_reqs = r;
    s->free_count++;
    r = NULL;
  }
  pthread_mutex_unlock(&s->qlock);
  if (r != NULL) {
    free(r->in);
    free(r->out);
    free(r);
  }
}

/* Write one reply; ENOENT means the kernel dropped the request (interrupted or aborted): not an error. */
static int write_reply(int fd, struct iovec *iov, int n) {
  for (;;) {
    ssize_t w = writev(fd, iov, n);
    if (w >= 0) return 0;
    if (errno == EINTR) continue;
    return errno == ENOENT ? 0 : -errno;
  }
}

int fs_reply(struct fs_req *r, int err, const void *data, size_t len) {
  const struct fuse_in_header *in = (const struct fuse_in_header *)r->in;
  struct fuse_out_header h = { .len = (uint32_t)(sizeof h + (err ? 0 : len)), .error = err > 0 ? -err : err, .unique = in->unique };
  struct iovec iov[2] = { { &h, sizeof h }, { (void *)data, len } };
  return write_reply(r->fd, iov, err || len == 0 ? 1 : 2);
}

int fs_reply_out(struct fs_req *r, size_t len) {
  const struct fuse_in_header *in = (const struct fuse_in_header *)r->in;
  struct fuse_out_header *h = (struct fuse_out_header *)r->out;
  h->len = (uint32_t)(sizeof *h + len);
  h->error = 0;
  h->unique = in->unique;
  struct iovec iov = { r->out, sizeof *h + len };
  return write_reply(r->fd, &iov, 1);
}

void fs_requeue(struct fs_req *r, int err) {
  struct fs_server *s = r->srv;
  if (atomic_load(&s->stopping)) {
    /* The connection is going away: nothing to answer, nobody to retry. */
    req_free(r);
    return;
  }
  r->wake_err = err;
  r->qnext = NULL;
  pthread_mutex_lock(&s->qlock);
  if (s->qtail) s->qtail->qnext = r;
  else s->qhead = r;
  s->qtail = r;
  pthread_cond_signal(&s->qcond);
  pthread_mutex_unlock(&s->qlock);
}

void fs_synced(struct fs_server *s) {
  pthread_mutex_lock(&s->ns);
  struct fs_req *list = s->sync_waiters;
  s->sync_waiters = NULL;
  s->sync_pending = 0;
  pthread_mutex_unlock(&s->ns);
  while (list != NULL) {
    struct fs_req *next = list->qnext;
    list->synced = 1;
    fs_requeue(list, 0);
    list = next;
  }
}

/* Handle one request; when it parks, its buffers went with it and the thread needs new ones. */
static struct fs_req *handle(struct fs_req *r) {
  struct fs_server *s = r->srv;
  if (fs_dispatch(r) == 0) {
    if (r->node != NULL) {
      fs_node_unref(r->node);
      r->node = NULL;
    }
    r->synced = 0;
    return r;
  }
  atomic_fetch_add(&s->parked, 1);
  struct fs_req *fresh;
  while ((fresh = req_new(s)) == NULL) {
    fs_log(s, "error", "out of memory for a request buffer; retrying");
    sleep(1);
  }
  return fresh;
}

int fs_run_once(struct fs_server *s, const void *buf, size_t len, int fd) {
  if (len > FS_BUFSZ) return -EINVAL;
  struct fs_req *r = req_new(s);
  if (r == NULL) return -ENOMEM;
  memcpy(r->in, buf, len);
  r->len = len;
  r->fd = fd;
  r->synced = 1; /* answered from the namespace as it is: nothing waits for JavaScript here */
  struct fs_req *back = handle(r);
  int parked = back != r;
  req_free(back);
  return parked;
}

struct thread_arg {
  struct fs_server *s;
  int fd;
};

static void *serve_thread(void *p) {
  struct thread_arg *a = p;
  struct fs_server *s = a->s;
  int fd = a->fd;
  free(a);
  struct fs_req *r = req_new(s);
  while (r != NULL && !atomic_load(&s->stopping)) {
    ssize_t n = read(fd, r->in, FS_BUFSZ);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      if (errno != ENODEV) fs_log(s, "error", "reading /dev/fuse: %s", strerror(errno));
      break;
    }
    r->len = (size_t)n;
    r->fd = fd;
    r = handle(r);
  }
  if (r != NULL) req_free(r);
  atomic_fetch_sub(&s->live_threads, 1);
  return NULL;
}

static void *retry_thread(void *p) {
  struct fs_server *s = p;
  pthread_mutex_lock(&s->qlock);
  for (;;) {
    while (s->qhead == NULL && !atomic_load(&s->stopping)) pthread_cond_wait(&s->qcond, &s->qlock);
    if (s->qhead == NULL) break;
    struct fs_req *r = s->qhead;
    s->qhead = r->qnext;
    if (s->qhead == NULL) s->qtail = NULL;
    pthread_mutex_unlock(&s->qlock);
    if (r->wake_err < 0) {
      fs_reply(r, r->wake_err, NULL, 0);
      req_free(r);
    } else {
      struct fs_req *back = handle(r);
      /* handle() returns the same request when answered, a fresh one when it parked again. */
      req_free(back);
    }
    pthread_mutex_lock(&s->qlock);
  }
  pthread_mutex_unlock(&s->qlock);
  return NULL;
}

static void *notify_thread(void *p) {
  struct fs_server *s = p;
  pthread_mutex_lock(&s->nlock);
  for (;;) {
    while (s->nhead == NULL && !atomic_load(&s->stopping)) pthread_cond_wait(&s->ncond, &s->nlock);
    if (s->nhead == NULL) break;
    struct fs_inval *v = s->nhead;
    s->nhead = v->next;
    pthread_mutex_unlock(&s->nlock);
    if (atomic_load(&s->initialized)) {
      struct fuse_out_header h = { 0 };
      struct fuse_notify_inval_entry_out o = { .parent = FUSE_ROOT_ID, .namelen = (uint32_t)v->namelen, .flags = 0 };
      h.len = (uint32_t)(sizeof h + sizeof o + v->namelen + 1);
      h.error = FUSE_NOTIFY_INVAL_ENTRY;
      struct iovec iov[3] = { { &h, sizeof h }, { &o, sizeof o }, { v->name, v->namelen + 1 } };
      int err = write_reply(s->fd, iov, 3);
      if (err != 0 && err != -ENOTCONN && err != -ENODEV) fs_log(s, "warn", "invalidating %s: %s", v->name, strerror(-err));
    }
    free(v);
    pthread_mutex_lock(&s->nlock);
  }
  pthread_mutex_unlock(&s->nlock);
  return NULL;
}

/* Called by files.c with the name of a removed file. */
void fs_queue_inval(struct fs_server *s, const char *name) {
  size_t len = strlen(name);
  struct fs_inval *v = malloc(sizeof *v + len + 1);
  if (v == NULL) return; /* the kernel's entry then times out on its own */
  v->next = NULL;
  v->namelen = len;
  memcpy(v->name, name, len + 1);
  pthread_mutex_lock(&s->nlock);
  struct fs_inval **p = &s->nhead;
  while (*p) p = &(*p)->next;
  *p = v;
  pthread_cond_signal(&s->ncond);
  pthread_mutex_unlock(&s->nlock);
}

struct fs_server *fs_create(const char *mountpoint, const char *space_dir, int nthreads, const struct fs_host *host) {
  struct fs_server *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  s->fd = -1;
  s->nthreads = nthreads < 1 ? 1 : nthreads > 64 ? 64 : nthreads;
  /* Canonical, as /proc/self/mountinfo shows it. */
  s->mountpoint = realpath(mountpoint, NULL);
  if (s->mountpoint == NULL) s->mountpoint = strdup(mountpoint);
  s->space_dir = strdup(space_dir);
  s->root_uid = getuid();
  s->root_gid = getgid();
  s->started_ns = fs_now_ns();
  s->next_nodeid = FUSE_ROOT_ID + 1;
  if (host) s->host = *host;
  pthread_mutex_init(&s->qlock, NULL);
  pthread_cond_init(&s->qcond, NULL);
  pthread_mutex_init(&s->nlock, NULL);
  pthread_cond_init(&s->ncond, NULL);
  pthread_mutex_init(&s->ns, NULL);
  pthread_rwlock_init(&s->hlock, NULL);
  s->fds = calloc((size_t)s->nthreads, sizeof *s->fds);
  s->threads = calloc((size_t)s->nthreads, sizeof *s->threads);
  if (!s->mountpoint || !s->space_dir || !s->fds || !s->threads) {
    fs_destroy(s);
    return NULL;
  }
  for (int i = 0; i < s->nthreads; i++) s->fds[i] = -1;
  return s;
}

static int clone_fd(int session) {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return -1;
  uint32_t sfd = (uint32_t)session;
  if (ioctl(fd, FUSE_DEV_IOC_CLONE, &sfd) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

int fs_mount(struct fs_server *s, char *err, size_t errlen) {
  struct stat st;
  if (stat(s->mountpoint, &st) < 0 || !S_ISDIR(st.st_mode)) {
    snprintf(err, errlen, "mountpoint %s: %s", s->mountpoint, errno ? strerror(errno) : "not a directory");
    return -1;
  }
  s->fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (s->fd < 0) {
    snprintf(err, errlen, "cannot open /dev/fuse: %s", strerror(errno));
    return -1;
  }
  char opts[256];
  snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=%u,group_id=%u,allow_other,default_permissions,max_read=%u",
           s->fd, (unsigned)getuid(), (unsigned)getgid(), FS_MAX_WRITE);
  if (mount("island", s->mountpoint, "fuse.island", MS_NOSUID | MS_NODEV, opts) < 0) {
    snprintf(err, errlen, "mount(2) of %s: %s%s", s->mountpoint, strerror(errno), errno == EPERM ? " (needs root)" : "");
    close(s->fd);
    s->fd = -1;
    return -1;
  }
  s->fds[0] = s->fd;
  for (int i = 1; i < s->nthreads; i++) {
    s->fds[i] = clone_fd(s->fd);
    if (s->fds[i] < 0) {
      /* An old kernel without FUSE_DEV_IOC_CLONE: the threads share the session fd. */
      fs_log(s, "warn", "FUSE_DEV_IOC_CLONE failed (%s); threads share one fd", strerror(errno));
      for (int j = i; j < s->nthreads; j++) s->fds[j] = -2;
      break;
    }
  }
  if (pthread_create(&s->retry_thread, NULL, retry_thread, s) != 0 || pthread_create(&s->notify_thread, NULL, notify_thread, s) != 0) {
    snprintf(err, errlen, "cannot start threads");
    fs_stop(s);
    return -1;
  }
  s->helpers_started = 1;
  for (int i = 0; i < s->nthreads; i++) {
    struct thread_arg *a = malloc(sizeof *a);
    if (a == NULL) break;
    a->s = s;
    a->fd = s->fds[i] >= 0 ? s->fds[i] : s->fd;
    atomic_fetch_add(&s->live_threads, 1);
    if (pthread_create(&s->threads[i], NULL, serve_thread, a) != 0) {
      atomic_fetch_sub(&s->live_threads, 1);
      free(a);
      break;
    }
    s->threads_started++;
  }
  if (s->threads_started == 0) {
    snprintf(err, errlen, "cannot start server threads");
    fs_stop(s);
    return -1;
  }
  return 0;
}

/*
 * End our connection through the fuse control file system (its abort file, named by the
 * mount's device number), mounting that file system first when nobody has (systemd does
 * at boot; a container may not have).
 */
static void abort_connection(struct fs_server *s, dev_t dev) {
  char path[96];
  snprintf(path, sizeof path, "/sys/fs/fuse/connections/%u/abort", (unsigned)minor(dev));
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT && mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, NULL) == 0)
    fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) fs_log(s, "warn", "cannot abort the FUSE connection (%s): %s", path, strerror(errno));
    return;
  }
  if (write(fd, "1", 1) < 0) fs_log(s, "warn", "aborting the FUSE connection: %s", strerror(errno));
  close(fd);
}

/* Find the device number of our mount in /proc/self/mountinfo (stat would ask this server). */
static int mount_dev(struct fs_server *s, dev_t *dev) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (f == NULL) return -1;
  char line[4096];
  int found = -1;
  while (fgets(line, sizeof line, f)) {
    unsigned maj, min;
    char mp[2048];
    if (sscanf(line, "%*u %*u %u:%u %*s %2047s", &maj, &min, mp) != 3) continue;
    if (strcmp(mp, s->mountpoint) != 0 || strstr(line, " fuse.island ") == NULL) continue;
    *dev = makedev(maj, min);
    found = 0;
  }
  fclose(f);
  return found;
}

void fs_stop(struct fs_server *s) {
  if (atomic_exchange(&s->stopping, 1)) return;
  dev_t dev = 0;
  int have_dev = s->fd >= 0 && mount_dev(s, &dev) == 0;
  if (s->fd >= 0 && umount2(s->mountpoint, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
    fs_log(s, "warn", "unmounting %s: %s", s->mountpoint, strerror(errno));
  /* With no file open the detach ends the connection; with one open it lives on: end it. */
  if (have_dev) abort_connection(s, dev);
  /* A thread that does not end (the connection could not be ended) is left behind, never waited on forever. */
  int stuck = 0;
  for (int i = 0; i < s->threads_started; i++) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    if (pthread_timedjoin_np(s->threads[i], NULL, &deadline) != 0) {
      pthread_detach(s->threads[i]);
      stuck++;
    }
  }
  s->threads_started = 0;
  if (stuck) fs_log(s, "error", "%d server threads did not end after the unmount; their descriptors stay open", stuck);
  if (s->helpers_started) {
    pthread_mutex_lock(&s->qlock);
    pthread_cond_broadcast(&s->qcond);
    pthread_mutex_unlock(&s->qlock);
    pthread_mutex_lock(&s->nlock);
    pthread_cond_broadcast(&s->ncond);
    pthread_mutex_unlock(&s->nlock);
    pthread_join(s->retry_thread, NULL);
    pthread_join(s->notify_thread, NULL);
    s->helpers_started = 0;
  }
  if (!stuck) {
    for (int i = 0; i < s->nthreads; i++) {
      if (s->fds[i] >= 0 && s->fds[i] != s->fd) close(s->fds[i]);
      s->fds[i] = -1;
    }
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
  }
  /* Requests still queued or waiting for the namespace: the connection is gone, free them. */
  pthread_mutex_lock(&s->qlock);
  struct fs_req *q = s->qhead;
  s->qhead = s->qtail = NULL;
  pthread_mutex_unlock(&s->qlock);
  pthread_mutex_lock(&s->ns);
  struct fs_req *w = s->sync_waiters;
  s->sync_waiters = NULL;
  pthread_mutex_unlock(&s->ns);
  for (struct fs_req *l = q; l != NULL;) {
    struct fs_req *next = l->qnext;
    req_free(l);
    l = next;
  }
  for (struct fs_req *l = w; l != NULL;) {
    struct fs_req *next = l->qnext;
    req_free(l);
    l = next;
  }
  /* Requests still parked in a file are freed by their wake() (fs_requeue while stopping). */
}

void fs_destroy(struct fs_server *s) {
  if (s == NULL) return;
  fs_handles_release(s);
  fs_release_all(s);
  free(s->hslots);
  pthread_rwlock_destroy(&s->hlock);
  while (s->free_reqs) {
    struct fs_req *r = s->free_reqs;
    s->free_reqs = r->qnext;
    free(r->in);
    free(r->out);
    free(r);
  }
  while (s->nhead) {
    struct fs_inval *v = s->nhead;
    s->nhead = v->next;
    free(v);
  }
  free(s->fds);
  free(s->threads);
  free(s->mountpoint);
  free(s->space_dir);
  pthread_mutex_destroy(&s->qlock);
  pthread_cond_destroy(&s->qcond);
  pthread_mutex_destroy(&s->nlock);
  pthread_cond_destroy(&s->ncond);
  pthread_mutex_destroy(&s->ns);
  free(s);
}
