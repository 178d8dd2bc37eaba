/*
 * addon.c: the N-API face of the volume write path (volume.h), for src/volume/native-volume.ts.
 *
 * A volume is a JavaScript handle (an external with a type tag) made by volumeOpen(). Every
 * call that may touch the disk returns a Promise and runs on the libuv pool; calls that only
 * read or change memory (loading the recovered state, lists, stats) are synchronous. A read
 * or write that parks on a miss keeps its promise: the volume calls the JavaScript miss
 * handler (through a thread-safe function) with the clusters wanted, JavaScript fetches them
 * and calls volumeInstall() (or volumeFetchFailed()), and the waiter's wake queues the call
 * again. Failures reject with an Error carrying `errno` (positive) and `syscall` ('volume').
 *
 * Exports (handle h; numbers are JavaScript integers below 2^53):
 *   volumeOpen(cfg, onMiss(c0, c1, reading), onEvent(kind, a, msg)) -> Promise<h>
 *       cfg: { dir, clusterSize, regionSize, imageLength, baseLength, epoch, completedEpoch,
 *              intentEpoch, sideLogBudget, opLog }
 *   volumeLoadGens(h, file, page, g0, g1), volumeLoadSynced(h, file, pages),
 *   volumeLoadBits(h, which, page, payload, unsaved)          before the first I/O
 *   volumeRead(h, buf, off) -> Promise<bytes>       volumeWrite(h, buf, off) -> Promise<bytes>
 *   volumeFsync(h), volumeFallocate(h, mode, off, len), volumeTruncate(h, size) -> Promise
 *   volumeSize(h) -> number
 *   volumeSeal(h) -> Promise<{ epoch, length, clusters }>
 *   volumeSealedPages(h, epoch), volumeDirtyPages(h) -> { pages: Float64Array, data: Buffer }
 *       the sealed / current dirty set as bitmap pages: indices, and 4064 payload bytes each
 *   volumeReadSealed(h, epoch, c, buf) -> Promise<bytes, or -1 when the cluster is not local>
 *   volumeMarkUploaded(h, epoch, c) -> 0 | -errno
 *   volumeComplete(h, epoch), volumeAbandon(h, epoch) -> Promise
 *   volumePersist(h), volumeSyncPresent(h) (only when present bits wait), volumeMarkAllDirty(h) -> Promise
 *   volumeNewIntentEpoch(h) -> Promise<epoch (0: none started)>   volumeIntentRecorded(h, epoch)
 *   volumeInstall(h, c, buf) -> Promise        volumeFetchFailed(h, c0, c1, errno)
 *   volumeIsPresent(h, c), volumeIsDirty(h, c) -> boolean
 *   volumeRecordInfo(h) -> { epoch, completedEpoch, recordableIntentEpoch, imageLength,
 *                            baseLength, syncedPages: [dirty.0, dirty.1, intent, present] }
 *   volumeStats(h) -> { ...counters }
 *   volumeTakeOps(h) -> { ops: Float64Array (file, kind, a, b)*, data: Array<Buffer | null> }
 *       the logged operations (cfg.opLog; cfg.opLogData keeps the bytes of page and image writes)
 *   volumeClose(h) -> Promise<clean>           volumeRelease(h): JavaScript's reference dropped
 */
#define _GNU_SOURCE
#include "addon.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addon-util.h"

const napi_type_tag ISLV_VOLUME_TAG = { 0x69736c616e64766fULL, 0x6c756d6568616e64ULL };

#define MSG_MISS 1
#define MSG_EVENT 2
#define MSG_RETRY 3

struct job;

struct msg {
  int type;
  uint64_t a, b;
  char *text;
  struct job *job;
  int err;
};

enum op { OP_OPEN, OP_READ, OP_WRITE, OP_FSYNC, OP_FALLOCATE, OP_TRUNCATE, OP_SEAL, OP_READ_SEALED, OP_COMPLETE, OP_ABANDON, OP_PERSIST, OP_SYNC_PRESENT, OP_NEW_INTENT, OP_MARK_ALL_DIRTY, OP_INSTALL, OP_CLOSE };

struct job {
  enum op op;
  struct vctx *vc;
  struct islv_volume *v;
  napi_deferred deferred;
  napi_ref buf_ref;
  uint8_t *data;
  size_t len;
  uint64_t a, b, c;
  int mode;
  struct isl_waiter waiter;
  struct islv_config cfg;
  char *dir;
  uint64_t out[3];
  bool clean;
};

struct run {
  struct job *job;
  napi_async_work work;
  int64_t result;
};

napi_value islv_undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

napi_value islv_errno_error(napi_env env, int err, const char *what) {
  napi_value msg, error, num, sys;
  char text[256];
  snprintf(text, sizeof text, "%s: %s", what, strerror(err));
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, NULL, msg, &error);
  napi_create_int32(env, err, &num);
  napi_set_named_property(env, error, "errno", num);
  napi_create_string_utf8(env, "volume", NAPI_AUTO_LENGTH, &sys);
  napi_set_named_property(env, error, "syscall", sys);
  return error;
}

napi_value islv_num(napi_env env, double x) {
  napi_value v;
  napi_create_double(env, x, &v);
  return v;
}

static void vctx_destroy(void *ctx) {
  struct vctx *vc = ctx;
  napi_release_threadsafe_function(vc->tsfn, napi_tsfn_abort);
}

static void post(struct vctx *vc, struct msg *m) {
  if (napi_call_threadsafe_function(vc->tsfn, m, napi_tsfn_nonblocking) != napi_ok) {
    free(m->text);
    free(m);
  }
}

static void on_miss(void *ctx, uint64_t c0, uint64_t c1, bool reading) {
  struct msg *m = calloc(1, sizeof *m);
  if (m == NULL) return;
  m->type = MSG_MISS, m->a = c0, m->b = c1, m->err = reading;
  post(ctx, m);
}

static void on_event(void *ctx, int kind, uint64_t a, const char *text) {
  struct msg *m = calloc(1, sizeof *m);
  if (m == NULL) return;
  m->type = MSG_EVENT, m->a = (uint64_t)kind, m->b = a;
  m->text = text != NULL ? strdup(text) : NULL;
  post(ctx, m);
}

static void job_wake(struct isl_waiter *w, int err) {
  struct job *j = (struct job *)((char *)w - offsetof(struct job, waiter));
  struct msg *m = calloc(1, sizeof *m);
  if (m == NULL) abort(); /* a lost wake would hang the request forever */
  m->type = MSG_RETRY, m->job = j, m->err = err;
  post(j->vc, m);
}

static void execute(napi_env env, void *data);
static void complete(napi_env env, napi_status status, void *data);

static bool queue(napi_env env, struct job *j) {
  struct run *r = calloc(1, sizeof *r);
  napi_value name;
  if (r == NULL) return false;
  r->job = j;
  napi_create_string_utf8(env, "island.volume", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, execute, complete, r, &r->work) != napi_ok) {
    free(r);
    return false;
  }
  if (napi_queue_async_work(env, r->work) != napi_ok) {
    napi_delete_async_work(env, r->work);
    free(r);
    return false;
  }
  return true;
}

static void job_free(napi_env env, struct job *j) {
  if (j->buf_ref != NULL) napi_delete_reference(env, j->buf_ref);
  if (j->v != NULL && j->op != OP_OPEN) islv_unref(j->v);
  free(j->dir);
  free(j);
}

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  struct vctx *vc = context;
  struct msg *m = data;
  if (env == NULL) { /* the function is being torn down */
    free(m->text);
    free(m);
    return;
  }
  if (m->type == MSG_RETRY) {
    struct job *j = m->job;
    if (m->err != 0) {
      napi_reject_deferred(env, j->deferred, islv_errno_error(env, -m->err, "volume I/O"));
      job_free(env, j);
    } else if (!queue(env, j)) {
      napi_reject_deferred(env, j->deferred, islv_errno_error(env, ENOMEM, "volume I/O"));
      job_free(env, j);
    }
  } else {
    napi_value fn, argv[3], global;
    napi_get_global(env, &global);
    int argc = 2;
    if (m->type == MSG_MISS) {
      napi_get_reference_value(env, vc->on_miss, &fn);
      argv[0] = islv_num(env, (double)m->a), argv[1] = islv_num(env, (double)m->b);
      napi_get_boolean(env, m->err != 0, &argv[2]);
      argc = 3;
    } else {
      napi_get_reference_value(env, vc->on_event, &fn);
      argv[0] = islv_num(env, (double)m->a), argv[1] = islv_num(env, (double)m->b);
      napi_create_string_utf8(env, m->text != NULL ? m->text : "", NAPI_AUTO_LENGTH, &argv[2]);
      argc = 3;
    }
    napi_value result;
    if (napi_call_function(env, global, fn, (size_t)argc, argv, &result) != napi_ok) {
      bool pending;
      napi_is_exception_pending(env, &pending);
      if (pending) {
        napi_value ex;
        napi_get_and_clear_last_exception(env, &ex);
        napi_fatal_exception(env, ex);
      }
    }
  }
  free(m->text);
  free(m);
}

static void vctx_put(napi_env env, struct vctx *vc) {
  if (atomic_fetch_sub(&vc->owners, 1) != 1) return;
  napi_delete_reference(env, vc->on_miss);
  napi_delete_reference(env, vc->on_event);
  free(vc);
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
  vctx_put(env, data);
}

static void execute(napi_env env, void *data) {
  struct run *r = data;
  struct job *j = r->job;
  struct islv_volume *v = j->v;
  int64_t res = 0;
  switch (j->op) {
  case OP_OPEN: res = islv_open(&j->cfg, &j->v); break;
  case OP_READ: res = islv_read(v, j->data, j->len, j->a, &j->waiter); break;
  case OP_WRITE: res = islv_write(v, j->data, j->len, j->a, &j->waiter); break;
  case OP_FSYNC: res = islv_fsync(v); break;
  case OP_FALLOCATE: res = islv_fallocate(v, j->mode, j->a, j->b, &j->waiter); break;
  case OP_TRUNCATE: res = islv_truncate(v, j->a); break;
  case OP_SEAL: res = islv_seal(v, &j->out[0], &j->out[1], &j->out[2]); break;
  case OP_READ_SEALED: {
    uint64_t len = 0;
    res = islv_read_sealed(v, j->a, j->b, j->data, &len);
    if (res == 0) res = (int64_t)len;
    else if (res == ISLV_MISSING) res = -1000;
    break;
  }
  case OP_COMPLETE: res = islv_complete(v, j->a); break;
  case OP_ABANDON: res = islv_abandon(v, j->a, "abandoned by the caller"); break;
  case OP_PERSIST: res = islv_persist(v); break;
  case OP_SYNC_PRESENT: res = islv_flush_present(v); break;
  case OP_NEW_INTENT: res = islv_new_intent_epoch(v, &j->out[0]); break;
  case OP_MARK_ALL_DIRTY: res = islv_mark_all_dirty(v); break;
  case OP_INSTALL: res = islv_install(v, j->a, j->data, j->len); break;
  case OP_CLOSE: res = islv_close(v, &j->clean); break;
  }
  r->result = res;
}

static void volume_finalize(napi_env env, void *data, void *hint) {
  struct vctx *vc = data;
  if (!vc->released) {
    vc->released = 1;
    islv_unref(vc->v);
  }
  vctx_put(env, vc);
}

static void complete(napi_env env, napi_status status, void *data) {
  struct run *r = data;
  struct job *j = r->job;
  int64_t res = r->result;
  napi_delete_async_work(env, r->work);
  free(r);
  if (res == ISL_PARKED) return; /* the waiter's wake queues it again */
  napi_value value = islv_undefined(env);
  if (status != napi_ok) res = -EIO;
  if (j->op == OP_READ_SEALED && res == -1000) {
    value = islv_num(env, -1);
  } else if (res < 0) {
    if (j->op == OP_OPEN) {
      /* No handle will own the context: islv_open released the function (vctx_destroy). */
      vctx_put(env, j->vc);
      j->vc = NULL;
    }
    napi_reject_deferred(env, j->deferred, islv_errno_error(env, (int)-res, "volume"));
    job_free(env, j);
    return;
  } else {
    switch (j->op) {
    case OP_OPEN: {
      napi_value ext;
      napi_create_external(env, j->vc, volume_finalize, NULL, &ext);
      napi_type_tag_object(env, ext, &ISLV_VOLUME_TAG);
      j->vc->v = j->v;
      value = ext;
      break;
    }
    case OP_READ:
    case OP_WRITE:
    case OP_READ_SEALED: value = islv_num(env, (double)res); break;
    case OP_NEW_INTENT: value = islv_num(env, (double)j->out[0]); break;
    case OP_CLOSE: napi_get_boolean(env, j->clean, &value); break;
    case OP_SEAL:
      napi_create_object(env, &value);
      napi_set_named_property(env, value, "epoch", islv_num(env, (double)j->out[0]));
      napi_set_named_property(env, value, "length", islv_num(env, (double)j->out[1]));
      napi_set_named_property(env, value, "clusters", islv_num(env, (double)j->out[2]));
      break;
    default: break;
    }
  }
  napi_resolve_deferred(env, j->deferred, value);
  if (j->op == OP_OPEN) j->v = NULL; /* the handle owns the reference now */
  job_free(env, j);
}

/* ---------- argument helpers ---------- */

bool islv_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return false;
  if (argc < n) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "missing arguments");
    return false;
  }
  return true;
}

bool islv_u53(napi_env env, napi_value x, const char *what, uint64_t *out) {
  double d;
  if (napi_get_value_double(env, x, &d) != napi_ok || d != d || d < 0 || d > 9007199254740991.0 || d != (double)(uint64_t)d) {
    char text[128];
    snprintf(text, sizeof text, "%s must be an integer in [0, 2^53)", what);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", text);
    return false;
  }
  *out = (uint64_t)d;
  return true;
}

struct vctx *islv_handle(napi_env env, napi_value h) {
  bool ok = false;
  void *vc = NULL;
  if (napi_check_object_type_tag(env, h, &ISLV_VOLUME_TAG, &ok) != napi_ok || !ok || napi_get_value_external(env, h, &vc) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "not a volume handle");
    return NULL;
  }
  struct vctx *c = vc;
  if (c->released) {
    napi_throw_error(env, "ERR_INVALID_STATE", "the volume handle was released");
    return NULL;
  }
  return c;
}

bool islv_buffer(napi_env env, napi_value x, uint8_t **data, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, x, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t n, off;
    void *d;
    napi_value ab;
    napi_get_typedarray_info(env, x, &type, &n, &d, &ab, &off);
    if (type == napi_uint8_array) {
      *data = d;
      *len = n;
      return true;
    }
  }
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected a Uint8Array");
  return false;
}

static struct job *new_job(napi_env env, enum op op, struct vctx *vc, napi_value *promise) {
  struct job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  j->op = op;
  j->vc = vc;
  j->waiter.wake = job_wake;
  if (napi_create_promise(env, &j->deferred, promise) != napi_ok) {
    free(j);
    return NULL;
  }
  if (vc != NULL && vc->v != NULL) {
    j->v = vc->v;
    islv_ref(j->v);
  }
  return j;
}

static napi_value start(napi_env env, struct job *j, napi_value promise) {
  if (!queue(env, j)) {
    napi_reject_deferred(env, j->deferred, islv_errno_error(env, ENOMEM, "volume"));
    job_free(env, j);
  }
  return promise;
}

static bool keep_buffer(napi_env env, struct job *j, napi_value buf) {
  if (!islv_buffer(env, buf, &j->data, &j->len)) return false;
  return napi_create_reference(env, buf, 1, &j->buf_ref) == napi_ok;
}

/* ---------- exports ---------- */

static bool prop_u53(napi_env env, napi_value obj, const char *name, uint64_t *out) {
  napi_value x;
  if (napi_get_named_property(env, obj, name, &x) != napi_ok) return false;
  return islv_u53(env, x, name, out);
}

static napi_value js_open(napi_env env, napi_callback_info info) {
  napi_value argv[3], promise, dirv, name, oplog;
  if (!islv_args(env, info, 3, argv)) return NULL;
  uint64_t cs, rs, il, bl, ep, ce, ie, budget;
  if (!prop_u53(env, argv[0], "clusterSize", &cs) || !prop_u53(env, argv[0], "regionSize", &rs) || !prop_u53(env, argv[0], "imageLength", &il) ||
      !prop_u53(env, argv[0], "baseLength", &bl) || !prop_u53(env, argv[0], "epoch", &ep) || !prop_u53(env, argv[0], "completedEpoch", &ce) ||
      !prop_u53(env, argv[0], "intentEpoch", &ie) || !prop_u53(env, argv[0], "sideLogBudget", &budget))
    return NULL;
  if (cs > UINT32_MAX || rs > UINT32_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "cluster and region sizes must fit 32 bits");
    return NULL;
  }
  size_t dlen;
  if (napi_get_named_property(env, argv[0], "dir", &dirv) != napi_ok || napi_get_value_string_utf8(env, dirv, NULL, 0, &dlen) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "dir must be a string");
    return NULL;
  }
  bool log = false, log_data = false;
  if (napi_get_named_property(env, argv[0], "opLog", &oplog) == napi_ok) napi_get_value_bool(env, oplog, &log);
  if (napi_get_named_property(env, argv[0], "opLogData", &oplog) == napi_ok) napi_get_value_bool(env, oplog, &log_data);
  struct vctx *vc = calloc(1, sizeof *vc);
  if (vc == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  atomic_store(&vc->owners, 2);
  if (napi_create_reference(env, argv[1], 1, &vc->on_miss) != napi_ok || napi_create_reference(env, argv[2], 1, &vc->on_event) != napi_ok) {
    free(vc);
    return NULL;
  }
  napi_create_string_utf8(env, "island.volume.events", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, vc, tsfn_finalize, vc, call_js, &vc->tsfn) != napi_ok) {
    napi_delete_reference(env, vc->on_miss);
    napi_delete_reference(env, vc->on_event);
    free(vc);
    return NULL;
  }
  napi_unref_threadsafe_function(env, vc->tsfn);
  struct job *j = new_job(env, OP_OPEN, vc, &promise);
  if (j == NULL) {
    napi_release_threadsafe_function(vc->tsfn, napi_tsfn_abort);
    return NULL;
  }
  j->dir = malloc(dlen + 1);
  if (j->dir != NULL) napi_get_value_string_utf8(env, dirv, j->dir, dlen + 1, &dlen);
  j->cfg = (struct islv_config){
    .dir = j->dir != NULL ? j->dir : "",
    .cluster_size = (uint32_t)cs,
    .region_size = (uint32_t)rs,
    .image_length = il,
    .base_length = bl,
    .epoch = ep,
    .completed_epoch = ce,
    .intent_epoch = ie,
    .side_log_budget = budget,
    .op_log = log || log_data,
    .op_log_data = log_data,
    .miss = on_miss,
    .event = on_event,
    .destroy = vctx_destroy,
    .ctx = vc,
  };
  return start(env, j, promise);
}

static napi_value simple(napi_env env, napi_callback_info info, enum op op) {
  HANDLE(1);
  napi_value promise;
  struct job *j = new_job(env, op, vc, &promise);
  return j == NULL ? NULL : start(env, j, promise);
}

static napi_value js_fsync(napi_env env, napi_callback_info info) { return simple(env, info, OP_FSYNC); }
static napi_value js_seal(napi_env env, napi_callback_info info) { return simple(env, info, OP_SEAL); }
static napi_value js_persist(napi_env env, napi_callback_info info) { return simple(env, info, OP_PERSIST); }
static napi_value js_sync_present(napi_env env, napi_callback_info info) { return simple(env, info, OP_SYNC_PRESENT); }
static napi_value js_new_intent(napi_env env, napi_callback_info info) { return simple(env, info, OP_NEW_INTENT); }
static napi_value js_mark_all_dirty(napi_env env, napi_callback_info info) { return simple(env, info, OP_MARK_ALL_DIRTY); }
static napi_value js_close(napi_env env, napi_callback_info info) { return simple(env, info, OP_CLOSE); }

static napi_value io(napi_env env, napi_callback_info info, enum op op) {
  HANDLE(3);
  napi_value promise;
  uint64_t off;
  if (!islv_u53(env, argv[2], "offset", &off)) return NULL;
  struct job *j = new_job(env, op, vc, &promise);
  if (j == NULL) return NULL;
  j->a = off;
  if (!keep_buffer(env, j, argv[1])) {
    napi_resolve_deferred(env, j->deferred, islv_undefined(env));
    job_free(env, j);
    return NULL;
  }
  return start(env, j, promise);
}

static napi_value js_read(napi_env env, napi_callback_info info) { return io(env, info, OP_READ); }
static napi_value js_write(napi_env env, napi_callback_info info) { return io(env, info, OP_WRITE); }

static napi_value js_install(napi_env env, napi_callback_info info) {
  HANDLE(3);
  napi_value promise;
  uint64_t c;
  if (!islv_u53(env, argv[1], "cluster", &c)) return NULL;
  struct job *j = new_job(env, OP_INSTALL, vc, &promise);
  if (j == NULL) return NULL;
  j->a = c;
  if (!keep_buffer(env, j, argv[2])) {
    napi_resolve_deferred(env, j->deferred, islv_undefined(env));
    job_free(env, j);
    return NULL;
  }
  return start(env, j, promise);
}

static napi_value js_read_sealed(napi_env env, napi_callback_info info) {
  HANDLE(4);
  napi_value promise;
  uint64_t epoch, c;
  if (!islv_u53(env, argv[1], "epoch", &epoch) || !islv_u53(env, argv[2], "cluster", &c)) return NULL;
  struct job *j = new_job(env, OP_READ_SEALED, vc, &promise);
  if (j == NULL) return NULL;
  j->a = epoch, j->b = c;
  if (!keep_buffer(env, j, argv[3])) {
    napi_resolve_deferred(env, j->deferred, islv_undefined(env));
    job_free(env, j);
    return NULL;
  }
  return start(env, j, promise);
}

static napi_value two(napi_env env, napi_callback_info info, enum op op, size_t n) {
  napi_value argv[4];
  if (!islv_args(env, info, n, argv)) return NULL;
  struct vctx *vc = islv_handle(env, argv[0]);
  if (vc == NULL) return NULL;
  napi_value promise;
  uint64_t a = 0, b = 0, mode = 0;
  if (n >= 2 && !islv_u53(env, argv[1], "argument", op == OP_FALLOCATE ? &mode : &a)) return NULL;
  if (n >= 3 && !islv_u53(env, argv[2], "offset", op == OP_FALLOCATE ? &a : &b)) return NULL;
  if (n >= 4 && !islv_u53(env, argv[3], "length", &b)) return NULL;
  struct job *j = new_job(env, op, vc, &promise);
  if (j == NULL) return NULL;
  j->a = a, j->b = b, j->mode = (int)mode;
  return start(env, j, promise);
}

static napi_value js_truncate(napi_env env, napi_callback_info info) { return two(env, info, OP_TRUNCATE, 2); }
static napi_value js_complete(napi_env env, napi_callback_info info) { return two(env, info, OP_COMPLETE, 2); }
static napi_value js_abandon(napi_env env, napi_callback_info info) { return two(env, info, OP_ABANDON, 2); }
static napi_value js_fallocate(napi_env env, napi_callback_info info) { return two(env, info, OP_FALLOCATE, 4); }

int isl_volume_unwrap(napi_env env, napi_value h, const struct isl_file_ops **ops, void **file) {
  bool ok = false;
  void *vc = NULL;
  if (napi_check_object_type_tag(env, h, &ISLV_VOLUME_TAG, &ok) != napi_ok || !ok) return 0;
  if (napi_get_value_external(env, h, &vc) != napi_ok || vc == NULL || ((struct vctx *)vc)->released) return 0;
  struct islv_volume *v = ((struct vctx *)vc)->v;
  islv_ref(v);
  *ops = &islv_file_ops;
  *file = v;
  return 1;
}

int islv_addon_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
#define F(name, fn) { name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL }
    F("volumeOpen", js_open), F("volumeRead", js_read), F("volumeWrite", js_write), F("volumeFsync", js_fsync),
    F("volumeFallocate", js_fallocate), F("volumeTruncate", js_truncate), F("volumeSeal", js_seal),
    F("volumeReadSealed", js_read_sealed), F("volumeComplete", js_complete), F("volumeAbandon", js_abandon),
    F("volumePersist", js_persist), F("volumeSyncPresent", js_sync_present), F("volumeNewIntentEpoch", js_new_intent),
    F("volumeMarkAllDirty", js_mark_all_dirty), F("volumeInstall", js_install), F("volumeClose", js_close),
#undef F
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok && islv_addon_init_sync(env, exports);
}
