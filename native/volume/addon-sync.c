/*
 * addon-sync.c: the synchronous calls of the volume bindings (addon.c lists every export):
 * loading the recovered state before the first I/O, lists, lookups, counters, the operation
 * log and dropping the handle. None of them waits for the disk.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addon-util.h"

static napi_value js_load_gens(napi_env env, napi_callback_info info) {
  HANDLE(5);
  uint64_t file, page, g0, g1;
  if (!islv_u53(env, argv[1], "file", &file) || !islv_u53(env, argv[2], "page", &page) || !islv_u53(env, argv[3], "g0", &g0) || !islv_u53(env, argv[4], "g1", &g1)) return NULL;
  int err = islv_load_gens(vc->v, (int)file, page, g0, g1);
  if (err != 0) napi_throw_error(env, "ERR_VOLUME", strerror(-err));
  return islv_undefined(env);
}

static napi_value js_load_synced(napi_env env, napi_callback_info info) {
  HANDLE(3);
  uint64_t file, pages;
  if (!islv_u53(env, argv[1], "file", &file) || !islv_u53(env, argv[2], "pages", &pages)) return NULL;
  int err = islv_load_synced(vc->v, (int)file, pages);
  if (err != 0) napi_throw_error(env, "ERR_VOLUME", strerror(-err));
  return islv_undefined(env);
}

static napi_value js_load_bits(napi_env env, napi_callback_info info) {
  HANDLE(5);
  uint64_t which, page;
  uint8_t *data;
  size_t len;
  bool unsaved = false;
  if (!islv_u53(env, argv[1], "which", &which) || !islv_u53(env, argv[2], "page", &page) || !islv_buffer(env, argv[3], &data, &len)) return NULL;
  napi_get_value_bool(env, argv[4], &unsaved);
  if (len != 4064) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "a page payload is 4064 bytes");
    return NULL;
  }
  int err = islv_load_bits(vc->v, (int)which, page, data, unsaved);
  if (err != 0) napi_throw_error(env, "ERR_VOLUME", strerror(-err));
  return islv_undefined(env);
}

static napi_value js_size(napi_env env, napi_callback_info info) {
  HANDLE(1);
  return islv_num(env, (double)islv_size(vc->v));
}

static napi_value list_value(napi_env env, uint64_t *a, uint64_t n) {
  napi_value ab, arr;
  void *data;
  napi_create_arraybuffer(env, n * sizeof(double), &data, &ab);
  for (uint64_t i = 0; i < n; i++) ((double *)data)[i] = (double)a[i];
  napi_create_typedarray(env, napi_float64_array, n, ab, 0, &arr);
  free(a);
  return arr;
}

static void free_payloads(napi_env env, void *data, void *hint) {
  free(data);
}

/* { pages: Float64Array of page indices, data: Buffer of pages.length * 4064 payload bytes } */
static napi_value pages_value(napi_env env, uint64_t *pages, uint8_t *payloads, uint64_t n) {
  napi_value o, data;
  napi_create_object(env, &o);
  napi_set_named_property(env, o, "pages", list_value(env, pages, n));
  if (n == 0 || napi_create_external_buffer(env, n * 4064, payloads, free_payloads, NULL, &data) != napi_ok) {
    free(payloads);
    napi_create_buffer(env, 0, NULL, &data);
  }
  napi_set_named_property(env, o, "data", data);
  return o;
}

static napi_value js_sealed_pages(napi_env env, napi_callback_info info) {
  HANDLE(2);
  uint64_t epoch, *pages = NULL, n = 0;
  uint8_t *payloads = NULL;
  if (!islv_u53(env, argv[1], "epoch", &epoch)) return NULL;
  int err = islv_sealed_pages(vc->v, epoch, &pages, &payloads, &n);
  if (err != 0) {
    napi_throw(env, islv_errno_error(env, -err, "sealed clusters"));
    return NULL;
  }
  return pages_value(env, pages, payloads, n);
}

static napi_value js_dirty_pages(napi_env env, napi_callback_info info) {
  HANDLE(1);
  uint64_t *pages = NULL, n = 0;
  uint8_t *payloads = NULL;
  int err = islv_dirty_pages(vc->v, &pages, &payloads, &n);
  if (err != 0) {
    napi_throw(env, islv_errno_error(env, -err, "dirty clusters"));
    return NULL;
  }
  return pages_value(env, pages, payloads, n);
}

static napi_value js_mark_uploaded(napi_env env, napi_callback_info info) {
  HANDLE(3);
  uint64_t epoch, c;
  if (!islv_u53(env, argv[1], "epoch", &epoch) || !islv_u53(env, argv[2], "cluster", &c)) return NULL;
  return islv_num(env, islv_mark_uploaded(vc->v, epoch, c));
}

static napi_value js_intent_recorded(napi_env env, napi_callback_info info) {
  HANDLE(2);
  uint64_t epoch;
  if (!islv_u53(env, argv[1], "epoch", &epoch)) return NULL;
  islv_intent_recorded(vc->v, epoch);
  return islv_undefined(env);
}

static napi_value js_fetch_failed(napi_env env, napi_callback_info info) {
  HANDLE(4);
  uint64_t c0, c1, err;
  if (!islv_u53(env, argv[1], "c0", &c0) || !islv_u53(env, argv[2], "c1", &c1) || !islv_u53(env, argv[3], "errno", &err)) return NULL;
  islv_fetch_failed(vc->v, c0, c1, err > 0 && err < 4096 ? -(int)err : -EIO);
  return islv_undefined(env);
}

static napi_value js_is_present(napi_env env, napi_callback_info info) {
  HANDLE(2);
  uint64_t c;
  napi_value b;
  if (!islv_u53(env, argv[1], "cluster", &c)) return NULL;
  napi_get_boolean(env, islv_is_present(vc->v, c), &b);
  return b;
}

static napi_value js_is_dirty(napi_env env, napi_callback_info info) {
  HANDLE(2);
  uint64_t c;
  napi_value b;
  if (!islv_u53(env, argv[1], "cluster", &c)) return NULL;
  napi_get_boolean(env, islv_is_dirty(vc->v, c), &b);
  return b;
}

static napi_value js_record_info(napi_env env, napi_callback_info info) {
  HANDLE(1);
  struct islv_record_info r;
  islv_record_info(vc->v, &r);
  napi_value o, pages;
  napi_create_object(env, &o);
  napi_set_named_property(env, o, "epoch", islv_num(env, (double)r.epoch));
  napi_set_named_property(env, o, "completedEpoch", islv_num(env, (double)r.completed_epoch));
  napi_set_named_property(env, o, "recordableIntentEpoch", islv_num(env, (double)r.recordable_intent_epoch));
  napi_set_named_property(env, o, "imageLength", islv_num(env, (double)r.image_length));
  napi_set_named_property(env, o, "baseLength", islv_num(env, (double)r.base_length));
  napi_create_array_with_length(env, 4, &pages);
  for (uint32_t i = 0; i < 4; i++) napi_set_element(env, pages, i, islv_num(env, (double)r.synced_pages[i]));
  napi_set_named_property(env, o, "syncedPages", pages);
  return o;
}

static napi_value js_stats(napi_env env, napi_callback_info info) {
  HANDLE(1);
  struct islv_stats s;
  islv_get_stats(vc->v, &s);
  napi_value o;
  napi_create_object(env, &o);
#define P(name, f) napi_set_named_property(env, o, name, islv_num(env, (double)s.f))
  P("reads", reads), P("writes", writes), P("bytesRead", bytes_read), P("bytesWritten", bytes_written);
  P("zeroClusters", zero_clusters), P("fsyncs", fsyncs), P("imageSyncs", image_syncs), P("discards", discards);
  P("seals", seals), P("sealsCompleted", seals_completed), P("sealsAbandoned", seals_abandoned);
  P("sideLogCopies", side_log_copies), P("sideLogBytes", side_log_bytes), P("sealedReadRetries", read_retries);
  P("dirtyClusters", dirty_clusters), P("sealedClusters", sealed_clusters), P("presentClusters", present_clusters);
  P("parked", parked), P("installs", installs), P("fetchedClusters", fetched_clusters);
  P("dirtySyncs", dirty_syncs), P("intentSyncs", intent_syncs), P("intentEpochs", intent_epochs), P("presentSyncs", present_syncs);
  P("dirtyPageWrites", dirty_page_writes), P("intentPageWrites", intent_page_writes), P("presentPageWrites", present_page_writes);
#undef P
  return o;
}

static void free_data(napi_env env, void *data, void *hint) {
  free(data);
}

static napi_value js_take_ops(napi_env env, napi_callback_info info) {
  HANDLE(1);
  uint64_t n = 0;
  struct islv_op *ops = islv_take_ops(vc->v, &n);
  uint64_t *flat = malloc((n ? n : 1) * 4 * sizeof *flat);
  napi_value result, data, nul;
  if (flat == NULL) {
    for (uint64_t i = 0; i < n; i++) free(ops[i].data);
    free(ops);
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  napi_create_object(env, &result);
  napi_create_array_with_length(env, n, &data);
  napi_get_null(env, &nul);
  for (uint64_t i = 0; i < n; i++) {
    flat[4 * i] = ops[i].file, flat[4 * i + 1] = ops[i].kind, flat[4 * i + 2] = ops[i].a, flat[4 * i + 3] = ops[i].b;
    napi_value b = nul;
    if (ops[i].data != NULL && napi_create_external_buffer(env, ops[i].data_len, ops[i].data, free_data, NULL, &b) != napi_ok) {
      free(ops[i].data);
      b = nul;
    }
    napi_set_element(env, data, (uint32_t)i, b);
  }
  free(ops);
  napi_set_named_property(env, result, "ops", list_value(env, flat, 4 * n));
  napi_set_named_property(env, result, "data", data);
  return result;
}

static napi_value js_release(napi_env env, napi_callback_info info) {
  HANDLE(1);
  vc->released = 1;
  islv_unref(vc->v);
  return islv_undefined(env);
}

bool islv_addon_init_sync(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
#define F(name, fn) { name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL }
    F("volumeLoadGens", js_load_gens),
    F("volumeLoadSynced", js_load_synced),
    F("volumeLoadBits", js_load_bits),
    F("volumeSize", js_size),
    F("volumeSealedPages", js_sealed_pages),
    F("volumeDirtyPages", js_dirty_pages),
    F("volumeMarkUploaded", js_mark_uploaded),
    F("volumeIntentRecorded", js_intent_recorded),
    F("volumeFetchFailed", js_fetch_failed),
    F("volumeIsPresent", js_is_present),
    F("volumeIsDirty", js_is_dirty),
    F("volumeRecordInfo", js_record_info),
    F("volumeStats", js_stats),
    F("volumeTakeOps", js_take_ops),
    F("volumeRelease", js_release),
#undef F
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
