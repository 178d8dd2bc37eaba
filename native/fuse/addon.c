/*
 * addon.c: the native FUSE server's functions in island's addon (src/fuse/native-server.ts
 * is their only caller). A mount is an external value; every function validates its
 * arguments and throws a TypeError or an Error naming the errno, never crashes.
 *
 *   fuseMount({mountpoint, spaceDir, threads}, callback) -> mount
 *       callback(kind, ...) on the JavaScript thread: see jsfile.h (JS_READ .. JS_FREE)
 *   fuseUnmount(mount)                      detach the mount, join the threads
 *   fuseAddFile(mount, name, readOnly, uid, gid, mode, jsId, size, volume?)
 *       volume: a native volume handle (isl_volume_unwrap) or undefined: answered by JS as jsId
 *   fuseRemoveFile(mount, name) -> boolean   fuseSetReadOnly(mount, name, readOnly)
 *   fuseSetSize(mount, name, size)           fuseOpenCount(mount, name) -> number
 *   fuseComplete(mount, callId, result, size) -> boolean   fuseSynced(mount)
 *   fuseStats(mount) -> {kernelMinor, threads, openFlags, parked, malformed, unknownOps}
 *   fuseTestRequest(mount, request) -> reply | null   (tests: raw bytes through the handlers)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "jsfile.h"

struct addon_mount {
  struct fs_server *s;
  struct js_ctx js;
  int mounted;
};

/* The other half of the addon (native/volume/) defines the real one; until it is linked in, no handle is a volume. */
__attribute__((weak)) int isl_volume_unwrap(napi_env env, napi_value handle, const struct isl_file_ops **ops, void **file) {
  (void)env;
  (void)handle;
  (void)ops;
  (void)file;
  return 0;
}

static napi_value throw_errno(napi_env env, int err, const char *what) {
  char msg[320];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value m, e, code;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, NULL, m, &e);
  napi_create_int32(env, -err, &code);
  napi_set_named_property(env, e, "errno", code);
  napi_throw(env, e);
  return NULL;
}

static napi_value undef(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

static int args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < want) {
    napi_throw_type_error(env, NULL, "too few arguments");
    return 0;
  }
  return 1;
}

static struct addon_mount *mount_of(napi_env env, napi_value v) {
  napi_valuetype t;
  void *p = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_get_value_external(env, v, &p) != napi_ok || p == NULL) {
    napi_throw_type_error(env, NULL, "not a FUSE mount");
    return NULL;
  }
  return p;
}

static int get_string(napi_env env, napi_value v, char *buf, size_t size, const char *what) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok || len + 1 >= size) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a string shorter than %zu bytes", what, size - 1);
    napi_throw_type_error(env, NULL, msg);
    return 0;
  }
  return 1;
}

static int get_u32(napi_env env, napi_value v, uint32_t *out, const char *what) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be an integer from 0 to 2^32-1", what);
    napi_throw_type_error(env, NULL, msg);
    return 0;
  }
  *out = (uint32_t)d;
  return 1;
}

static int get_i64(napi_env env, napi_value v, int64_t *out, const char *what) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= -9007199254740991.0 && d <= 9007199254740991.0) || d != (double)(int64_t)d) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a safe integer", what);
    napi_throw_type_error(env, NULL, msg);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

static int get_bool(napi_env env, napi_value v) {
  bool b = false;
  napi_get_value_bool(env, v, &b);
  return b;
}

static void host_sync(struct fs_server *s) {
  js_ctx_post(&((struct addon_mount *)s->host.data)->js, JS_SYNC, NULL, NULL);
}

static void host_log(struct fs_server *s, const char *level, const char *msg) {
  js_ctx_post(&((struct addon_mount *)s->host.data)->js, JS_LOG, level, msg);
}

static napi_value js_mount(napi_env env, napi_callback_info info) {
  napi_value argv[2], v;
  if (!args(env, info, 2, argv)) return NULL;
  char mountpoint[PATH_MAX], space[PATH_MAX];
  uint32_t threads = 4;
  if (napi_get_named_property(env, argv[0], "mountpoint", &v) != napi_ok || !get_string(env, v, mountpoint, sizeof mountpoint, "mountpoint")) return NULL;
  if (napi_get_named_property(env, argv[0], "spaceDir", &v) != napi_ok || !get_string(env, v, space, sizeof space, "spaceDir")) return NULL;
  if (napi_get_named_property(env, argv[0], "threads", &v) != napi_ok || !get_u32(env, v, &threads, "threads")) return NULL;
  if (threads < 1 || threads > 64) {
    napi_throw_range_error(env, NULL, "threads must be from 1 to 64");
    return NULL;
  }
  napi_valuetype t;
  if (napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, NULL, "callback must be a function");
    return NULL;
  }
  struct addon_mount *m = calloc(1, sizeof *m);
  if (m == NULL) return throw_errno(env, ENOMEM, "fuseMount");
  if (js_ctx_init(&m->js, env, argv[1]) != 0) {
    free(m);
    return throw_errno(env, ENOMEM, "fuseMount: thread-safe function");
  }
  struct fs_host host = { .sync = host_sync, .log = host_log, .data = m };
  m->s = fs_create(mountpoint, space, (int)threads, &host);
  if (m->s == NULL) return throw_errno(env, ENOMEM, "fuseMount");
  char err[512];
  if (fs_mount(m->s, err, sizeof err) != 0) {
    js_ctx_close(&m->js);
    napi_throw_error(env, NULL, err);
    return NULL; /* m is kept: the thread-safe function may still be referenced */
  }
  m->mounted = 1;
  napi_value out;
  /* Never freed: parked requests and late JavaScript answers may refer to it after unmount. */
  napi_create_external(env, m, NULL, NULL, &out);
  return out;
}

static napi_value js_unmount(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  struct addon_mount *m = mount_of(env, argv[0]);
  if (m == NULL) return NULL;
  if (m->mounted) {
    m->mounted = 0;
    fs_stop(m->s);
    js_ctx_close(&m->js);
    fs_handles_release(m->s);
    fs_release_all(m->s);
  }
  return undef(env);
}

static napi_value js_add(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  size_t argc = 9;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 8) {
    napi_throw_type_error(env, NULL, "too few arguments");
    return NULL;
  }
  struct addon_mount *m = mount_of(env, argv[0]);
  if (m == NULL) return NULL;
  char name[FS_NAME_MAX + 2];
  uint32_t uid, gid, mode, id;
  int64_t size;
  if (!get_string(env, argv[1], name, sizeof name, "name") || !get_u32(env, argv[3], &uid, "uid") || !get_u32(env, argv[4], &gid, "gid") ||
      !get_u32(env, argv[5], &mode, "mode") || !get_u32(env, argv[6], &id, "jsId") || !get_i64(env, argv[7], &size, "size"))
    return NULL;
  if (!fs_valid_name(name)) {
    napi_throw_type_error(env, NULL, "name must be NAME.qcow2 without a slash");
    return NULL;
  }
  if (size < 0 || mode > 07777) {
    napi_throw_range_error(env, NULL, "size must be >= 0 and mode permission bits");
    return NULL;
  }
  if (!m->mounted) return throw_errno(env, ENOTCONN, "fuseAddFile");
  const struct isl_file_ops *ops = NULL;
  void *file = NULL;
  const struct fs_late_ops *late = NULL;
  napi_valuetype t = napi_undefined;
  if (argc > 8) napi_typeof(env, argv[8], &t);
  if (t != napi_undefined && t != napi_null) {
    if (!isl_volume_unwrap(env, argv[8], &ops, &file)) {
      napi_throw_type_error(env, NULL, "volume is not a native volume handle");
      return NULL;
    }
  } else {
    file = jsfile_create(&m->js, id, (uint64_t)size);
    if (file == NULL) return throw_errno(env, ENOMEM, "fuseAddFile");
    ops = &jsfile_ops;
    late = &jsfile_late_ops;
  }
  int e = fs_add(m->s, name, get_bool(env, argv[2]), uid, gid, mode, ops, file, late);
  if (e < 0) {
    ops->unref(file);
    return throw_errno(env, -e, name);
  }
  return undef(env);
}

static napi_value js_remove(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  if (!args(env, info, 2, argv)) return NULL;
  struct addon_mount *m = mount_of(env, argv[0]);
  char name[FS_NAME_MAX + 2];
  if (m == NULL || !get_string(env, argv[1], name, sizeof name, "name")) return NULL;
  napi_get_boolean(env, fs_remove(m->s, name) == 0, &out);
  return out;
}

static napi_value js_set_readonly(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args(env, info, 3, argv)) return NULL;
  struct addon_mount *m = mount_of(env, argv[0]);
  char name[FS_NAME_MAX + 2];
  if (m == NULL || !get_string(env, argv[1], name, sizeof name, "name")) return NULL;
  fs_set_readonly(m->s, name, get_bool(env, argv[2]));
  return undef(env);
}

static napi_value js_set_size(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args(env, info, 3, argv)) return NULL;
  struct addon_mount *m = mount_of(env, argv[0]);
  char name[FS_NAME_MAX + 2];
  int64_t size;
  if (m == NULL || !get_string(env, argv[1], name, sizeof name, "name") || !get_i64(env, argv[2], &size, "size")) return NULL;
  if (size < 0) {
    napi_throw_range_error(env, NULL, "size must be >= 0");
    return NULL;
  }
  struct fs_node *n = fs_node_by_name(m->s, name, strlen(name));
  if (n != NULL) {
    if (n->ops == &jsfile_ops) jsfile_set_size(n->file, (uint64_t)size);
    fs_node_unref(n);
  }
  return undef(env);
}

static napi_value js_open_count(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  if (!args(env, info, 2, argv)) return NULL;
  struct addon_mount *m = mount_of(env, argv[0]);
  char name[FS_NAME_MAX + 2];
  if (m == NULL || !get_string(env, argv[1], name, sizeof name, "name")) return NULL;
  napi_create_int32(env, fs_open_count(m->s, name), &out);
  return out;
}

static napi_value js_complete(napi_env env, napi_callback_info info) {
  napi_value argv[4], out;
  if (!args(env, info, 4, argv)) return NULL;
  struct addon_mount *m = mount_of(env, argv[0]);
  int64_t id, result, size;
  if (m == NULL || !get_i64(env, argv[1], &id, "callId") || !get_i64(env, argv[2], &result, "result") || !get_i64(env, argv[3], &size, "size")) return NULL;
  if (result < -4095 || result > (int64_t)FS_MAX_WRITE) {
    napi_throw_range_error(env, NULL, "result must be a byte count up to 1 MiB or a negative errno");
    return NULL;
  }
  napi_get_boolean(env, js_ctx_complete(&m->js, (uint64_t)id, result, size) == 0, &out);
  return out;
}

static napi_value js_synced(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  struct addon_mount *m = mount_of(env, argv[0]);
  if (m == NULL) return NULL;
  fs_synced(m->s);
  return undef(env);
}

static void set_num(napi_env env, napi_value obj, const char *key, double v) {
  napi_value n;
  napi_create_double(env, v, &n);
  napi_set_named_property(env, obj, key, n);
}

static napi_value js_stats(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  if (!args(env, info, 1, argv)) return NULL;
  struct addon_mount *m = mount_of(env, argv[0]);
  if (m == NULL) return NULL;
  napi_create_object(env, &out);
  set_num(env, out, "kernelMinor", m->s->kernel_minor);
  set_num(env, out, "protocolMinor", m->s->kernel_minor < ISL_FUSE_MINOR ? m->s->kernel_minor : ISL_FUSE_MINOR);
  set_num(env, out, "threads", m->s->nthreads);
  set_num(env, out, "openFlags", m->s->open_flags);
  set_num(env, out, "parked", (double)atomic_load(&m->s->parked));
  set_num(env, out, "malformed", (double)atomic_load(&m->s->malformed));
  set_num(env, out, "unknownOps", (double)atomic_load(&m->s->unknown_ops));
  return out;
}

/*
 * For tests of the request handlers: runs `request` (raw bytes as the kernel would send
 * them) through the same handlers the server threads use, on a mount, and returns the reply
 * bytes (an empty Buffer when no reply is due), or null when the request parked. The reply
 * goes through a pipe, never to the kernel; the namespace is not refreshed first.
 */
static napi_value js_test_request(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  if (!args(env, info, 2, argv)) return NULL;
  struct addon_mount *m = mount_of(env, argv[0]);
  if (m == NULL) return NULL;
  void *data;
  size_t len;
  bool is_buf = false;
  napi_is_buffer(env, argv[1], &is_buf);
  if (!is_buf || napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "request must be a Buffer");
    return NULL;
  }
  if (len > 65536) {
    napi_throw_range_error(env, NULL, "a test request is at most 64 KiB");
    return NULL;
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) return throw_errno(env, errno, "pipe2");
  int r = fs_run_once(m->s, data, len, p[1]);
  if (r == 1) {
    /* Its answer comes later, written to p[1]: that fd stays open (a closed number could
       be reused by anything meanwhile); the read end goes, so the answer is dropped. */
    close(p[0]);
    napi_get_null(env, &out);
    return out;
  }
  close(p[1]);
  if (r < 0) {
    close(p[0]);
    return throw_errno(env, -r, "fuseTestRequest");
  }
  char buf[65536];
  ssize_t n = read(p[0], buf, sizeof buf);
  close(p[0]);
  napi_create_buffer_copy(env, n > 0 ? (size_t)n : 0, buf, NULL, &out);
  return out;
}

napi_value isl_fuse_init(napi_env env, napi_value exports) {
  napi_value kinds;
  napi_create_object(env, &kinds);
  static const char *names[] = { "read", "write", "fsync", "truncate", "fallocate", "sync", "log", "free" };
  for (int i = 0; i < 8; i++) set_num(env, kinds, names[i], i);
  napi_property_descriptor props[] = {
    { "fuseKinds", NULL, NULL, NULL, NULL, kinds, napi_enumerable, NULL },
    { "fuseMount", NULL, js_mount, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseUnmount", NULL, js_unmount, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseAddFile", NULL, js_add, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseRemoveFile", NULL, js_remove, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseSetReadOnly", NULL, js_set_readonly, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseSetSize", NULL, js_set_size, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseOpenCount", NULL, js_open_count, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseComplete", NULL, js_complete, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseSynced", NULL, js_synced, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseStats", NULL, js_stats, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseTestRequest", NULL, js_test_request, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
