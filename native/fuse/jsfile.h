/*
 * jsfile.h: a served file whose every operation is answered by JavaScript (snapshot views,
 * and volumes served by the TypeScript engine). See jsfile.c.
 */
#ifndef ISLAND_FUSE_JSFILE_H
#define ISLAND_FUSE_JSFILE_H

#include <node_api.h>
#include <pthread.h>
#include <stdint.h>

#include "fuse_server.h"

/* What JavaScript is asked to do (the first argument of its callback). */
enum js_kind { JS_READ = 0, JS_WRITE, JS_FSYNC, JS_TRUNCATE, JS_FALLOCATE, JS_SYNC, JS_LOG, JS_FREE };

struct js_call;

/* The calls of one mount in flight to JavaScript, and the function that takes them there. */
struct js_ctx {
  napi_threadsafe_function tsfn;
  pthread_mutex_t lock;
  struct js_call *calls;
  uint64_t next_id;
  int pending;
  int closed;
};

extern const struct isl_file_ops jsfile_ops;
extern const struct fs_late_ops jsfile_late_ops;

int js_ctx_init(struct js_ctx *c, napi_env env, napi_value fn);
/* No new calls reach JavaScript; those in flight are still answered by it. */
void js_ctx_close(struct js_ctx *c);
/* A file answered by JavaScript under `id`; one reference, for the caller. NULL: out of memory. */
void *jsfile_create(struct js_ctx *c, uint32_t id, uint64_t size);
void jsfile_set_size(void *file, uint64_t size);
/* JavaScript's answer to call `id`: a result (>= 0 or a negative errno) and, when >= 0, the file's new size. */
int js_ctx_complete(struct js_ctx *c, uint64_t id, int64_t result, int64_t size);
/* Ask JavaScript to bring the namespace up to date, or log a line. */
void js_ctx_post(struct js_ctx *c, enum js_kind kind, const char *level, const char *text);

#endif
