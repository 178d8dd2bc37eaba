/*
 * seal.c: the open seal of a volume and its side log (src/volume/seal.ts and sidelog.ts do
 * the same in TypeScript; docs/formats/local-state.md, "Seal" and "Side log").
 *
 * A seal closes the gate (no write in flight), empties the side log, makes the current dirty
 * set the sealed one and starts an empty one (O(1)), then fdatasyncs the image with writes
 * flowing again. Per sealed cluster it keeps a sequence counter (writes started on it since
 * the seal) and, after the first overwrite, the slot of its copy in the side log: a write to a
 * sealed cluster not yet uploaded bumps the counter and, the first time, copies the cluster's
 * content at the seal before the write touches the image. readSealed reads the image and
 * takes the copy instead when a write started meanwhile. A copy past the budget, or one that
 * fails, abandons the seal (the guest never sees an error for it).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

int islv_seal_init(struct islv_volume *v) {
  pthread_mutex_init(&v->smu, NULL);
  pthread_cond_init(&v->scv, NULL);
  return 0;
}

static void seal_free(struct islv_seal *s) {
  for (uint64_t i = 0; i < s->table_cap; i++) {
    struct islv_seal_entry *e = s->table[i];
    while (e != NULL) {
      struct islv_seal_entry *next = e->next;
      free(e);
      e = next;
    }
  }
  free(s->table);
  islv_bitmap_free(s->bits);
  islv_bitmap_free(s->uploaded);
  free(s);
}

/* Free ended seals nobody uses; with persist_mu held (a persist may hold their bits). */
static void sweep(struct islv_volume *v, bool all) {
  pthread_mutex_lock(&v->smu);
  struct islv_seal **p = &v->ended;
  while (*p != NULL) {
    struct islv_seal *s = *p;
    if (all || atomic_load(&s->refs) == 0) {
      *p = s->next_ended;
      seal_free(s);
    } else {
      p = &s->next_ended;
    }
  }
  pthread_mutex_unlock(&v->smu);
}

void islv_seal_destroy(struct islv_volume *v) {
  if (v->seal != NULL) {
    v->seal->next_ended = v->ended;
    v->ended = v->seal;
    v->seal = NULL;
  }
  sweep(v, true);
  free(v->sl_free);
  pthread_mutex_destroy(&v->smu);
  pthread_cond_destroy(&v->scv);
}

void islv_seal_unref(struct islv_seal *s) {
  atomic_fetch_sub(&s->refs, 1);
}

static struct islv_seal_entry *entry_find(struct islv_seal *s, uint64_t c) {
  if (s->table_cap == 0) return NULL;
  for (struct islv_seal_entry *e = s->table[c & (s->table_cap - 1)]; e != NULL; e = e->next) {
    if (e->c == c) return e;
  }
  return NULL;
}

static struct islv_seal_entry *entry_get(struct islv_seal *s, uint64_t c) {
  struct islv_seal_entry *e = entry_find(s, c);
  if (e != NULL) return e;
  if (s->table_n + 1 > s->table_cap) {
    uint64_t cap = s->table_cap ? s->table_cap * 2 : 64;
    struct islv_seal_entry **t = calloc(cap, sizeof *t);
    if (t == NULL) return NULL;
    for (uint64_t i = 0; i < s->table_cap; i++) {
      struct islv_seal_entry *x = s->table[i];
      while (x != NULL) {
        struct islv_seal_entry *next = x->next;
        x->next = t[x->c & (cap - 1)];
        t[x->c & (cap - 1)] = x;
        x = next;
      }
    }
    free(s->table);
    s->table = t;
    s->table_cap = cap;
  }
  e = calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  e->c = c;
  e->slot = -1;
  e->next = s->table[c & (s->table_cap - 1)];
  s->table[c & (s->table_cap - 1)] = e;
  s->table_n++;
  return e;
}

static void slot_release(struct islv_volume *v, int64_t slot) {
  if (slot < 0) return;
  if (v->sl_free_n == v->sl_free_cap) {
    uint64_t cap = v->sl_free_cap ? v->sl_free_cap * 2 : 64;
    uint64_t *a = realloc(v->sl_free, cap * sizeof *a);
    if (a == NULL) return; /* the slot is lost until the side log is emptied */
    v->sl_free = a;
    v->sl_free_cap = cap;
  }
  v->sl_free[v->sl_free_n++] = (uint64_t)slot;
  v->sl_in_use--;
}

static void sidelog_reset(struct islv_volume *v) {
  v->sl_next = v->sl_in_use = v->sl_free_n = 0;
  if (ftruncate(v->sidelog_fd, 0) != 0) { /* the next seal tries again */
  }
}

/* End the open seal s (smu held). Abandoned: its bits go back into the current set. */
static void seal_end_locked(struct islv_volume *v, struct islv_seal *s, bool completed) {
  s->open = 0;
  v->seal = NULL;
  pthread_mutex_lock(&v->tmu);
  if (completed) v->completed_epoch = s->epoch;
  else islv_bitmap_or(v->current, s->bits);
  v->sealed = NULL;
  pthread_mutex_unlock(&v->tmu);
  s->next_ended = v->ended;
  v->ended = s;
  atomic_fetch_sub(&s->refs, 1);
  sidelog_reset(v);
  if (completed) CNT(v, seals_completed);
  else CNT(v, seals_abandoned);
  pthread_cond_broadcast(&v->scv);
}

static void report_abandon(struct islv_volume *v, uint64_t epoch, const char *reason) {
  if (v->event_cb != NULL) v->event_cb(v->ctx, ISLV_EVENT_SEAL_ABANDONED, epoch, reason);
}

void islv_abandon_open(struct islv_volume *v, const char *reason) {
  pthread_mutex_lock(&v->smu);
  struct islv_seal *s = v->seal;
  uint64_t epoch = 0;
  if (s != NULL) {
    epoch = s->epoch;
    seal_end_locked(v, s, false);
  }
  pthread_mutex_unlock(&v->smu);
  if (s == NULL) return;
  report_abandon(v, epoch, reason);
  /* The merged bits head for the disk at once (the TypeScript engine persists in the background). */
  if (islv_persist(v) != 0) { /* the next persist tries again; the bits stay unsaved */
  }
}

int islv_seal(struct islv_volume *v, uint64_t *epoch, uint64_t *length, uint64_t *clusters) {
  struct islv_seal *s = calloc(1, sizeof *s);
  struct islv_bitmap *fresh = islv_bitmap_new(), *uploaded = islv_bitmap_new();
  if (s == NULL || fresh == NULL || uploaded == NULL) {
    free(s);
    islv_bitmap_free(fresh);
    islv_bitmap_free(uploaded);
    return -ENOMEM;
  }
  pthread_rwlock_wrlock(&v->gate);
  int err = 0;
  if (atomic_load(&v->closed)) err = -ESHUTDOWN;
  pthread_mutex_lock(&v->smu);
  if (err == 0 && v->seal != NULL) err = -EBUSY;
  pthread_mutex_unlock(&v->smu);
  if (err != 0) {
    pthread_rwlock_unlock(&v->gate);
    free(s);
    islv_bitmap_free(fresh);
    islv_bitmap_free(uploaded);
    return err;
  }
  pthread_mutex_lock(&v->persist_mu);
  sweep(v, false);
  pthread_mutex_unlock(&v->persist_mu);
  pthread_mutex_lock(&v->smu);
  sidelog_reset(v);
  pthread_mutex_lock(&v->tmu);
  s->epoch = v->epoch;
  s->bits = v->current;
  s->uploaded = uploaded;
  s->length = atomic_load(&v->len);
  s->open = 1;
  s->refs = 1;
  s->count = islv_bitmap_count(s->bits);
  v->current = fresh;
  v->epoch++;
  v->sealed = s;
  pthread_mutex_unlock(&v->tmu);
  v->seal = s;
  pthread_mutex_unlock(&v->smu);
  pthread_rwlock_unlock(&v->gate);
  CNT(v, seals);
  *epoch = s->epoch;
  *length = s->length;
  *clusters = s->count;
  /* The sealed content must be durable before a snapshot of it can complete. */
  err = islv_sync_image(v);
  if (err != 0) {
    char reason[128];
    snprintf(reason, sizeof reason, "syncing the image at the seal failed: %s", strerror(-err));
    islv_abandon_open(v, reason);
  }
  return err;
}

/* The open seal with this epoch, referenced; NULL when there is none (smu held). */
static struct islv_seal *open_seal(struct islv_volume *v, uint64_t epoch) {
  struct islv_seal *s = v->seal;
  if (s == NULL || s->epoch != epoch || !s->open) return NULL;
  return s;
}

int islv_sealed_list(struct islv_volume *v, uint64_t epoch, uint64_t **out, uint64_t *n) {
  pthread_mutex_lock(&v->smu);
  struct islv_seal *s = open_seal(v, epoch);
  if (s != NULL) atomic_fetch_add(&s->refs, 1);
  pthread_mutex_unlock(&v->smu);
  if (s == NULL) return -ECANCELED;
  int err = islv_collect_bits(s->bits, out, n);
  islv_seal_unref(s);
  return err;
}

int islv_sealed_pages(struct islv_volume *v, uint64_t epoch, uint64_t **pages, uint8_t **payloads, uint64_t *n) {
  pthread_mutex_lock(&v->smu);
  struct islv_seal *s = open_seal(v, epoch);
  if (s != NULL) atomic_fetch_add(&s->refs, 1);
  pthread_mutex_unlock(&v->smu);
  if (s == NULL) return -ECANCELED;
  int err = islv_bitmap_pages(s->bits, pages, payloads, n);
  islv_seal_unref(s);
  return err;
}

void islv_protect(struct islv_volume *v, uint64_t c0, uint64_t c1) {
  pthread_mutex_lock(&v->smu);
  for (uint64_t c = c0; c <= c1; c++) {
    struct islv_seal *s = v->seal;
    if (s == NULL) break;
    if (!islv_bitmap_get(s->bits, c) || islv_bitmap_get(s->uploaded, c)) continue;
    struct islv_seal_entry *e = entry_get(s, c);
    const char *why = NULL;
    char reason[160];
    if (e == NULL) {
      why = "out of memory for the side log table";
    } else {
      e->seq++;
      if (e->state == ENTRY_NONE) {
        uint64_t start = c * v->C;
        uint64_t len = s->length > start ? s->length - start : 0;
        if (len > v->C) len = v->C;
        e->len = (uint32_t)len;
        if (len == 0) {
          e->state = ENTRY_READY;
          continue;
        }
        int64_t slot;
        if (v->sl_free_n > 0) slot = (int64_t)v->sl_free[--v->sl_free_n];
        else if ((v->sl_in_use + 1) * v->C > v->budget) slot = -1;
        else slot = (int64_t)v->sl_next++;
        if (slot < 0) {
          snprintf(reason, sizeof reason, "the side log budget of %llu bytes is exhausted", (unsigned long long)v->budget);
          why = reason;
        } else {
          v->sl_in_use++;
          e->slot = slot;
          e->state = ENTRY_COPYING;
          CNT(v, side_log_copies);
          pthread_mutex_unlock(&v->smu);
          uint8_t *buf = malloc(v->C);
          uint64_t got = 0;
          int err = buf == NULL ? -ENOMEM : islv_pread_all(v->image_fd, buf, len, start, &got);
          if (err == 0) {
            if (got < len) memset(buf + got, 0, len - got);
            err = islv_pwrite_all(v->sidelog_fd, buf, len, (uint64_t)slot * v->C);
          }
          free(buf);
          pthread_mutex_lock(&v->smu);
          e->state = err == 0 ? ENTRY_READY : ENTRY_FAILED;
          if (e->release_when_copied && err == 0 && s->open) {
            slot_release(v, e->slot);
            e->slot = -1;
          }
          pthread_cond_broadcast(&v->scv);
          if (err != 0) {
            snprintf(reason, sizeof reason, "copying cluster %llu to the side log failed: %s", (unsigned long long)c, strerror(-err));
            why = reason;
          }
        }
      }
      while (why == NULL && e->state == ENTRY_COPYING && s->open) pthread_cond_wait(&v->scv, &v->smu);
    }
    if (why != NULL) {
      if (v->seal == s) {
        uint64_t epoch = s->epoch;
        seal_end_locked(v, s, false);
        pthread_mutex_unlock(&v->smu);
        report_abandon(v, epoch, why);
        if (islv_persist(v) != 0) { /* the next persist tries again */
        }
        pthread_mutex_lock(&v->smu);
      }
      break;
    }
  }
  pthread_mutex_unlock(&v->smu);
}

int islv_read_sealed(struct islv_volume *v, uint64_t epoch, uint64_t c, uint8_t *buf, uint64_t *out_len) {
  *out_len = 0;
  pthread_mutex_lock(&v->smu);
  struct islv_seal *s = open_seal(v, epoch);
  if (s == NULL) {
    pthread_mutex_unlock(&v->smu);
    return -ECANCELED;
  }
  if (!islv_bitmap_get(s->bits, c)) {
    pthread_mutex_unlock(&v->smu);
    return -EINVAL;
  }
  if (islv_bitmap_get(s->uploaded, c)) {
    pthread_mutex_unlock(&v->smu);
    return -EALREADY;
  }
  uint64_t start = c * v->C;
  uint64_t len = s->length > start ? s->length - start : 0;
  if (len > v->C) len = v->C;
  if (len == 0) {
    pthread_mutex_unlock(&v->smu);
    return 0;
  }
  atomic_fetch_add(&s->refs, 1);
  pthread_mutex_unlock(&v->smu);
  if (!islv_present(v, c)) {
    islv_seal_unref(s);
    return ISLV_MISSING;
  }
  int err = 0;
  for (;;) {
    pthread_mutex_lock(&v->smu);
    if (!s->open) {
      err = -ECANCELED;
      pthread_mutex_unlock(&v->smu);
      break;
    }
    struct islv_seal_entry *e = entry_find(s, c);
    while (e != NULL && e->state == ENTRY_COPYING && s->open) pthread_cond_wait(&v->scv, &v->smu);
    if (e != NULL && e->state == ENTRY_READY && e->slot >= 0 && s->open) {
      int64_t slot = e->slot;
      pthread_mutex_unlock(&v->smu);
      uint64_t got = 0;
      err = islv_pread_all(v->sidelog_fd, buf, len, (uint64_t)slot * v->C, &got);
      if (err == 0 && got < len) memset(buf + got, 0, len - got);
      pthread_mutex_lock(&v->smu);
      if (!s->open) err = -ECANCELED; /* the slot may have been reused */
      pthread_mutex_unlock(&v->smu);
      break;
    }
    if (!s->open || (e != NULL && e->state == ENTRY_FAILED)) {
      err = -ECANCELED;
      pthread_mutex_unlock(&v->smu);
      break;
    }
    uint64_t before = e != NULL ? e->seq : 0;
    pthread_mutex_unlock(&v->smu);
    pthread_rwlock_rdlock(&v->gate);
    uint64_t got = 0;
    err = islv_pread_all(v->image_fd, buf, len, start, &got);
    pthread_rwlock_unlock(&v->gate);
    if (err == 0 && got < len) memset(buf + got, 0, len - got);
    pthread_mutex_lock(&v->smu);
    e = entry_find(s, c);
    bool same = (e != NULL ? e->seq : 0) == before && (e == NULL || e->state == ENTRY_NONE);
    bool open = s->open;
    pthread_mutex_unlock(&v->smu);
    if (err != 0) break;
    if (!open) {
      err = -ECANCELED;
      break;
    }
    if (same) break;
    CNT(v, read_retries);
  }
  islv_seal_unref(s);
  if (err == 0) *out_len = len;
  return err;
}

int islv_mark_uploaded(struct islv_volume *v, uint64_t epoch, uint64_t c) {
  pthread_mutex_lock(&v->smu);
  struct islv_seal *s = open_seal(v, epoch);
  int err = 0;
  if (s == NULL) err = -ECANCELED;
  else if (!islv_bitmap_get(s->bits, c)) err = -EINVAL;
  else {
    islv_bitmap_set(s->uploaded, c);
    struct islv_seal_entry *e = entry_find(s, c);
    if (e != NULL) {
      e->seq = 0;
      if (e->state == ENTRY_COPYING) e->release_when_copied = 1;
      else if (e->slot >= 0) {
        slot_release(v, e->slot);
        e->slot = -1;
      }
      if (e->state != ENTRY_COPYING) e->state = ENTRY_NONE;
    }
  }
  pthread_mutex_unlock(&v->smu);
  return err;
}

int islv_complete(struct islv_volume *v, uint64_t epoch) {
  pthread_mutex_lock(&v->smu);
  struct islv_seal *s = open_seal(v, epoch);
  if (s != NULL) seal_end_locked(v, s, true);
  pthread_mutex_unlock(&v->smu);
  return s == NULL ? -ECANCELED : 0;
}

int islv_abandon(struct islv_volume *v, uint64_t epoch, const char *reason) {
  pthread_mutex_lock(&v->smu);
  struct islv_seal *s = open_seal(v, epoch);
  if (s != NULL) seal_end_locked(v, s, false);
  pthread_mutex_unlock(&v->smu);
  if (s == NULL) return -ECANCELED;
  (void)reason;
  return islv_persist(v);
}
