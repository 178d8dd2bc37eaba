/*
 * volume.h: island's volume write path in C, over the local state of
 * docs/formats/local-state.md (version 2). One `struct islv_volume` is one attached volume's
 * image, change tracking (dirty, intent), present bitmap (restored volumes), open seal and side
 * log. Every call is safe from any number of threads at once.
 *
 * Ownership: the TypeScript engine creates and recovers the directory (src/volume/setup.ts),
 * then hands the recovered state to islv_open() and the islv_load_*() calls before the first
 * I/O; from then on the bitmaps and counters belong to this code, and JavaScript reaches them
 * only through these calls (native/volume/addon.c). JavaScript writes the state record, with
 * what islv_record_info() reports.
 *
 * Return values: 0 or a byte count on success, a negative errno on failure, ISL_PARKED
 * (island_io.h) when a call waits for base content that is not local yet: the miss callback
 * was (or had been) told which clusters are wanted, and the waiter is woken exactly once by
 * islv_install() / islv_fetch_failed() / islv_close() from whatever thread calls them.
 */
#ifndef ISLV_VOLUME_H
#define ISLV_VOLUME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../island_io.h"
#include "oplog.h"

/* readSealed: the cluster is not local yet (restored volume): fetch it, then ask again. */
#define ISLV_MISSING (-1000001)

/* Largest image length (as MAX_IMAGE_LENGTH in src/volume/state.ts). */
#define ISLV_MAX_LENGTH ((uint64_t)1 << 52)

/* Events reported to the owner through the event callback. */
#define ISLV_EVENT_SEAL_ABANDONED 1 /* a = epoch; msg = reason */
#define ISLV_EVENT_STATE 2          /* the state record must be written (base length lowered) */

struct islv_volume;

struct islv_config {
  const char *dir;
  uint32_t cluster_size;
  uint32_t region_size;
  uint64_t image_length;
  /* 0: not restored from a snapshot (no present file, every cluster present). */
  uint64_t base_length;
  uint64_t epoch;
  uint64_t completed_epoch;
  uint64_t intent_epoch;
  uint64_t side_log_budget;
  bool op_log;
  /* ... with the bytes of every page and image write (tests that replay the log). */
  bool op_log_data;
  /* Clusters [c0, c1] are wanted (called from any thread, never under a lock of the volume);
   * reading: for a read (the owner may fetch ahead of a sequential reader), not a write. */
  void (*miss)(void *ctx, uint64_t c0, uint64_t c1, bool reading);
  void (*event)(void *ctx, int kind, uint64_t a, const char *msg);
  /* Called once when the volume is freed (its last reference dropped), from that thread. */
  void (*destroy)(void *ctx);
  void *ctx;
};

/* Files are named by the ISLV_FILE_* numbers of oplog.h. */

/* Open the volume's files in cfg->dir (image.qcow2, dirty.0, dirty.1, intent, present, sidelog). */
int islv_open(const struct islv_config *cfg, struct islv_volume **out);
/* Before the first I/O: slot generations of a page of a bitmap file, its synced page count. */
int islv_load_gens(struct islv_volume *v, int file, uint64_t page, uint64_t g0, uint64_t g1);
int islv_load_synced(struct islv_volume *v, int file, uint64_t pages);
/* Before the first I/O: a page of the current dirty set (ISLV_FILE_DIRTY0) or of present (ISLV_FILE_PRESENT). */
int islv_load_bits(struct islv_volume *v, int which, uint64_t page, const uint8_t *payload, bool unsaved);

/* The file operations (island_io.h). */
extern const struct isl_file_ops islv_file_ops;
int64_t islv_read(struct islv_volume *v, void *buf, size_t len, uint64_t off, struct isl_waiter *w);
int64_t islv_write(struct islv_volume *v, const void *buf, size_t len, uint64_t off, struct isl_waiter *w);
int islv_fsync(struct islv_volume *v);
int islv_fallocate(struct islv_volume *v, int mode, uint64_t off, uint64_t len, struct isl_waiter *w);
/* -EAGAIN when the cluster cut by the new end is not local yet (fetch it, then retry). */
int islv_truncate(struct islv_volume *v, uint64_t size);
uint64_t islv_size(struct islv_volume *v);
void islv_ref(struct islv_volume *v);
void islv_unref(struct islv_volume *v);

/* Seal: drain writes, empty the side log, swap the dirty set (O(1)), then fdatasync the image. */
int islv_seal(struct islv_volume *v, uint64_t *epoch, uint64_t *length, uint64_t *clusters);
/* Sealed clusters, ascending (malloc'd array in *out, free() it). -ECANCELED: no such open seal. */
int islv_sealed_list(struct islv_volume *v, uint64_t epoch, uint64_t **out, uint64_t *n);
/* The cluster as it was at the seal, into buf (cluster size bytes); *len set. -ECANCELED: the
 * seal is no longer open; -EINVAL: not sealed; -EALREADY: already uploaded; ISLV_MISSING. */
/* The sealed set as bitmap pages (islv_bitmap_pages in bitmap.h). -ECANCELED: no such open seal. */
int islv_sealed_pages(struct islv_volume *v, uint64_t epoch, uint64_t **pages, uint8_t **payloads, uint64_t *n);
int islv_read_sealed(struct islv_volume *v, uint64_t epoch, uint64_t c, uint8_t *buf, uint64_t *len);
int islv_mark_uploaded(struct islv_volume *v, uint64_t epoch, uint64_t c);
/* The sealed epoch is in a completed snapshot (the caller writes the state record next). */
int islv_complete(struct islv_volume *v, uint64_t epoch);
/* Give the seal up: its clusters are dirty again in the current epoch; bits persisted. */
int islv_abandon(struct islv_volume *v, uint64_t epoch, const char *reason);

/* Persist unsaved dirty pages (sealed epoch first, then current). */
int islv_persist(struct islv_volume *v);
/* fdatasync the image and persist the present bits whose data that covers. */
int islv_sync_present(struct islv_volume *v);
/* The same, only when present bits wait for it (a restored volume written since the last one). */
int islv_flush_present(struct islv_volume *v);
/* Protocol C steps 1-2: returns the new intent epoch in *epoch, or 0 when there was no intent to clear
 * (then only dirty pages were persisted). The caller writes the state record, then calls
 * islv_intent_recorded(epoch). */
int islv_new_intent_epoch(struct islv_volume *v, uint64_t *epoch);
void islv_intent_recorded(struct islv_volume *v, uint64_t epoch);
/* Every cluster of the image dirty, durably (intent first). */
int islv_mark_all_dirty(struct islv_volume *v);

/* Base content of cluster c (n bytes, shorter only at the end of the base): written only if the
 * cluster is still missing; wakes the waiters of c. */
int islv_install(struct islv_volume *v, uint64_t c, const uint8_t *data, uint64_t n);
/* The fetch of clusters [c0, c1] failed: their waiters fail with err (negative errno). */
void islv_fetch_failed(struct islv_volume *v, uint64_t c0, uint64_t c1, int err);
bool islv_is_present(struct islv_volume *v, uint64_t c);
bool islv_is_dirty(struct islv_volume *v, uint64_t c);
/* Clusters dirty in the current epoch (malloc'd array). */
int islv_dirty_list(struct islv_volume *v, uint64_t **out, uint64_t *n);
/* The same as bitmap pages (islv_bitmap_pages in bitmap.h). */
int islv_dirty_pages(struct islv_volume *v, uint64_t **pages, uint8_t **payloads, uint64_t *n);

struct islv_record_info {
  uint64_t epoch, completed_epoch, recordable_intent_epoch, image_length, base_length;
  uint64_t synced_pages[4]; /* dirty.0, dirty.1, intent, present */
};
void islv_record_info(struct islv_volume *v, struct islv_record_info *out);

struct islv_stats {
  uint64_t reads, writes, bytes_read, bytes_written, zero_clusters, fsyncs, image_syncs, discards;
  uint64_t seals, seals_completed, seals_abandoned, side_log_copies, side_log_bytes, read_retries;
  uint64_t dirty_clusters, sealed_clusters, present_clusters, parked, installs, fetched_clusters;
  uint64_t dirty_syncs, intent_syncs, intent_epochs, present_syncs, dirty_page_writes, intent_page_writes, present_page_writes;
};
void islv_get_stats(struct islv_volume *v, struct islv_stats *out);

/* The logged operations since the last call (op_log only); see oplog.h. */
struct islv_op *islv_take_ops(struct islv_volume *v, uint64_t *n);

/* Stop: refuse new I/O, fail parked waiters, abandon an open seal, persist every bit, sync the
 * image. *clean: everything reached the disk (the caller may write the clean mark). The files
 * stay open until the last reference is dropped. */
int islv_close(struct islv_volume *v, bool *clean);

#endif
