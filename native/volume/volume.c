/*
 * volume.c: opening a volume's files, the I/O operations (island_io.h) and closing
 * (the write protocol of docs/formats/local-state.md, as src/volume/engine.ts does it).
 *
 * Write, in order: (restored volume) a partially written cluster that is not local parks the
 * call until it is, a wholly written one becomes present at once (under its stripe lock, so a
 * fetch arriving later leaves it alone); inside the gate: the write-intent bits of the regions
 * (track.c, protocol A), the side-log copy of sealed clusters (seal.c), the dirty bits, the
 * data. Whole clusters of zeros become holes after the dirty pages are durable (a hole cannot
 * be told from an old hole by a rescan). fsync: fdatasync of the image, then the present
 * pages whose data that made durable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

int islv_pread_all(int fd, void *buf, uint64_t len, uint64_t pos, uint64_t *got) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, (off_t)(pos + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    done += (uint64_t)n;
  }
  *got = done;
  return 0;
}

int islv_pwrite_all(int fd, const void *buf, uint64_t len, uint64_t pos) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, (const uint8_t *)buf + done, len - done, (off_t)(pos + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    done += (uint64_t)n;
  }
  return 0;
}

bool islv_all_zero(const uint8_t *p, uint64_t n) {
  if (n == 0) return true;
  if (p[0] != 0) return false;
  return memcmp(p, p + 1, n - 1) == 0;
}

int islv_punch(struct islv_volume *v, uint64_t pos, uint64_t len) {
  if (atomic_load(&v->holes)) {
    if (fallocate(v->image_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)pos, (off_t)len) == 0) {
      islv_oplog_add(v->log, ISLV_FILE_IMAGE, ISLV_OP_PUNCH, pos, len);
      return 0;
    }
    if (errno != EOPNOTSUPP && errno != ENOSYS) return -errno;
    atomic_store(&v->holes, false);
  }
  static const uint8_t zeros[65536];
  for (uint64_t done = 0; done < len;) {
    uint64_t k = len - done < sizeof zeros ? len - done : sizeof zeros;
    int err = islv_pwrite_all(v->image_fd, zeros, k, pos + done);
    if (err != 0) return err;
    done += k;
  }
  islv_oplog_add(v->log, ISLV_FILE_IMAGE, ISLV_OP_PUNCH, pos, len); /* zeros written: the same content */
  return 0;
}

int islv_sync_image(struct islv_volume *v) {
  islv_oplog_sync(v->log, ISLV_FILE_IMAGE);
  if (fdatasync(v->image_fd) != 0) return -errno;
  CNT(v, image_syncs);
  return 0;
}

static int open_file(const char *dir, const char *name, int *fd) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  *fd = open(path, O_RDWR | O_CLOEXEC);
  return *fd < 0 ? -errno : 0;
}

static void volume_free(struct islv_volume *v) {
  islv_seal_destroy(v);
  islv_track_destroy(v);
  islv_present_destroy(v);
  islv_pagefile_destroy(&v->dirty[0]);
  islv_pagefile_destroy(&v->dirty[1]);
  islv_pagefile_destroy(&v->intent);
  if (v->restored) islv_pagefile_destroy(&v->present_file);
  if (v->image_fd >= 0) close(v->image_fd);
  if (v->sidelog_fd >= 0) close(v->sidelog_fd);
  pthread_rwlock_destroy(&v->gate);
  islv_oplog_free(v->log);
  if (v->destroy_cb != NULL) v->destroy_cb(v->ctx);
  free(v);
}

int islv_open(const struct islv_config *cfg, struct islv_volume **out) {
  *out = NULL;
  uint32_t C = cfg->cluster_size, R = cfg->region_size;
  if (C < 512 || (C & (C - 1)) != 0 || R < C || (R & (R - 1)) != 0) return -EINVAL;
  if (strlen(cfg->dir) >= sizeof ((struct islv_volume *)0)->dir) return -ENAMETOOLONG;
  struct islv_volume *v = calloc(1, sizeof *v);
  if (v == NULL) return -ENOMEM;
  strcpy(v->dir, cfg->dir);
  v->C = C;
  v->R = R;
  v->restored = cfg->base_length > 0;
  v->image_fd = v->sidelog_fd = -1;
  v->dirty[0].fd = v->dirty[1].fd = v->intent.fd = v->present_file.fd = -1;
  v->miss_cb = cfg->miss;
  v->event_cb = cfg->event;
  v->destroy_cb = cfg->destroy;
  v->ctx = cfg->ctx;
  v->budget = cfg->side_log_budget;
  atomic_store(&v->len, cfg->image_length);
  atomic_store(&v->phys_len, cfg->image_length);
  atomic_store(&v->base_length, cfg->base_length);
  atomic_store(&v->holes, true);
  atomic_store(&v->refs, 1);
  if (cfg->op_log) v->log = islv_oplog_new(cfg->op_log_data);
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  /* Writer preference: a seal waiting for the writes in flight is not starved by new ones. */
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&v->gate, &attr);
  pthread_rwlockattr_destroy(&attr);
  int err = islv_track_init(v, cfg);
  if (err == 0) err = islv_seal_init(v);
  if (err == 0) err = islv_present_init(v);
  int fd;
  static const char *names[] = { "dirty.0", "dirty.1", "intent" };
  struct islv_pagefile *files[] = { &v->dirty[0], &v->dirty[1], &v->intent };
  static const int kinds[] = { ISLV_KIND_DIRTY, ISLV_KIND_DIRTY, ISLV_KIND_INTENT };
  static const int ids[] = { ISLV_FILE_DIRTY0, ISLV_FILE_DIRTY1, ISLV_FILE_INTENT };
  for (int i = 0; i < 3 && err == 0; i++) {
    err = open_file(cfg->dir, names[i], &fd);
    if (err == 0) err = islv_pagefile_init(files[i], fd, kinds[i], ids[i], v->log);
  }
  if (err == 0 && v->restored) {
    err = open_file(cfg->dir, "present", &fd);
    if (err == 0) err = islv_pagefile_init(&v->present_file, fd, ISLV_KIND_PRESENT, ISLV_FILE_PRESENT, v->log);
  }
  if (err == 0) err = open_file(cfg->dir, "image.qcow2", &v->image_fd);
  if (err == 0) err = open_file(cfg->dir, "sidelog", &v->sidelog_fd);
  if (err != 0) {
    volume_free(v);
    return err;
  }
  *out = v;
  return 0;
}

static struct islv_pagefile *file_of(struct islv_volume *v, int file) {
  switch (file) {
  case ISLV_FILE_DIRTY0: return &v->dirty[0];
  case ISLV_FILE_DIRTY1: return &v->dirty[1];
  case ISLV_FILE_INTENT: return &v->intent;
  case ISLV_FILE_PRESENT: return v->restored ? &v->present_file : NULL;
  default: return NULL;
  }
}

int islv_load_gens(struct islv_volume *v, int file, uint64_t page, uint64_t g0, uint64_t g1) {
  struct islv_pagefile *f = file_of(v, file);
  return f == NULL ? -EINVAL : islv_pagefile_set_gens(f, page, g0, g1);
}

int islv_load_synced(struct islv_volume *v, int file, uint64_t pages) {
  struct islv_pagefile *f = file_of(v, file);
  if (f == NULL) return -EINVAL;
  pthread_mutex_lock(&f->mu);
  f->synced_pages = pages;
  pthread_mutex_unlock(&f->mu);
  return 0;
}

int islv_load_bits(struct islv_volume *v, int which, uint64_t page, const uint8_t *payload, bool unsaved) {
  if (page >= ISLV_MAX_PAGES) return -EINVAL;
  if (which == ISLV_FILE_DIRTY0) {
    islv_bitmap_or_page(v->current, page, payload, unsaved);
    return 0;
  }
  if (which == ISLV_FILE_PRESENT && v->restored) {
    islv_bitmap_or_page(v->present, page, payload, false);
    islv_bitmap_or_page(v->present_saved, page, payload, false);
    return 0;
  }
  return -EINVAL;
}

uint64_t islv_size(struct islv_volume *v) {
  return atomic_load(&v->len);
}

void islv_ref(struct islv_volume *v) {
  atomic_fetch_add(&v->refs, 1);
}

void islv_unref(struct islv_volume *v) {
  if (atomic_fetch_sub(&v->refs, 1) == 1) volume_free(v);
}

int64_t islv_read(struct islv_volume *v, void *buf, size_t len, uint64_t off, struct isl_waiter *w) {
  if (atomic_load(&v->closed)) return -EIO;
  if (len == 0) return 0;
  if (off >= ISLV_MAX_LENGTH || len > ISLV_MAX_LENGTH - off) return -EFBIG;
  for (;;) {
    uint64_t L = atomic_load(&v->len);
    if (off >= L) return 0;
    uint64_t want = len < L - off ? len : L - off;
    uint64_t c0 = off / v->C, c1 = (off + want - 1) / v->C;
    if (v->restored && off < atomic_load(&v->base_length)) {
      bool missing = false;
      for (uint64_t c = c0; c <= c1 && !missing; c++) {
        if (islv_present(v, c)) continue;
        missing = true;
        int parked = islv_park(v, c, c1, w, true);
        if (parked != 0) return parked;
      }
      if (missing) continue; /* it became present meanwhile: look again */
    }
    pthread_rwlock_rdlock(&v->gate);
    if (atomic_load(&v->closed)) {
      pthread_rwlock_unlock(&v->gate);
      return -EIO;
    }
    L = atomic_load(&v->len);
    if (off >= L) want = 0;
    else if (want > L - off) want = L - off;
    uint64_t got = 0;
    int err = want == 0 ? 0 : islv_pread_all(v->image_fd, buf, want, off, &got);
    pthread_rwlock_unlock(&v->gate);
    if (err != 0) return err;
    if (got < want) memset((uint8_t *)buf + got, 0, want - got);
    CNT(v, reads);
    atomic_fetch_add_explicit(&v->n.bytes_read, want, memory_order_relaxed);
    return (int64_t)want;
  }
}

/*
 * Restored volume, inside the gate: a wholly covered missing cluster becomes present now; a
 * partially covered missing one is returned in *need (the caller leaves the gate and parks).
 * made[]: the clusters this call made present (their waiters are woken after the write).
 */
static bool claim_clusters(struct islv_volume *v, uint64_t off, uint64_t end, uint64_t *need, uint64_t *made0, uint64_t *made1) {
  *made0 = 1, *made1 = 0;
  if (!v->restored || off >= atomic_load(&v->base_length)) return true;
  uint64_t c0 = off / v->C, c1 = (end - 1) / v->C;
  for (uint64_t c = c0; c <= c1; c++) {
    if (islv_present(v, c)) continue;
    bool partial = c * v->C < off || (c + 1) * v->C > end;
    if (partial) {
      *need = c;
      return false;
    }
  }
  for (uint64_t c = c0; c <= c1; c++) {
    if (islv_present(v, c)) continue;
    pthread_mutex_t *lock = &v->stripe[c % ISLV_STRIPES];
    pthread_mutex_lock(lock);
    if (!islv_present(v, c)) {
      islv_bitmap_set(v->present, c);
      if (*made0 > *made1) *made0 = c;
      *made1 = c;
    }
    pthread_mutex_unlock(lock);
  }
  return true;
}

static void wake_made(struct islv_volume *v, uint64_t made0, uint64_t made1) {
  for (uint64_t c = made0; made0 <= made1 && c <= made1; c++) islv_wake(v, c, 0);
}

/* The data of a write, whole clusters of zeros as holes (their dirty pages durable first). */
static int write_data(struct islv_volume *v, const uint8_t *buf, uint64_t off, uint64_t end) {
  uint64_t C = v->C;
  uint64_t first = (off + C - 1) / C, last = end / C;
  bool any = false;
  for (uint64_t c = first; c < last && !any; c++) any = islv_all_zero(buf + (c * C - off), C);
  if (!any) {
    islv_oplog_data(v->log, ISLV_FILE_IMAGE, ISLV_OP_WRITE, off, end - off, buf, end - off);
    return islv_pwrite_all(v->image_fd, buf, end - off, off);
  }
  int err = islv_persist(v);
  if (err != 0) return err;
  uint64_t pos = off;
  for (uint64_t c = first; c < last;) {
    if (!islv_all_zero(buf + (c * C - off), C)) {
      c++;
      continue;
    }
    uint64_t a = c;
    while (c < last && islv_all_zero(buf + (c * C - off), C)) c++;
    uint64_t from = a * C, to = c * C;
    if (from > pos) {
      islv_oplog_data(v->log, ISLV_FILE_IMAGE, ISLV_OP_WRITE, pos, from - pos, buf + (pos - off), from - pos);
      if ((err = islv_pwrite_all(v->image_fd, buf + (pos - off), from - pos, pos)) != 0) return err;
    }
    uint64_t phys = atomic_load(&v->phys_len);
    if (to > phys) {
      /* Extend by writing the last byte: a write never shrinks the file. */
      islv_oplog_data(v->log, ISLV_FILE_IMAGE, ISLV_OP_WRITE, to - 1, 1, buf + (to - 1 - off), 1);
      if ((err = islv_pwrite_all(v->image_fd, buf + (to - 1 - off), 1, to - 1)) != 0) return err;
      while (phys < to && !atomic_compare_exchange_weak(&v->phys_len, &phys, to)) {
      }
    }
    if ((err = islv_punch(v, from, to - from)) != 0) return err;
    atomic_fetch_add_explicit(&v->n.zero_clusters, c - a, memory_order_relaxed);
    pos = to;
  }
  if (end > pos) {
    islv_oplog_data(v->log, ISLV_FILE_IMAGE, ISLV_OP_WRITE, pos, end - pos, buf + (pos - off), end - pos);
    err = islv_pwrite_all(v->image_fd, buf + (pos - off), end - pos, pos);
  }
  return err;
}

static void grow_to(_Atomic uint64_t *x, uint64_t to) {
  uint64_t cur = atomic_load(x);
  while (cur < to && !atomic_compare_exchange_weak(x, &cur, to)) {
  }
}

/* Enter the gate for a change of [off, end): restored clusters claimed, or parked (returns != 1). */
static int enter_for_change(struct islv_volume *v, uint64_t off, uint64_t end, struct isl_waiter *w, uint64_t *made0, uint64_t *made1) {
  for (;;) {
    pthread_rwlock_rdlock(&v->gate);
    if (atomic_load(&v->closed)) {
      pthread_rwlock_unlock(&v->gate);
      return -EIO;
    }
    uint64_t need;
    if (claim_clusters(v, off, end, &need, made0, made1)) return 1;
    pthread_rwlock_unlock(&v->gate);
    int r = islv_park(v, need, need, w, false);
    if (r != 0) return r;
  }
}

int64_t islv_write(struct islv_volume *v, const void *buf, size_t len, uint64_t off, struct isl_waiter *w) {
  if (atomic_load(&v->closed)) return -EIO;
  if (len == 0) return 0;
  if (off >= ISLV_MAX_LENGTH || len > ISLV_MAX_LENGTH - off) return -EFBIG;
  uint64_t end = off + len, c0 = off / v->C, c1 = (end - 1) / v->C, made0, made1;
  int r = enter_for_change(v, off, end, w, &made0, &made1);
  if (r != 1) return r;
  int err = islv_ensure_intent(v, off, end);
  if (err == 0) {
    islv_protect(v, c0, c1);
    islv_mark_dirty(v, c0, c1);
    grow_to(&v->len, end);
    err = write_data(v, buf, off, end);
  }
  if (err == 0) {
    grow_to(&v->phys_len, end);
    for (uint64_t c = c0; c <= c1; c++) islv_present_written(v, c);
    CNT(v, writes);
    atomic_fetch_add_explicit(&v->n.bytes_written, len, memory_order_relaxed);
  }
  pthread_rwlock_unlock(&v->gate);
  wake_made(v, made0, made1);
  return err != 0 ? err : (int64_t)len;
}

int islv_fsync(struct islv_volume *v) {
  pthread_rwlock_rdlock(&v->gate);
  int err = atomic_load(&v->closed) ? -EIO : 0;
  if (err == 0) {
    CNT(v, fsyncs);
    err = islv_sync_present(v);
  }
  pthread_rwlock_unlock(&v->gate);
  return err;
}

int islv_fallocate(struct islv_volume *v, int mode, uint64_t off, uint64_t len, struct isl_waiter *w) {
  if (atomic_load(&v->closed)) return -EIO;
  bool punch = mode == (ISL_FALLOC_PUNCH_HOLE | ISL_FALLOC_KEEP_SIZE);
  bool zero = (mode & ~ISL_FALLOC_KEEP_SIZE) == ISL_FALLOC_ZERO_RANGE;
  if (!punch && !zero) return -EOPNOTSUPP;
  if (len == 0) return -EINVAL;
  if (off >= ISLV_MAX_LENGTH || len > ISLV_MAX_LENGTH - off) return -EFBIG;
  bool keep = (mode & ISL_FALLOC_KEEP_SIZE) != 0;
  uint64_t end = off + len;
  if (keep) {
    uint64_t L = atomic_load(&v->len);
    if (off >= L) return 0;
    if (end > L) end = L;
  }
  uint64_t c0 = off / v->C, c1 = (end - 1) / v->C, made0, made1;
  int r = enter_for_change(v, off, end, w, &made0, &made1);
  if (r != 1) return r;
  int err = islv_ensure_intent(v, off, end);
  if (err == 0) {
    islv_protect(v, c0, c1);
    islv_mark_dirty(v, c0, c1);
    /* A hole cannot be told from an old one by a rescan: the dirty bits reach the disk first. */
    err = islv_persist(v);
  }
  if (err == 0) {
    if (!keep) grow_to(&v->len, end);
    if (punch) {
      err = islv_punch(v, off, end - off);
    } else if (fallocate(v->image_fd, mode, (off_t)off, (off_t)(end - off)) == 0) {
      islv_oplog_add(v->log, ISLV_FILE_IMAGE, ISLV_OP_PUNCH, off, end - off);
    } else {
      err = errno == EOPNOTSUPP ? islv_punch(v, off, end - off) : -errno;
    }
  }
  if (err == 0) {
    if (!keep) grow_to(&v->phys_len, end);
    for (uint64_t c = c0; c <= c1; c++) islv_present_written(v, c);
    CNT(v, discards);
  }
  pthread_rwlock_unlock(&v->gate);
  wake_made(v, made0, made1);
  return err;
}

int islv_truncate(struct islv_volume *v, uint64_t size) {
  if (size > ISLV_MAX_LENGTH) return -EFBIG;
  pthread_rwlock_wrlock(&v->gate);
  int err = atomic_load(&v->closed) ? -EIO : 0;
  uint64_t old = atomic_load(&v->len), C = v->C;
  bool lowered = false;
  if (err == 0 && size != old) {
    uint64_t lo = old < size ? old : size, hi = old < size ? size : old;
    /* The cluster cut by the new end (or left partial by the old one) keeps base content. */
    if (v->restored && lo % C != 0 && lo < atomic_load(&v->base_length) && !islv_present(v, lo / C)) err = -EAGAIN;
    if (err == 0) {
      uint64_t c0 = lo / C, c1 = (hi + C - 1) / C - 1;
      islv_protect(v, c0, c1);
      islv_bitmap_set_range(v->current, c0, c1 + 1);
      err = islv_persist(v);
    }
    if (err == 0) {
      islv_oplog_add(v->log, ISLV_FILE_IMAGE, ISLV_OP_TRUNCATE, size, 0);
      if (ftruncate(v->image_fd, (off_t)size) != 0) err = -errno;
    }
    if (err == 0) {
      atomic_store(&v->len, size);
      atomic_store(&v->phys_len, size);
      if (v->restored && size < atomic_load(&v->base_length)) {
        /* What lies past the new end is no longer base content, even if the image grows again. */
        atomic_store(&v->base_length, (size + C - 1) / C * C);
        err = islv_sync_image(v);
        lowered = true;
      }
    }
  }
  pthread_rwlock_unlock(&v->gate);
  if (lowered) {
    islv_wake_all(v, 0);
    if (v->event_cb != NULL) v->event_cb(v->ctx, ISLV_EVENT_STATE, 0, "the base length was lowered");
  }
  return err;
}

void islv_record_info(struct islv_volume *v, struct islv_record_info *out) {
  pthread_mutex_lock(&v->tmu);
  out->epoch = v->epoch;
  out->completed_epoch = v->completed_epoch;
  pthread_mutex_unlock(&v->tmu);
  pthread_mutex_lock(&v->imu);
  out->recordable_intent_epoch = v->recordable_intent_epoch;
  pthread_mutex_unlock(&v->imu);
  out->image_length = atomic_load(&v->len);
  out->base_length = v->restored ? atomic_load(&v->base_length) : 0;
  out->synced_pages[0] = islv_pagefile_synced_pages(&v->dirty[0]);
  out->synced_pages[1] = islv_pagefile_synced_pages(&v->dirty[1]);
  out->synced_pages[2] = islv_pagefile_synced_pages(&v->intent);
  out->synced_pages[3] = v->restored ? islv_pagefile_synced_pages(&v->present_file) : 0;
}

void islv_get_stats(struct islv_volume *v, struct islv_stats *o) {
  memset(o, 0, sizeof *o);
#define S(f) o->f = atomic_load(&v->n.f)
  S(reads), S(writes), S(bytes_read), S(bytes_written), S(zero_clusters), S(fsyncs), S(image_syncs), S(discards);
  S(seals), S(seals_completed), S(seals_abandoned), S(side_log_copies), S(read_retries);
  S(parked), S(installs), S(fetched_clusters), S(dirty_syncs), S(intent_syncs), S(intent_epochs), S(present_syncs);
#undef S
  pthread_mutex_lock(&v->tmu);
  o->dirty_clusters = islv_bitmap_count(v->current);
  o->sealed_clusters = v->sealed != NULL ? v->sealed->count : 0;
  pthread_mutex_unlock(&v->tmu);
  pthread_mutex_lock(&v->smu);
  o->side_log_bytes = v->sl_in_use * v->C;
  pthread_mutex_unlock(&v->smu);
  o->present_clusters = v->restored ? islv_bitmap_count(v->present) : 0;
  o->dirty_page_writes = v->dirty[0].page_writes + v->dirty[1].page_writes;
  o->intent_page_writes = v->intent.page_writes;
  o->present_page_writes = v->restored ? v->present_file.page_writes : 0;
}

struct islv_op *islv_take_ops(struct islv_volume *v, uint64_t *n) {
  return islv_oplog_take(v->log, n);
}

int islv_close(struct islv_volume *v, bool *clean) {
  *clean = false;
  pthread_rwlock_wrlock(&v->gate);
  bool was = atomic_exchange(&v->closed, true);
  pthread_rwlock_unlock(&v->gate);
  if (was) return -ESHUTDOWN;
  islv_wake_all(v, -EIO);
  islv_abandon_open(v, "the volume was closed");
  int err = islv_persist(v);
  if (err == 0) err = islv_sync_present(v);
  *clean = err == 0;
  return err;
}

static int64_t op_read(void *f, void *buf, size_t len, uint64_t off, struct isl_waiter *w) {
  return islv_read(f, buf, len, off, w);
}
static int64_t op_write(void *f, const void *buf, size_t len, uint64_t off, struct isl_waiter *w) {
  return islv_write(f, buf, len, off, w);
}
static int op_fsync(void *f) {
  return islv_fsync(f);
}
static int op_fallocate(void *f, int mode, uint64_t off, uint64_t len, struct isl_waiter *w) {
  return islv_fallocate(f, mode, off, len, w);
}
static int op_truncate(void *f, uint64_t size) {
  return islv_truncate(f, size);
}
static uint64_t op_size(void *f) {
  return islv_size(f);
}
static void op_ref(void *f) {
  islv_ref(f);
}
static void op_unref(void *f) {
  islv_unref(f);
}

const struct isl_file_ops islv_file_ops = {
  .read = op_read,
  .write = op_write,
  .fsync = op_fsync,
  .fallocate = op_fallocate,
  .truncate = op_truncate,
  .size = op_size,
  .ref = op_ref,
  .unref = op_unref,
};
