/*
 * internal.h: the insides of struct islv_volume, shared by the files of native/volume/
 * (volume.c: open, I/O, close; track.c: dirty and intent bits; seal.c: seal and side log;
 * present.c: present bits and misses). Nothing outside native/volume/ includes it.
 *
 * Locks, in the order they may be taken: gate (rwlock: I/O shared; seal, truncate, a new
 * intent epoch, close exclusive) -> stripe[c] (one cluster's present bit and install) ->
 * smu (open seal) -> imu (intent) -> tmu (current/sealed dirty sets) -> persist_mu ->
 * a page file's mutex; pmu, ppmu and mmu are leaves. No lock is held while calling back.
 */
#ifndef ISLV_INTERNAL_H
#define ISLV_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "bitmap.h"
#include "oplog.h"
#include "pagefile.h"
#include "volume.h"

#define ISLV_STRIPES 64

struct islv_seal_entry {
  uint64_t c;
  uint64_t seq;
  int64_t slot;   /* side log slot, -1: none */
  uint32_t len;
  uint8_t state;  /* ENTRY_* */
  uint8_t release_when_copied;
  struct islv_seal_entry *next;
};

#define ENTRY_NONE 0
#define ENTRY_COPYING 1
#define ENTRY_READY 2
#define ENTRY_FAILED 3

struct islv_seal {
  _Atomic int refs;
  uint64_t epoch, length, count;
  int open; /* 1 until completed or abandoned */
  struct islv_bitmap *bits, *uploaded;
  struct islv_seal_entry **table;
  uint64_t table_cap, table_n;
  /* Ended seals wait in v->ended until no call uses them (freed at the next seal or at close). */
  struct islv_seal *next_ended;
};

struct islv_miss {
  uint64_t c;
  struct isl_waiter *waiters;
  struct islv_miss *next;
};

struct islv_volume {
  char dir[4096];
  uint32_t C, R;
  bool restored;
  int image_fd, sidelog_fd;
  struct islv_pagefile dirty[2], intent, present_file;
  struct islv_oplog *log;
  void (*miss_cb)(void *ctx, uint64_t c0, uint64_t c1, bool reading);
  void (*event_cb)(void *ctx, int kind, uint64_t a, const char *msg);
  void (*destroy_cb)(void *ctx);
  void *ctx;

  pthread_rwlock_t gate;
  atomic_bool closed;
  atomic_bool holes; /* the image file system punches holes */
  _Atomic uint64_t len, phys_len;
  _Atomic int refs;

  /* Dirty sets (track.c). */
  pthread_mutex_t tmu, persist_mu;
  struct islv_bitmap *current;
  uint64_t epoch, completed_epoch;
  struct islv_seal *sealed; /* the seal whose bits are still tracked (open), or NULL */

  /* Write intent (track.c). */
  pthread_mutex_t imu;
  pthread_cond_t icv;
  bool iflushing;
  struct islv_bitmap *iwanted, *idurable, *iprev;
  uint64_t intent_epoch, recordable_intent_epoch;

  /* Seal and side log (seal.c). */
  pthread_mutex_t smu;
  pthread_cond_t scv;
  struct islv_seal *seal;
  struct islv_seal *ended;
  uint64_t budget, sl_next, sl_in_use, *sl_free, sl_free_n, sl_free_cap;

  /* Present bits and misses (present.c). */
  struct islv_bitmap *present, *present_saved;
  _Atomic uint64_t base_length;
  pthread_mutex_t stripe[ISLV_STRIPES];
  pthread_mutex_t pmu, ppmu, mmu;
  uint64_t *pending, pending_n, pending_cap;
  /* A cluster below the base was written since the last sync_present (even one already saved). */
  atomic_bool present_touched;
  struct islv_miss **misses;
  uint64_t miss_cap;

  struct {
    _Atomic uint64_t reads, writes, bytes_read, bytes_written, zero_clusters, fsyncs, image_syncs, discards;
    _Atomic uint64_t seals, seals_completed, seals_abandoned, side_log_copies, read_retries;
    _Atomic uint64_t parked, installs, fetched_clusters, dirty_syncs, intent_syncs, intent_epochs, present_syncs;
  } n;
};

#define CNT(v, f) atomic_fetch_add_explicit(&(v)->n.f, 1, memory_order_relaxed)

/* volume.c */
int islv_pread_all(int fd, void *buf, uint64_t len, uint64_t pos, uint64_t *got);
int islv_pwrite_all(int fd, const void *buf, uint64_t len, uint64_t pos);
bool islv_all_zero(const uint8_t *p, uint64_t n);
/* Punch [pos, pos+len) (keep size); falls back to writing zeros. */
int islv_punch(struct islv_volume *v, uint64_t pos, uint64_t len);
int islv_sync_image(struct islv_volume *v);

/* track.c */
int islv_track_init(struct islv_volume *v, const struct islv_config *cfg);
void islv_track_destroy(struct islv_volume *v);
int islv_ensure_intent(struct islv_volume *v, uint64_t from, uint64_t to);
void islv_mark_dirty(struct islv_volume *v, uint64_t c0, uint64_t c1);

/* seal.c */
int islv_seal_init(struct islv_volume *v);
void islv_seal_destroy(struct islv_volume *v);
/* Copy sealed clusters of [c0, c1] to the side log before a write (inside the gate). */
void islv_protect(struct islv_volume *v, uint64_t c0, uint64_t c1);
void islv_seal_unref(struct islv_seal *s);
int islv_collect_bits(const struct islv_bitmap *b, uint64_t **out, uint64_t *n);
/* Abandon the open seal (any thread, no lock held); reports the event. */
void islv_abandon_open(struct islv_volume *v, const char *reason);

/* present.c */
int islv_present_init(struct islv_volume *v);
void islv_present_destroy(struct islv_volume *v);
bool islv_present(struct islv_volume *v, uint64_t c);
void islv_present_written(struct islv_volume *v, uint64_t c);
/* Wait for cluster c (missing) and ask for [c, c1]: ISL_PARKED, or 0 when it became present. */
int islv_park(struct islv_volume *v, uint64_t c, uint64_t c1, struct isl_waiter *w, bool reading);
void islv_wake(struct islv_volume *v, uint64_t c, int err);
void islv_wake_all(struct islv_volume *v, int err);

#endif
