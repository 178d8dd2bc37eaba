/*
 * island_native: the sparse-file primitives Node does not offer, for island's volume engine.
 *
 * Loaded by exactly one module, src/volume/native.ts, which validates arguments, turns
 * failures into IslandError codes and is the only API the rest of island sees.
 *
 * Every function returns a Promise and runs its syscalls on the libuv thread pool
 * (napi_create_async_work): they can block on the disk, and the daemon serves FUSE from
 * the event loop. There is deliberately no synchronous variant.
 *
 * Exports (N-API version 8):
 *   abi                               number, raised whenever this contract changes
 *   maxExtentsPerCall                 number, the largest max dataExtents accepts
 *   seekData(fd, offset)              -> Promise<number>
 *       lseek(SEEK_DATA): the first data byte at or after offset; -1 when there is no
 *       data at or after offset (ENXIO)
 *   seekHole(fd, offset)              -> Promise<number>
 *       lseek(SEEK_HOLE): the first hole byte at or after offset (the end of the file
 *       counts as a hole); -1 when offset is at or past the end of the file (ENXIO)
 *   punchHole(fd, offset, length)     -> Promise<undefined>
 *       fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): the range reads as zeros
 *       and its whole blocks are freed; the file size does not change
 *   dataExtents(fd, start, end, max)  -> Promise<{ extents: Float64Array, next: number }>
 *       the data extents inside [start, end), clipped to it, as flat (offset, length)
 *       pairs, at most max of them (SEEK_DATA / SEEK_HOLE in a loop); next is the offset
 *       of the next data extent when max was reached, or -1 when the range is exhausted
 *   lockExclusive(fd)                 -> Promise<boolean>
 *       flock(LOCK_EX | LOCK_NB): true when this open file now holds the exclusive lock,
 *       false when another open file holds it (EWOULDBLOCK). The kernel drops the lock when
 *       the last descriptor of the open file closes, including when the process dies
 *
 * Offsets and lengths are JavaScript numbers holding integers in [0, 2^53 - 1]. Argument
 * errors throw a TypeError or RangeError at once. A failed syscall rejects the promise
 * with an Error carrying `errno` (the positive errno number) and `syscall` (its name).
 *
 * The seeks move the file position of fd: island only does positional I/O on these files.
 * Nothing here keeps global state, so the addon may be loaded by several worker threads.
 */
#define _GNU_SOURCE /* SEEK_DATA, SEEK_HOLE, fallocate, FALLOC_FL_* */
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/types.h>
#include <unistd.h>

#include <node_api.h>

#include "volume/addon.h"

/* Raised whenever an export, an argument or a result changes meaning; native.ts refuses
 * an addon built from other sources (a stale native/build) instead of misreading it. */
#define ISLAND_NATIVE_ABI 2

/* The largest integer a JavaScript number holds exactly: offsets beyond it cannot cross. */
#define MAX_SAFE_INTEGER 9007199254740991LL

/* One dataExtents call lists at most this many extents: 65536 pairs of int64 are 1 MiB of
 * scratch memory, and 2 lseeks per extent keep one call on a pool thread to milliseconds,
 * so a badly fragmented file cannot hold a pool thread (shared with fs) for long. */
#define MAX_EXTENTS_PER_CALL 65536

typedef enum { OP_SEEK_DATA, OP_SEEK_HOLE, OP_PUNCH_HOLE, OP_DATA_EXTENTS, OP_FLOCK } op_kind;

/* One call: its arguments, its results and the handles that tie it to its promise.
 * `execute` runs on a pool thread and touches only plain fields; `complete` runs on the
 * JavaScript thread and frees the job. */
typedef struct {
  op_kind kind;
  int fd;
  int64_t offset; /* seek offset, punch offset, or start of the extent range */
  int64_t length; /* punch length */
  int64_t end;    /* end of the extent range (exclusive) */
  uint32_t max;   /* most extents to list */
  int64_t result; /* seek result or next offset of the extent listing; -1 for none */
  int64_t *extents; /* 2 * max: offset, length, offset, length... */
  uint32_t count;
  int err; /* errno of the failed syscall, 0 on success */
  const char *syscall;
  napi_deferred deferred;
  napi_async_work work;
} job;

/* ---------- pool thread side: syscalls only, no N-API ---------- */

static void fail(job *j, const char *syscall, int err) {
  j->err = err;
  j->syscall = syscall;
}

/* lseek with SEEK_DATA or SEEK_HOLE. Returns the offset, -1 at ENXIO, -2 on other errors
 * (recorded in the job). */
static int64_t seek(job *j, int64_t offset, int whence) {
  off_t r = lseek(j->fd, (off_t)offset, whence);
  if (r < 0) {
    if (errno == ENXIO) return -1;
    fail(j, whence == SEEK_DATA ? "lseek(SEEK_DATA)" : "lseek(SEEK_HOLE)", errno);
    return -2;
  }
  if ((int64_t)r > MAX_SAFE_INTEGER) {
    fail(j, whence == SEEK_DATA ? "lseek(SEEK_DATA)" : "lseek(SEEK_HOLE)", EOVERFLOW);
    return -2;
  }
  return (int64_t)r;
}

static void punch(job *j) {
#if defined(FALLOC_FL_PUNCH_HOLE) && defined(FALLOC_FL_KEEP_SIZE)
  int r;
  do {
    r = fallocate(j->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)j->offset, (off_t)j->length);
  } while (r < 0 && errno == EINTR);
  if (r < 0) fail(j, "fallocate", errno);
#else
  fail(j, "fallocate", ENOSYS);
#endif
}

static void list_extents(job *j) {
  int64_t pos = j->offset;
  j->result = -1;
  while (pos < j->end) {
    int64_t data = seek(j, pos, SEEK_DATA);
    if (data == -2) return;
    if (data == -1 || data >= j->end) return; /* no more data in the range */
    if (j->count == j->max) {
      j->result = data; /* full: the caller continues from the next extent */
      return;
    }
    int64_t hole = seek(j, data, SEEK_HOLE);
    if (hole == -2) return;
    if (hole == -1) return; /* truncated between the two seeks: nothing more */
    if (hole > j->end) hole = j->end;
    if (hole > data) {
      j->extents[2 * j->count] = data;
      j->extents[2 * j->count + 1] = hole - data;
      j->count++;
      pos = hole;
    } else {
      pos = data + 1; /* a hole punched between the two seeks: step past it */
    }
  }
}

/* result 1: locked; 0: held by another open file. */
static void lock_exclusive(job *j) {
  int r;
  do {
    r = flock(j->fd, LOCK_EX | LOCK_NB);
  } while (r < 0 && errno == EINTR);
  if (r == 0) j->result = 1;
  else if (errno == EWOULDBLOCK) j->result = 0;
  else fail(j, "flock", errno);
}

static void execute(napi_env env, void *data) {
  (void)env;
  job *j = data;
  switch (j->kind) {
    case OP_SEEK_DATA:
      j->result = seek(j, j->offset, SEEK_DATA);
      break;
    case OP_SEEK_HOLE:
      j->result = seek(j, j->offset, SEEK_HOLE);
      break;
    case OP_PUNCH_HOLE:
      punch(j);
      break;
    case OP_DATA_EXTENTS:
      list_extents(j);
      break;
    case OP_FLOCK:
      lock_exclusive(j);
      break;
  }
}

/* ---------- JavaScript thread side ---------- */

static void free_job(job *j) {
  free(j->extents);
  free(j);
}

/* An Error with `errno` and `syscall`, message "<syscall>: <strerror>". */
static napi_value errno_error(napi_env env, int err, const char *syscall) {
  char msg[256];
  napi_value message, e, v;
  snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok) return NULL;
  if (napi_create_error(env, NULL, message, &e) != napi_ok) return NULL;
  if (napi_create_int32(env, err, &v) == napi_ok) napi_set_named_property(env, e, "errno", v);
  if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, e, "syscall", v);
  return e;
}

static napi_value plain_error(napi_env env, const char *text) {
  napi_value message, e;
  if (napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message) != napi_ok) return NULL;
  if (napi_create_error(env, NULL, message, &e) != napi_ok) return NULL;
  return e;
}

/* Builds the resolution value; NULL when N-API itself failed. */
static napi_value result_value(napi_env env, job *j) {
  napi_value v, obj, arr, buf, n;
  void *raw;
  size_t len;
  switch (j->kind) {
    case OP_SEEK_DATA:
    case OP_SEEK_HOLE:
      return napi_create_int64(env, j->result, &v) == napi_ok ? v : NULL;
    case OP_PUNCH_HOLE:
      return napi_get_undefined(env, &v) == napi_ok ? v : NULL;
    case OP_FLOCK:
      return napi_get_boolean(env, j->result == 1, &v) == napi_ok ? v : NULL;
    case OP_DATA_EXTENTS:
      if (napi_create_object(env, &obj) != napi_ok) return NULL;
      /* One Float64Array rather than an array of numbers: a single allocation, no per-element
       * calls. Every value is at most 2^53 - 1, so each double holds it exactly. */
      len = 2 * (size_t)j->count;
      if (napi_create_arraybuffer(env, len * sizeof(double), &raw, &buf) != napi_ok) return NULL;
      for (size_t i = 0; i < len; i++) ((double *)raw)[i] = (double)j->extents[i];
      if (napi_create_typedarray(env, napi_float64_array, len, buf, 0, &arr) != napi_ok) return NULL;
      if (napi_set_named_property(env, obj, "extents", arr) != napi_ok) return NULL;
      if (napi_create_int64(env, j->result, &n) != napi_ok) return NULL;
      if (napi_set_named_property(env, obj, "next", n) != napi_ok) return NULL;
      return obj;
  }
  return NULL;
}

static void complete(napi_env env, napi_status status, void *data) {
  job *j = data;
  napi_value v = NULL;
  int ok = 0;
  if (status != napi_ok) {
    v = plain_error(env, "island native call was cancelled before it ran");
  } else if (j->err != 0) {
    v = errno_error(env, j->err, j->syscall);
  } else {
    v = result_value(env, j);
    ok = v != NULL;
    if (!ok) {
      /* A JavaScript exception may be pending from the failed N-API call: take it. */
      bool pending = false;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending) napi_get_and_clear_last_exception(env, &v);
      else v = plain_error(env, "island native call could not build its result");
    }
  }
  if (v == NULL) napi_get_undefined(env, &v);
  if (ok) napi_resolve_deferred(env, j->deferred, v);
  else napi_reject_deferred(env, j->deferred, v);
  napi_delete_async_work(env, j->work);
  free_job(j);
}

/* ---------- argument parsing (throws at once on bad input) ---------- */

static int get_fd(napi_env env, napi_value v, int *out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "fd must be a number");
    return 0;
  }
  napi_get_value_double(env, v, &d);
  if (!(d >= 0 && d <= INT_MAX) || (double)(int)d != d) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd must be an integer in [0, 2^31 - 1]");
    return 0;
  }
  *out = (int)d;
  return 1;
}

static int get_u53(napi_env env, napi_value v, const char *name, int64_t *out) {
  napi_valuetype t;
  double d;
  char msg[128];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
    snprintf(msg, sizeof msg, "%s must be a number", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  napi_get_value_double(env, v, &d);
  if (!(d >= 0 && d <= (double)MAX_SAFE_INTEGER) || (double)(int64_t)d != d) {
    snprintf(msg, sizeof msg, "%s must be an integer in [0, 2^53 - 1]", name);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

/* Reads exactly `want` arguments into argv. */
static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < want) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "missing arguments");
    return 0;
  }
  return 1;
}

static job *new_job(napi_env env, op_kind kind) {
  job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  j->kind = kind;
  j->result = -1;
  return j;
}

/* Creates the promise and queues the job; the job belongs to `complete` from then on. */
static napi_value start(napi_env env, job *j, const char *name) {
  napi_value promise, resource;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok) {
    free_job(j);
    return NULL;
  }
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource) != napi_ok ||
      napi_create_async_work(env, NULL, resource, execute, complete, j, &j->work) != napi_ok) {
    napi_value e = plain_error(env, "island native call could not be queued");
    if (e != NULL) napi_reject_deferred(env, j->deferred, e);
    free_job(j);
    return promise;
  }
  if (napi_queue_async_work(env, j->work) != napi_ok) {
    napi_value e = plain_error(env, "island native call could not be queued");
    if (e != NULL) napi_reject_deferred(env, j->deferred, e);
    napi_delete_async_work(env, j->work);
    free_job(j);
  }
  return promise;
}

static napi_value seek_common(napi_env env, napi_callback_info info, op_kind kind, const char *name) {
  napi_value argv[2];
  int fd;
  int64_t offset;
  if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], &fd) || !get_u53(env, argv[1], "offset", &offset)) return NULL;
  job *j = new_job(env, kind);
  if (j == NULL) return NULL;
  j->fd = fd;
  j->offset = offset;
  return start(env, j, name);
}

static napi_value js_seek_data(napi_env env, napi_callback_info info) {
  return seek_common(env, info, OP_SEEK_DATA, "island.seekData");
}

static napi_value js_seek_hole(napi_env env, napi_callback_info info) {
  return seek_common(env, info, OP_SEEK_HOLE, "island.seekHole");
}

static napi_value js_punch_hole(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  int64_t offset, length;
  if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], &fd) || !get_u53(env, argv[1], "offset", &offset) ||
      !get_u53(env, argv[2], "length", &length))
    return NULL;
  if (length == 0 || offset > MAX_SAFE_INTEGER - length) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "length must be positive and offset + length at most 2^53 - 1");
    return NULL;
  }
  job *j = new_job(env, OP_PUNCH_HOLE);
  if (j == NULL) return NULL;
  j->fd = fd;
  j->offset = offset;
  j->length = length;
  return start(env, j, "island.punchHole");
}

static napi_value js_data_extents(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int fd;
  int64_t start_off, end, max;
  if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &fd) || !get_u53(env, argv[1], "start", &start_off) ||
      !get_u53(env, argv[2], "end", &end) || !get_u53(env, argv[3], "max", &max))
    return NULL;
  if (start_off > end) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "start must not be past end");
    return NULL;
  }
  if (max < 1 || max > MAX_EXTENTS_PER_CALL) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "max must be in [1, 65536]");
    return NULL;
  }
  job *j = new_job(env, OP_DATA_EXTENTS);
  if (j == NULL) return NULL;
  j->extents = malloc(2 * (size_t)max * sizeof *j->extents);
  if (j->extents == NULL) {
    free_job(j);
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  j->fd = fd;
  j->offset = start_off;
  j->end = end;
  j->max = (uint32_t)max;
  return start(env, j, "island.dataExtents");
}

static napi_value js_lock_exclusive(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  job *j = new_job(env, OP_FLOCK);
  if (j == NULL) return NULL;
  j->fd = fd;
  return start(env, j, "island.lockExclusive");
}

napi_value isl_fuse_init(napi_env env, napi_value exports); /* native/fuse/addon.c */

NAPI_MODULE_INIT() {
  napi_value abi, max;
  if (napi_create_int32(env, ISLAND_NATIVE_ABI, &abi) != napi_ok) return NULL;
  if (napi_create_int32(env, MAX_EXTENTS_PER_CALL, &max) != napi_ok) return NULL;
  napi_property_descriptor props[] = {
    { "abi", NULL, NULL, NULL, NULL, abi, napi_enumerable, NULL },
    { "maxExtentsPerCall", NULL, NULL, NULL, NULL, max, napi_enumerable, NULL },
    { "seekData", NULL, js_seek_data, NULL, NULL, NULL, napi_enumerable, NULL },
    { "seekHole", NULL, js_seek_hole, NULL, NULL, NULL, napi_enumerable, NULL },
    { "punchHole", NULL, js_punch_hole, NULL, NULL, NULL, napi_enumerable, NULL },
    { "dataExtents", NULL, js_data_extents, NULL, NULL, NULL, napi_enumerable, NULL },
    { "lockExclusive", NULL, js_lock_exclusive, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  if (!islv_addon_init(env, exports)) return NULL;
  return isl_fuse_init(env, exports);
}
