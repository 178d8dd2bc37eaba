/*
 * present.c: the present bitmap of a volume restored from a snapshot, and the misses on it
 * (src/volume/present.ts and lazy.ts hold the same rules in TypeScript).
 *
 * A cluster below the base length is present once its local content is authoritative: base
 * content installed by islv_install(), or a guest write covering it whole. Both happen under
 * the cluster's stripe lock, and install writes only while the cluster is still missing, so a
 * whole-cluster write that arrived first wins. The bit reaches the `present` file only after
 * the data is durable: the cluster is queued as pending, and islv_sync_present() takes the
 * queue, fdatasyncs the image, then writes and syncs the pages.
 *
 * A call that needs a missing cluster parks its waiter on that cluster (after checking, under
 * the miss lock, that it is still missing, so no install can slip between) and reports the
 * clusters wanted to the owner once per cluster; install or a failed fetch wakes the waiters.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int islv_present_init(struct islv_volume *v) {
  for (int i = 0; i < ISLV_STRIPES; i++) pthread_mutex_init(&v->stripe[i], NULL);
  pthread_mutex_init(&v->pmu, NULL);
  pthread_mutex_init(&v->ppmu, NULL);
  pthread_mutex_init(&v->mmu, NULL);
  v->miss_cap = 256;
  v->misses = calloc(v->miss_cap, sizeof *v->misses);
  if (v->misses == NULL) return -ENOMEM;
  if (!v->restored) return 0;
  v->present = islv_bitmap_new();
  v->present_saved = islv_bitmap_new();
  return v->present && v->present_saved ? 0 : -ENOMEM;
}

void islv_present_destroy(struct islv_volume *v) {
  for (int i = 0; i < ISLV_STRIPES; i++) pthread_mutex_destroy(&v->stripe[i]);
  pthread_mutex_destroy(&v->pmu);
  pthread_mutex_destroy(&v->ppmu);
  pthread_mutex_destroy(&v->mmu);
  for (uint64_t i = 0; v->misses != NULL && i < v->miss_cap; i++) {
    struct islv_miss *m = v->misses[i];
    while (m != NULL) {
      struct islv_miss *next = m->next;
      free(m);
      m = next;
    }
  }
  free(v->misses);
  free(v->pending);
  islv_bitmap_free(v->present);
  islv_bitmap_free(v->present_saved);
}

bool islv_present(struct islv_volume *v, uint64_t c) {
  if (!v->restored) return true;
  return c * v->C >= atomic_load(&v->base_length) || islv_bitmap_get(v->present, c);
}

bool islv_is_present(struct islv_volume *v, uint64_t c) {
  return islv_present(v, c);
}

void islv_present_written(struct islv_volume *v, uint64_t c) {
  if (!v->restored || c * v->C >= atomic_load(&v->base_length)) return;
  atomic_store(&v->present_touched, true);
  if (islv_bitmap_get(v->present_saved, c)) return; /* persisted already: nothing would change */
  pthread_mutex_lock(&v->pmu);
  if (v->pending_n == v->pending_cap) {
    uint64_t cap = v->pending_cap ? v->pending_cap * 2 : 64;
    uint64_t *a = realloc(v->pending, cap * sizeof *a);
    if (a != NULL) {
      v->pending = a;
      v->pending_cap = cap;
    }
  }
  if (v->pending_n < v->pending_cap) v->pending[v->pending_n++] = c;
  pthread_mutex_unlock(&v->pmu);
}

int islv_sync_present(struct islv_volume *v) {
  uint64_t *taken = NULL, n = 0;
  if (v->restored) {
    pthread_mutex_lock(&v->pmu);
    atomic_store(&v->present_touched, false);
    taken = v->pending;
    n = v->pending_n;
    v->pending = NULL;
    v->pending_n = v->pending_cap = 0;
    pthread_mutex_unlock(&v->pmu);
  }
  int err = islv_sync_image(v);
  if (err != 0) {
    atomic_store(&v->present_touched, true);
    for (uint64_t i = 0; i < n; i++) islv_present_written(v, taken[i]);
    free(taken);
    return err;
  }
  if (n == 0) {
    free(taken);
    return 0;
  }
  pthread_mutex_lock(&v->ppmu);
  for (uint64_t i = 0; i < n; i++) islv_bitmap_set(v->present_saved, taken[i]);
  free(taken);
  uint64_t *pages;
  uint64_t np = islv_bitmap_take_unsaved(v->present_saved, &pages);
  if (np > 0) {
    uint8_t *payloads = malloc(np * ISLV_PAYLOAD_BYTES);
    err = -ENOMEM;
    if (payloads != NULL) {
      for (uint64_t i = 0; i < np; i++) islv_bitmap_copy(v->present_saved, pages[i], payloads + i * ISLV_PAYLOAD_BYTES);
      err = islv_pagefile_write(&v->present_file, pages, np, 0, payloads);
      if (err == 0) err = islv_pagefile_sync(&v->present_file);
      if (err == 0) CNT(v, present_syncs);
    }
    if (err != 0) islv_bitmap_mark_unsaved(v->present_saved, pages, np);
    free(payloads);
  }
  free(pages);
  pthread_mutex_unlock(&v->ppmu);
  return err;
}

int islv_flush_present(struct islv_volume *v) {
  if (!v->restored) return 0;
  /* As the TypeScript engine: any write below the base since the last one counts. */
  return atomic_load(&v->present_touched) ? islv_sync_present(v) : 0;
}

static struct islv_miss **miss_slot(struct islv_volume *v, uint64_t c) {
  struct islv_miss **p = &v->misses[c % v->miss_cap];
  while (*p != NULL && (*p)->c != c) p = &(*p)->next;
  return p;
}

int islv_park(struct islv_volume *v, uint64_t c, uint64_t c1, struct isl_waiter *w, bool reading) {
  if (w == NULL) return -EAGAIN;
  uint64_t runs[16][2];
  int nruns = 0;
  pthread_mutex_lock(&v->mmu);
  if (islv_present(v, c)) {
    pthread_mutex_unlock(&v->mmu);
    return 0;
  }
  if (atomic_load(&v->closed)) {
    pthread_mutex_unlock(&v->mmu);
    return -ESHUTDOWN;
  }
  uint64_t base_clusters = (atomic_load(&v->base_length) + v->C - 1) / v->C;
  if (c1 >= base_clusters) c1 = base_clusters - 1;
  for (uint64_t x = c; x <= c1; x++) {
    if (islv_present(v, x)) continue;
    struct islv_miss **p = miss_slot(v, x);
    if (*p == NULL) {
      struct islv_miss *m = calloc(1, sizeof *m);
      if (m == NULL) {
        if (x == c) {
          pthread_mutex_unlock(&v->mmu);
          return -ENOMEM;
        }
        break;
      }
      m->c = x;
      *p = m;
      if (nruns > 0 && runs[nruns - 1][1] + 1 == x) runs[nruns - 1][1] = x;
      else if (nruns < 16) {
        runs[nruns][0] = runs[nruns][1] = x;
        nruns++;
      }
    }
    if (x == c) {
      w->next = (*p)->waiters;
      (*p)->waiters = w;
    }
  }
  pthread_mutex_unlock(&v->mmu);
  CNT(v, parked);
  for (int i = 0; i < nruns; i++) {
    if (v->miss_cb != NULL) v->miss_cb(v->ctx, runs[i][0], runs[i][1], reading);
  }
  return ISL_PARKED;
}

static void wake_list(struct isl_waiter *w, int err) {
  while (w != NULL) {
    struct isl_waiter *next = w->next;
    w->next = NULL;
    w->wake(w, err);
    w = next;
  }
}

void islv_wake(struct islv_volume *v, uint64_t c, int err) {
  pthread_mutex_lock(&v->mmu);
  struct islv_miss **p = miss_slot(v, c);
  struct islv_miss *m = *p;
  if (m != NULL) *p = m->next;
  pthread_mutex_unlock(&v->mmu);
  if (m == NULL) return;
  wake_list(m->waiters, err);
  free(m);
}

void islv_wake_all(struct islv_volume *v, int err) {
  pthread_mutex_lock(&v->mmu);
  struct islv_miss *all = NULL;
  for (uint64_t i = 0; i < v->miss_cap; i++) {
    while (v->misses[i] != NULL) {
      struct islv_miss *m = v->misses[i];
      v->misses[i] = m->next;
      m->next = all;
      all = m;
    }
  }
  pthread_mutex_unlock(&v->mmu);
  while (all != NULL) {
    struct islv_miss *next = all->next;
    wake_list(all->waiters, err);
    free(all);
    all = next;
  }
}

int islv_install(struct islv_volume *v, uint64_t c, const uint8_t *data, uint64_t n) {
  if (n > v->C) return -EINVAL;
  int err = 0;
  pthread_rwlock_rdlock(&v->gate);
  if (atomic_load(&v->closed)) err = -ESHUTDOWN;
  else if (v->restored) {
    pthread_mutex_t *lock = &v->stripe[c % ISLV_STRIPES];
    pthread_mutex_lock(lock);
    if (!islv_present(v, c)) {
      uint64_t from = c * v->C, len = atomic_load(&v->len);
      uint64_t k = len > from ? len - from : 0;
      if (k > n) k = n;
      if (k > 0) {
        if (islv_all_zero(data, k)) err = islv_punch(v, from, k);
        else err = islv_pwrite_all(v->image_fd, data, k, from);
        if (err == 0 && !islv_all_zero(data, k)) islv_oplog_data(v->log, ISLV_FILE_IMAGE, ISLV_OP_WRITE, from, k, data, k);
      }
      if (err == 0) {
        islv_bitmap_set(v->present, c);
        islv_present_written(v, c);
        CNT(v, fetched_clusters);
      }
    }
    pthread_mutex_unlock(lock);
  }
  pthread_rwlock_unlock(&v->gate);
  CNT(v, installs);
  islv_wake(v, c, err);
  return err;
}

void islv_fetch_failed(struct islv_volume *v, uint64_t c0, uint64_t c1, int err) {
  for (uint64_t c = c0; c <= c1; c++) islv_wake(v, c, err < 0 ? err : -EIO);
}
