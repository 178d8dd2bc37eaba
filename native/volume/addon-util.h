/*
 * addon-util.h: what the two files of the volume bindings share (addon.c: the asynchronous
 * calls and their machinery; addon-sync.c: the calls that only read or change memory).
 */
#ifndef ISLV_ADDON_UTIL_H
#define ISLV_ADDON_UTIL_H

#include <node_api.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "volume.h"

extern const napi_type_tag ISLV_VOLUME_TAG;

/* What a JavaScript volume handle points to. */
struct vctx {
  /* Two owners: the JavaScript handle (until finalized) and the thread-safe function (until the
   * volume is freed and it is torn down); the last one frees. */
  _Atomic int owners;
  struct islv_volume *v;
  napi_threadsafe_function tsfn;
  napi_ref on_miss, on_event;
  int released; /* volumeRelease was called */
};

napi_value islv_undefined(napi_env env);
/* An Error with `errno` (positive) and `syscall` ('volume'). */
napi_value islv_errno_error(napi_env env, int err, const char *what);
napi_value islv_num(napi_env env, double x);
/* The first n arguments; false (exception pending) when fewer were passed. */
bool islv_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv);
/* An integer in [0, 2^53); false with a RangeError pending otherwise. */
bool islv_u53(napi_env env, napi_value x, const char *what, uint64_t *out);
/* The context of a volume handle; NULL with a TypeError pending when x is not one (or released). */
struct vctx *islv_handle(napi_env env, napi_value x);
/* The bytes of a Uint8Array; false with a TypeError pending otherwise. */
bool islv_buffer(napi_env env, napi_value x, uint8_t **data, size_t *len);
/* Define the synchronous calls of addon-sync.c on exports. */
bool islv_addon_init_sync(napi_env env, napi_value exports);

#define HANDLE(n)                                   \
  napi_value argv[n];                               \
  if (!islv_args(env, info, n, argv)) return NULL;       \
  struct vctx *vc = islv_handle(env, argv[0]);           \
  if (vc == NULL) return NULL;

#endif
