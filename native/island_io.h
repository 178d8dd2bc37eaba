/*
 * island_io.h: what the native FUSE server (native/fuse/) asks of a file it serves, and
 * what a file served natively (native/volume/, the volume write path) offers it.
 *
 * A served file is an opaque object behind a table of operations. The server never looks
 * inside it; the file never sees a FUSE request. Every operation may be called from any
 * server thread at once: the file does its own locking.
 *
 * Misses. An operation that cannot finish without data that is not local yet (a read of a
 * cluster still in the store, a partial write over one) does not block the calling thread:
 * it returns ISL_PARKED after linking the caller's waiter into its own wait list, and later
 * calls waiter->wake(waiter, err) exactly once, from whatever thread installed the data
 * (often the JavaScript thread, through an addon call). err is 0 when the data is now local:
 * the server then issues the same operation again (it may park again, e.g. after a race
 * with a truncate); a negative errno fails the request with that errno. wake() must return
 * quickly and must not call back into the file on the same stack: the server queues the
 * request for one of its threads.
 *
 * Return values: >= 0 success (bytes for read/write), a negative errno, or ISL_PARKED.
 * A read is short only at the end of the file. A write is never short.
 *
 * Lifetime: ref/unref count users; the server holds a reference for every open handle and
 * every request in flight, so a file removed from the mount stays valid until its last
 * request has been answered. unref of the last reference frees nothing the caller can see
 * again; the owner (JavaScript, through the addon) decides when the object itself goes.
 */
#ifndef ISLAND_IO_H
#define ISLAND_IO_H

#include <stddef.h>
#include <stdint.h>

/* Returned (never a valid byte count, never an errno) when the call waits on a miss. */
#define ISL_PARKED (-1000000)

struct isl_waiter {
  /* Called exactly once for each ISL_PARKED return: 0 = retry now, < 0 = fail with -err. */
  void (*wake)(struct isl_waiter *w, int err);
  /* Owned by the file while the waiter is parked (its wait list); the server never touches it. */
  struct isl_waiter *next;
};

/* fallocate modes the server passes through (FALLOC_FL_* values of the kernel). */
#define ISL_FALLOC_KEEP_SIZE 0x01
#define ISL_FALLOC_PUNCH_HOLE 0x02
#define ISL_FALLOC_ZERO_RANGE 0x10

struct isl_file_ops {
  int64_t (*read)(void *file, void *buf, size_t len, uint64_t off, struct isl_waiter *w);
  int64_t (*write)(void *file, const void *buf, size_t len, uint64_t off, struct isl_waiter *w);
  /* QEMU's fdatasync: returns once every write acknowledged before it is durable. */
  int (*fsync)(void *file);
  int (*fallocate)(void *file, int mode, uint64_t off, uint64_t len, struct isl_waiter *w);
  int (*truncate)(void *file, uint64_t size);
  /* The file's current length in bytes (what getattr reports). */
  uint64_t (*size)(void *file);
  void (*ref)(void *file);
  void (*unref)(void *file);
};

/*
 * The bridge between the two halves inside the one addon: the file behind a JavaScript
 * handle of a natively served volume (created by native/volume's addon calls). Returns 1 and
 * sets *ops and *file (with a reference taken) when `handle` is one; 0 when it is not.
 */
#ifdef NAPI_VERSION
#include <node_api.h>
int isl_volume_unwrap(napi_env env, napi_value handle, const struct isl_file_ops **ops, void **file);
#endif

#endif
