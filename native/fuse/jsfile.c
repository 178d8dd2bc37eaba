/*
 * jsfile.c: a served file answered by JavaScript. Every read, write, fsync, truncate and
 * fallocate becomes a call record handed to the JavaScript thread through a thread-safe
 * function; the server thread gets ISL_PARKED and goes back to reading. JavaScript does the
 * work (reading into, or writing from, the request's own buffer, lent to it as an external
 * Buffer until it answers), then answers through the addon (js_ctx_complete), which wakes
 * the request. The server then calls the same operation again with the same waiter, and
 * this time it finds the answer and returns it: a call record lives from the first call to
 * that retry.
 *
 * The same thread-safe function carries the namespace refresh requests of the server
 * (JS_SYNC), its log lines (JS_LOG) and the end of a file (JS_FREE: its last reference is
 * gone, JavaScript may forget what served it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsfile.h"

struct jsfile {
  struct js_ctx *ctx;
  atomic_int refs;
  uint32_t id;
  atomic_uint_least64_t size;
};

struct js_call {
  struct js_call *next;
  uint64_t id;
  enum js_kind kind;
  struct jsfile *f;
  struct isl_waiter *w;
  void *buf;
  size_t len;
  uint64_t off;
  int mode;
  int done;
  int64_t result;
  char level[8];
  char text[]; /* JS_LOG */
};

/* A message with no answer (sync, log, free). */
static struct js_call *message(enum js_kind kind, const char *level, const char *text) {
  size_t tl = (text ? strlen(text) : 0) + 1; /* always a string, "" when there is none */
  struct js_call *m = calloc(1, sizeof *m + tl);
  if (m == NULL) return NULL;
  m->kind = kind;
  if (level) snprintf(m->level, sizeof m->level, "%s", level);
  if (text) memcpy(m->text, text, tl);
  return m;
}

static int send(struct js_ctx *c, struct js_call *m) {
  if (c->closed) return -1;
  return napi_call_threadsafe_function(c->tsfn, m, napi_tsfn_nonblocking) == napi_ok ? 0 : -1;
}

void js_ctx_post(struct js_ctx *c, enum js_kind kind, const char *level, const char *text) {
  struct js_call *m = message(kind, level, text);
  if (m && send(c, m) != 0) free(m);
}

static void jsfile_ref(void *file) {
  atomic_fetch_add(&((struct jsfile *)file)->refs, 1);
}

static void jsfile_unref(void *file) {
  struct jsfile *f = file;
  if (atomic_fetch_sub(&f->refs, 1) != 1) return;
  struct js_call *m = message(JS_FREE, NULL, NULL);
  if (m) {
    m->off = f->id;
    if (send(f->ctx, m) != 0) free(m);
  }
  free(f);
}

static uint64_t jsfile_size(void *file) {
  return atomic_load(&((struct jsfile *)file)->size);
}

void jsfile_set_size(void *file, uint64_t size) {
  atomic_store(&((struct jsfile *)file)->size, size);
}

/* The answer for this waiter if JavaScript has given it (the record is consumed), else start a call. */
static int64_t call(struct jsfile *f, enum js_kind kind, struct isl_waiter *w, void *buf, size_t len, uint64_t off, int mode) {
  struct js_ctx *c = f->ctx;
  pthread_mutex_lock(&c->lock);
  for (struct js_call **p = &c->calls; *p; p = &(*p)->next) {
    struct js_call *k = *p;
    if (k->w != w || k->f != f) continue;
    if (!k->done) break; /* not answered yet: cannot happen (wake comes after the answer) */
    *p = k->next;
    c->pending--;
    pthread_mutex_unlock(&c->lock);
    int64_t r = k->result;
    free(k);
    return r;
  }
  if (c->closed) {
    pthread_mutex_unlock(&c->lock);
    return -EIO;
  }
  struct js_call *k = calloc(1, sizeof *k);
  if (k == NULL) {
    pthread_mutex_unlock(&c->lock);
    return -ENOMEM;
  }
  k->id = ++c->next_id;
  k->kind = kind;
  k->f = f;
  k->w = w;
  k->buf = buf;
  k->len = len;
  k->off = off;
  k->mode = mode;
  k->next = c->calls;
  c->calls = k;
  c->pending++;
  atomic_fetch_add(&f->refs, 1); /* the call's reference, dropped when JavaScript has taken it */
  pthread_mutex_unlock(&c->lock);
  if (napi_call_threadsafe_function(c->tsfn, k, napi_tsfn_nonblocking) != napi_ok) {
    pthread_mutex_lock(&c->lock);
    for (struct js_call **p = &c->calls; *p; p = &(*p)->next)
      if (*p == k) {
        *p = k->next;
        c->pending--;
        break;
      }
    pthread_mutex_unlock(&c->lock);
    free(k);
    jsfile_unref(f);
    return -EIO;
  }
  return ISL_PARKED;
}

static int64_t jsfile_read(void *file, void *buf, size_t len, uint64_t off, struct isl_waiter *w) {
  return call(file, JS_READ, w, buf, len, off, 0);
}

static int64_t jsfile_write(void *file, const void *buf, size_t len, uint64_t off, struct isl_waiter *w) {
  return call(file, JS_WRITE, w, (void *)buf, len, off, 0);
}

static int jsfile_fallocate(void *file, int mode, uint64_t off, uint64_t len, struct isl_waiter *w) {
  return (int)call(file, JS_FALLOCATE, w, NULL, len, off, mode);
}

static int jsfile_fsync_late(void *file, struct isl_waiter *w) {
  return (int)call(file, JS_FSYNC, w, NULL, 0, 0, 0);
}

static int jsfile_truncate_late(void *file, uint64_t size, struct isl_waiter *w) {
  return (int)call(file, JS_TRUNCATE, w, NULL, 0, size, 0);
}

/* The blocking forms island_io.h asks for: the calling thread waits for JavaScript's answer. */
struct blocking {
  struct isl_waiter w;
  pthread_mutex_t m;
  pthread_cond_t c;
  int woken, err;
};

static void blocking_wake(struct isl_waiter *w, int err) {
  struct blocking *b = (struct blocking *)w;
  pthread_mutex_lock(&b->m);
  b->woken = 1;
  b->err = err;
  pthread_cond_signal(&b->c);
  pthread_mutex_unlock(&b->m);
}

static int blocking_call(void *file, enum js_kind kind, uint64_t off) {
  struct blocking b = { .w = { .wake = blocking_wake } };
  pthread_mutex_init(&b.m, NULL);
  pthread_cond_init(&b.c, NULL);
  int64_t r;
  while ((r = call(file, kind, &b.w, NULL, 0, off, 0)) == ISL_PARKED) {
    pthread_mutex_lock(&b.m);
    while (!b.woken) pthread_cond_wait(&b.c, &b.m);
    b.woken = 0;
    pthread_mutex_unlock(&b.m);
    if (b.err < 0) {
      r = b.err;
      break;
    }
  }
  pthread_mutex_destroy(&b.m);
  pthread_cond_destroy(&b.c);
  return (int)r;
}

static int jsfile_fsync(void *file) {
  return blocking_call(file, JS_FSYNC, 0);
}

static int jsfile_truncate(void *file, uint64_t size) {
  return blocking_call(file, JS_TRUNCATE, size);
}

const struct isl_file_ops jsfile_ops = {
  .read = jsfile_read,
  .write = jsfile_write,
  .fsync = jsfile_fsync,
  .fallocate = jsfile_fallocate,
  .truncate = jsfile_truncate,
  .size = jsfile_size,
  .ref = jsfile_ref,
  .unref = jsfile_unref,
};

const struct fs_late_ops jsfile_late_ops = {
  .fsync = jsfile_fsync_late,
  .truncate = jsfile_truncate_late,
};

void *jsfile_create(struct js_ctx *c, uint32_t id, uint64_t size) {
  struct jsfile *f = calloc(1, sizeof *f);
  if (f == NULL) return NULL;
  f->ctx = c;
  f->id = id;
  atomic_init(&f->refs, 1);
  atomic_init(&f->size, size);
  return f;
}

/* Mark a call answered and wake its request; 0, or -ENOENT when no such call waits. */
static int answer(struct js_ctx *c, uint64_t id, int64_t result, int64_t size) {
  pthread_mutex_lock(&c->lock);
  struct js_call *k = c->calls;
  while (k && (k->id != id || k->done)) k = k->next;
  if (k != NULL) {
    k->done = 1;
    k->result = result;
    if (result >= 0 && size >= 0) atomic_store(&k->f->size, (uint64_t)size);
  }
  pthread_mutex_unlock(&c->lock);
  if (k == NULL) return -ENOENT;
  /* After wake() the record belongs to the retry; nothing here touches it again. */
  k->w->wake(k->w, 0);
  return 0;
}

int js_ctx_complete(struct js_ctx *c, uint64_t id, int64_t result, int64_t size) {
  return answer(c, id, result, size);
}

static napi_value num(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

static napi_value str(napi_env env, const char *s) {
  napi_value out;
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &out);
  return out;
}

/* On the JavaScript thread: fn(kind, file id, call id, buffer|null, offset, length|mode) or fn(kind, level, text). */
static void call_js(napi_env env, napi_value fn, void *context, void *data) {
  struct js_ctx *c = context;
  struct js_call *k = data;
  if (k->kind == JS_SYNC || k->kind == JS_LOG || k->kind == JS_FREE) {
    if (env != NULL) {
      napi_value undef, argv[3];
      napi_get_undefined(env, &undef);
      argv[0] = num(env, k->kind);
      argv[1] = k->kind == JS_FREE ? num(env, (double)k->off) : str(env, k->level);
      argv[2] = str(env, k->text);
      napi_call_function(env, undef, fn, 3, argv, NULL);
    }
    free(k);
    return;
  }
  struct jsfile *f = k->f;
  if (env == NULL) {
    answer(c, k->id, -EIO, -1);
    jsfile_unref(f);
    return;
  }
  napi_value undef, argv[6];
  napi_get_undefined(env, &undef);
  argv[0] = num(env, k->kind);
  argv[1] = num(env, f->id);
  argv[2] = num(env, (double)k->id);
  if (k->buf != NULL && k->len > 0) {
    if (napi_create_external_buffer(env, k->len, k->buf, NULL, NULL, &argv[3]) != napi_ok) {
      /* A runtime that refuses external memory: a write can lend a copy of its data; a read
         must fill the request's own buffer, so it fails. */
      void *copy;
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (pending) {
        napi_value e;
        napi_get_and_clear_last_exception(env, &e);
      }
      if (k->kind != JS_WRITE || napi_create_buffer_copy(env, k->len, k->buf, &copy, &argv[3]) != napi_ok) {
        answer(c, k->id, -EIO, -1);
        jsfile_unref(f);
        return;
      }
    }
  } else napi_get_null(env, &argv[3]);
  argv[4] = num(env, (double)k->off);
  argv[5] = num(env, k->kind == JS_FALLOCATE ? (double)k->len : (double)k->len);
  napi_value mode = num(env, k->mode);
  napi_value all[7] = { argv[0], argv[1], argv[2], argv[3], argv[4], argv[5], mode };
  napi_status st = napi_call_function(env, undef, fn, 7, all, NULL);
  if (st != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value e;
      napi_get_and_clear_last_exception(env, &e);
    }
    answer(c, k->id, -EIO, -1);
  }
  jsfile_unref(f);
}

int js_ctx_init(struct js_ctx *c, napi_env env, napi_value fn) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->lock, NULL);
  napi_value name = str(env, "island.fuse");
  if (napi_create_threadsafe_function(env, fn, NULL, name, 0, 1, NULL, NULL, c, call_js, &c->tsfn) != napi_ok) return -1;
  napi_unref_threadsafe_function(env, c->tsfn);
  return 0;
}

void js_ctx_close(struct js_ctx *c) {
  /* Calls in flight are left to JavaScript: it holds their buffers until it answers, and the
     requests are freed then (fs_requeue while stopping). The thread-safe function stays
     (unreferenced, it keeps nothing alive) so that a late call can never reach a freed one. */
  pthread_mutex_lock(&c->lock);
  c->closed = 1;
  pthread_mutex_unlock(&c->lock);
}
