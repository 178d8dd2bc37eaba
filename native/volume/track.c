/*
 * track.c: dirty and write-intent bits (the protocols of src/volume/tracking.ts, the same
 * page writes in the same order, per file).
 *
 *  A. First write to a region in an intent epoch: its bit is set in the wanted set, then one
 *     writer becomes the flusher: it takes the unsaved intent pages, writes them (stamped with
 *     the intent epoch, holding the bits of older epochs not yet superseded), fdatasyncs
 *     `intent` and moves the bits to the durable set. Writers arriving meanwhile wait and find
 *     their bits durable, or run the next flush with everything wanted since: concurrent
 *     first writes share one page write and one fdatasync.
 *  B. Persisting dirty bits: pages of the sealed epoch before pages of the current one.
 *  C. A new intent epoch: with the gate closed, move to epoch I+1 (its pages keep the bits of
 *     I), then persist every dirty bit; the owner records I+1 in the state record and calls
 *     islv_intent_recorded(), from which on the bits of I are dropped.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int islv_track_init(struct islv_volume *v, const struct islv_config *cfg) {
  pthread_mutex_init(&v->tmu, NULL);
  pthread_mutex_init(&v->persist_mu, NULL);
  pthread_mutex_init(&v->imu, NULL);
  pthread_cond_init(&v->icv, NULL);
  v->epoch = cfg->epoch;
  v->completed_epoch = cfg->completed_epoch;
  v->intent_epoch = v->recordable_intent_epoch = cfg->intent_epoch;
  v->current = islv_bitmap_new();
  v->iwanted = islv_bitmap_new();
  v->idurable = islv_bitmap_new();
  return v->current && v->iwanted && v->idurable ? 0 : -ENOMEM;
}

void islv_track_destroy(struct islv_volume *v) {
  islv_bitmap_free(v->current);
  islv_bitmap_free(v->iwanted);
  islv_bitmap_free(v->idurable);
  islv_bitmap_free(v->iprev);
  pthread_mutex_destroy(&v->tmu);
  pthread_mutex_destroy(&v->persist_mu);
  pthread_mutex_destroy(&v->imu);
  pthread_cond_destroy(&v->icv);
}

/* One intent flush; called with imu held and iflushing set by the caller; returns with imu held. */
static int flush_intent(struct islv_volume *v) {
  uint64_t *pages;
  uint64_t n = islv_bitmap_take_unsaved(v->iwanted, &pages);
  if (n == 0) return 0;
  uint8_t *payloads = malloc(n * ISLV_PAYLOAD_BYTES);
  if (payloads == NULL) {
    islv_bitmap_mark_unsaved(v->iwanted, pages, n);
    free(pages);
    return -ENOMEM;
  }
  uint8_t prev[ISLV_PAYLOAD_BYTES];
  for (uint64_t i = 0; i < n; i++) {
    uint8_t *out = payloads + i * ISLV_PAYLOAD_BYTES;
    islv_bitmap_copy(v->iwanted, pages[i], out);
    if (v->iprev != NULL && islv_bitmap_copy(v->iprev, pages[i], prev)) {
      for (int k = 0; k < ISLV_PAYLOAD_BYTES; k++) out[k] |= prev[k];
    }
  }
  uint64_t stamp = v->intent_epoch;
  struct islv_bitmap *durable = v->idurable;
  pthread_mutex_unlock(&v->imu);
  int err = islv_pagefile_write(&v->intent, pages, n, stamp, payloads);
  if (err == 0) err = islv_pagefile_sync(&v->intent);
  pthread_mutex_lock(&v->imu);
  if (err != 0) {
    if (v->intent_epoch == stamp) islv_bitmap_mark_unsaved(v->iwanted, pages, n);
  } else {
    CNT(v, intent_syncs);
    for (uint64_t i = 0; i < n; i++) islv_bitmap_or_page(durable, pages[i], payloads + i * ISLV_PAYLOAD_BYTES, false);
  }
  free(pages);
  free(payloads);
  return err;
}

int islv_ensure_intent(struct islv_volume *v, uint64_t from, uint64_t to) {
  uint64_t r0 = from / v->R;
  uint64_t r1 = ((to > from + 1 ? to : from + 1) - 1) / v->R;
  bool missing = false;
  for (uint64_t r = r0; r <= r1; r++) {
    if (!islv_bitmap_get(v->idurable, r)) {
      missing = true;
      break;
    }
  }
  if (!missing) return 0;
  pthread_mutex_lock(&v->imu);
  for (uint64_t r = r0; r <= r1; r++) {
    if (!islv_bitmap_get(v->idurable, r)) islv_bitmap_set(v->iwanted, r);
  }
  int err = 0;
  for (;;) {
    bool done = true;
    for (uint64_t r = r0; r <= r1 && done; r++) done = islv_bitmap_get(v->idurable, r);
    if (done) break;
    if (v->iflushing) {
      pthread_cond_wait(&v->icv, &v->imu);
      continue;
    }
    /* Bits wanted but neither durable nor unsaved (a flush that failed gave them back). */
    for (uint64_t r = r0; r <= r1; r++) {
      if (!islv_bitmap_get(v->idurable, r)) {
        islv_bitmap_set(v->iwanted, r);
        uint64_t p = r / ISLV_BITS_PER_PAGE;
        struct islv_bpage *page = islv_bitmap_page(v->iwanted, p);
        if (page != NULL && !atomic_load(&page->unsaved)) islv_bitmap_mark_unsaved(v->iwanted, &p, 1);
      }
    }
    v->iflushing = true;
    err = flush_intent(v);
    v->iflushing = false;
    pthread_cond_broadcast(&v->icv);
    if (err != 0) break;
  }
  pthread_mutex_unlock(&v->imu);
  return err;
}

void islv_mark_dirty(struct islv_volume *v, uint64_t c0, uint64_t c1) {
  /* Inside the gate: the current set cannot be swapped under us. */
  struct islv_bitmap *cur = v->current;
  for (uint64_t c = c0; c <= c1; c++) islv_bitmap_set(cur, c);
}

static int persist_one(struct islv_volume *v, struct islv_bitmap *bits, uint64_t epoch) {
  uint64_t *pages;
  uint64_t n = islv_bitmap_take_unsaved(bits, &pages);
  if (n == 0) return 0;
  uint8_t *payloads = malloc(n * ISLV_PAYLOAD_BYTES);
  int err = -ENOMEM;
  if (payloads != NULL) {
    for (uint64_t i = 0; i < n; i++) islv_bitmap_copy(bits, pages[i], payloads + i * ISLV_PAYLOAD_BYTES);
    struct islv_pagefile *f = &v->dirty[epoch % 2];
    err = islv_pagefile_write(f, pages, n, epoch, payloads);
    if (err == 0) err = islv_pagefile_sync(f);
    if (err == 0) CNT(v, dirty_syncs);
  }
  if (err != 0) islv_bitmap_mark_unsaved(bits, pages, n);
  free(payloads);
  free(pages);
  return err;
}

int islv_persist(struct islv_volume *v) {
  pthread_mutex_lock(&v->persist_mu);
  pthread_mutex_lock(&v->tmu);
  struct islv_seal *s = v->sealed;
  if (s != NULL) atomic_fetch_add(&s->refs, 1);
  struct islv_bitmap *cur = v->current;
  uint64_t epoch = v->epoch;
  pthread_mutex_unlock(&v->tmu);
  int err = 0;
  if (s != NULL) {
    err = persist_one(v, s->bits, s->epoch);
    islv_seal_unref(s);
  }
  /* cur stays valid: once sealed, it is freed only with persist_mu held (seal.c, sweep). */
  if (err == 0) err = persist_one(v, cur, epoch);
  pthread_mutex_unlock(&v->persist_mu);
  return err;
}

int islv_new_intent_epoch(struct islv_volume *v, uint64_t *epoch) {
  *epoch = 0;
  pthread_mutex_lock(&v->imu);
  bool has = v->iprev != NULL || atomic_load(&v->iwanted->npages) > 0;
  pthread_mutex_unlock(&v->imu);
  if (!has) return islv_persist(v);
  pthread_rwlock_wrlock(&v->gate);
  if (atomic_load(&v->closed)) {
    pthread_rwlock_unlock(&v->gate);
    return -ESHUTDOWN;
  }
  pthread_mutex_lock(&v->imu);
  struct islv_bitmap *prev = v->iprev != NULL ? v->iprev : islv_bitmap_new();
  struct islv_bitmap *wanted = islv_bitmap_new(), *durable = islv_bitmap_new();
  int err = 0;
  if (prev == NULL || wanted == NULL || durable == NULL) {
    if (prev != v->iprev) islv_bitmap_free(prev);
    islv_bitmap_free(wanted);
    islv_bitmap_free(durable);
    err = -ENOMEM;
  } else {
    islv_bitmap_or(prev, v->idurable);
    uint64_t *pages;
    islv_bitmap_take_unsaved(prev, &pages);
    free(pages);
    v->iprev = prev;
    v->intent_epoch++;
    islv_bitmap_free(v->iwanted);
    islv_bitmap_free(v->idurable);
    v->iwanted = wanted;
    v->idurable = durable;
    CNT(v, intent_epochs);
    *epoch = v->intent_epoch;
  }
  pthread_mutex_unlock(&v->imu);
  pthread_rwlock_unlock(&v->gate);
  if (err != 0) return err;
  err = islv_persist(v);
  if (err != 0) return err;
  pthread_mutex_lock(&v->imu);
  if (*epoch > v->recordable_intent_epoch) v->recordable_intent_epoch = *epoch;
  pthread_mutex_unlock(&v->imu);
  return 0;
}

void islv_intent_recorded(struct islv_volume *v, uint64_t epoch) {
  pthread_mutex_lock(&v->imu);
  if (epoch == v->intent_epoch && v->iprev != NULL) {
    islv_bitmap_free(v->iprev);
    v->iprev = NULL;
  }
  pthread_mutex_unlock(&v->imu);
}

int islv_mark_all_dirty(struct islv_volume *v) {
  pthread_rwlock_rdlock(&v->gate);
  if (atomic_load(&v->closed)) {
    pthread_rwlock_unlock(&v->gate);
    return -ESHUTDOWN;
  }
  uint64_t len = atomic_load(&v->len);
  uint64_t n = (len + v->C - 1) / v->C;
  int err = 0;
  if (n > 0) {
    err = islv_ensure_intent(v, 0, len);
    if (err == 0) islv_bitmap_set_range(v->current, 0, n);
  }
  pthread_rwlock_unlock(&v->gate);
  return err != 0 ? err : islv_persist(v);
}

bool islv_is_dirty(struct islv_volume *v, uint64_t c) {
  pthread_mutex_lock(&v->tmu);
  bool d = islv_bitmap_get(v->current, c) || (v->sealed != NULL && islv_bitmap_get(v->sealed->bits, c));
  pthread_mutex_unlock(&v->tmu);
  return d;
}

struct collect {
  uint64_t *a, n, cap;
  bool oom;
};

static bool collect_bit(void *ctx, uint64_t bit) {
  struct collect *c = ctx;
  if (c->n == c->cap) {
    uint64_t cap = c->cap ? c->cap * 2 : 256;
    uint64_t *a = realloc(c->a, cap * sizeof *a);
    if (a == NULL) {
      c->oom = true;
      return false;
    }
    c->a = a;
    c->cap = cap;
  }
  c->a[c->n++] = bit;
  return true;
}

int islv_collect_bits(const struct islv_bitmap *b, uint64_t **out, uint64_t *n) {
  struct collect c = { 0 };
  islv_bitmap_each(b, collect_bit, &c);
  if (c.oom) {
    free(c.a);
    return -ENOMEM;
  }
  *out = c.a;
  *n = c.n;
  return 0;
}

int islv_dirty_list(struct islv_volume *v, uint64_t **out, uint64_t *n) {
  pthread_rwlock_rdlock(&v->gate);
  int err = islv_collect_bits(v->current, out, n);
  pthread_rwlock_unlock(&v->gate);
  return err;
}

int islv_dirty_pages(struct islv_volume *v, uint64_t **pages, uint8_t **payloads, uint64_t *n) {
  pthread_rwlock_rdlock(&v->gate);
  int err = islv_bitmap_pages(v->current, pages, payloads, n);
  pthread_rwlock_unlock(&v->gate);
  return err;
}
