/*
 * volume-stress: many threads on one volume of native/volume/, for a ThreadSanitizer build
 * (test/native/volume-stress.test.ts builds it with -fsanitize=thread and runs it).
 *
 * Usage: volume-stress DIR THREADS SECONDS RESTORED(0|1)
 * DIR must exist and be empty. Every I/O thread owns a band of clusters (its data is checked at
 * the end against what it wrote last) and also writes into a shared band (not checked: it
 * contends with the others). One control thread seals, reads and uploads sealed clusters,
 * completes or abandons, persists and starts new intent epochs. With RESTORED=1 the volume has
 * a base whose missing clusters are installed by a fetch thread when a miss is reported;
 * clusters never written must read as the base afterwards.
 * Exits 0 when every check holds; prints what failed otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../native/volume/volume.h"

#define C 4096u
#define BAND 64u /* clusters per thread */
#define MAXT 64

static struct islv_volume *vol;
static atomic_bool stop;
static int nthreads;
static uint64_t base_len;
static _Atomic int failures;

static uint8_t base_byte(uint64_t pos) {
  return (uint8_t)(pos * 2654435761u >> 13) | 1;
}

/* ---------- misses: a queue the fetch thread drains ---------- */
static pthread_mutex_t qmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qcv = PTHREAD_COND_INITIALIZER;
static uint64_t queue_c[4096];
static int qn;

static void on_miss(void *ctx, uint64_t c0, uint64_t c1, bool reading) {
  pthread_mutex_lock(&qmu);
  for (uint64_t c = c0; c <= c1 && qn < 4096; c++) queue_c[qn++] = c;
  pthread_cond_signal(&qcv);
  pthread_mutex_unlock(&qmu);
}

static void on_event(void *ctx, int kind, uint64_t a, const char *msg) {
}

static void *fetcher(void *arg) {
  uint8_t buf[C];
  for (;;) {
    pthread_mutex_lock(&qmu);
    while (qn == 0 && !atomic_load(&stop)) pthread_cond_wait(&qcv, &qmu);
    if (qn == 0) {
      pthread_mutex_unlock(&qmu);
      return NULL;
    }
    uint64_t c = queue_c[--qn];
    pthread_mutex_unlock(&qmu);
    for (uint64_t i = 0; i < C; i++) buf[i] = base_byte(c * C + i);
    int err = islv_install(vol, c, buf, C);
    if (err != 0 && err != -ESHUTDOWN) {
      fprintf(stderr, "install %llu: %s\n", (unsigned long long)c, strerror(-err));
      atomic_fetch_add(&failures, 1);
    }
  }
}

/* ---------- a waiter for parked calls ---------- */
struct waiter {
  struct isl_waiter w;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int woken, err;
};

/* Every ISL_PARKED return must be followed by exactly one wake. */
static _Atomic uint64_t parks, wakes;

static void wake(struct isl_waiter *w, int err) {
  struct waiter *x = (struct waiter *)w;
  atomic_fetch_add(&wakes, 1);
  pthread_mutex_lock(&x->mu);
  x->woken = 1;
  x->err = err;
  pthread_cond_signal(&x->cv);
  pthread_mutex_unlock(&x->mu);
}

/* Run an operation until it does not park. */
#define RETRY(expr, out)                                                   \
  do {                                                                     \
    for (;;) {                                                             \
      struct waiter wt = { .w = { .wake = wake } };                        \
      pthread_mutex_init(&wt.mu, NULL);                                    \
      pthread_cond_init(&wt.cv, NULL);                                     \
      struct isl_waiter *W = &wt.w;                                        \
      (out) = (expr);                                                      \
      if ((out) == ISL_PARKED) {                                           \
        atomic_fetch_add(&parks, 1);                                       \
        pthread_mutex_lock(&wt.mu);                                        \
        while (!wt.woken) pthread_cond_wait(&wt.cv, &wt.mu);               \
        pthread_mutex_unlock(&wt.mu);                                      \
        if (wt.err != 0) (out) = wt.err;                                   \
      }                                                                    \
      pthread_mutex_destroy(&wt.mu);                                       \
      pthread_cond_destroy(&wt.cv);                                        \
      if ((out) != ISL_PARKED) break;                                      \
    }                                                                      \
  } while (0)

struct worker {
  int id;
  unsigned seed;
  uint8_t last[BAND][C]; /* what this thread last wrote (or zero) */
  uint8_t written[BAND];
};

static uint64_t band_start(int id) {
  return (uint64_t)(id + 1) * BAND; /* band 0 is shared */
}

static void *io_thread(void *arg) {
  struct worker *wk = arg;
  uint8_t *buf = malloc(4 * C);
  while (!atomic_load(&stop)) {
    unsigned r = rand_r(&wk->seed);
    int64_t res;
    if (r % 10 < 5) {
      /* A write in the own band: whole clusters (sometimes zero) or a partial one. */
      uint64_t k = (r >> 4) % BAND;
      uint64_t n = 1 + (r >> 12) % 2;
      if (k + n > BAND) n = BAND - k;
      bool zero = (r >> 16) % 4 == 0;
      bool partial = (r >> 18) % 3 == 0;
      uint64_t off = (band_start(wk->id) + k) * C, len = n * C;
      for (uint64_t i = 0; i < len; i++) buf[i] = zero ? 0 : (uint8_t)rand_r(&wk->seed);
      if (partial) {
        off += 100;
        len = 1000;
        n = 1;
      }
      RETRY(islv_write(vol, buf, len, off, W), res);
      if (res != (int64_t)len) {
        fprintf(stderr, "write: %lld\n", (long long)res);
        atomic_fetch_add(&failures, 1);
        continue;
      }
      if (partial) {
        if (!wk->written[k]) {
          /* the rest of the cluster is base content, or zero past the base */
          for (uint64_t i = 0; i < C; i++) {
            uint64_t pos = (band_start(wk->id) + k) * C + i;
            wk->last[k][i] = base_len > 0 && pos < base_len ? base_byte(pos) : 0;
          }
        }
        memcpy(wk->last[k] + 100, buf, 1000);
      } else {
        for (uint64_t i = 0; i < n; i++) memcpy(wk->last[k + i], buf + i * C, C);
      }
      for (uint64_t i = 0; i < n; i++) wk->written[k + i] = 1;
    } else if (r % 10 < 7) {
      /* Shared band: contended writes and discards. */
      uint64_t off = ((r >> 4) % (BAND - 3)) * C + (r >> 20) % C; /* stays below the first own band */
      uint64_t len = 1 + (r >> 8) % (2 * C);
      for (uint64_t i = 0; i < len; i++) buf[i] = (uint8_t)r;
      if ((r >> 30) & 1) {
        int e;
        RETRY(islv_fallocate(vol, ISL_FALLOC_PUNCH_HOLE | ISL_FALLOC_KEEP_SIZE, off, len, W), e);
        res = e;
      } else {
        RETRY(islv_write(vol, buf, len, off, W), res);
      }
      if (res < 0) {
        fprintf(stderr, "shared write/discard: %lld\n", (long long)res);
        atomic_fetch_add(&failures, 1);
      }
    } else if (r % 10 < 9) {
      uint64_t off = ((r >> 4) % ((uint64_t)(nthreads + 1) * BAND)) * C + (r >> 20) % 512;
      RETRY(islv_read(vol, buf, 2 * C, off, W), res);
      if (res < 0) {
        fprintf(stderr, "read: %lld\n", (long long)res);
        atomic_fetch_add(&failures, 1);
      }
    } else if ((r >> 8) & 1) {
      uint64_t c = (r >> 5) % ((uint64_t)(nthreads + 1) * BAND);
      (void)islv_is_dirty(vol, c);
      (void)islv_is_present(vol, c);
    } else {
      int e = islv_fsync(vol);
      if (e != 0) {
        fprintf(stderr, "fsync: %d\n", e);
        atomic_fetch_add(&failures, 1);
      }
    }
  }
  free(buf);
  return NULL;
}

static void *control(void *arg) {
  uint8_t buf[C];
  unsigned seed = 7;
  while (!atomic_load(&stop)) {
    uint64_t epoch, length, count;
    int e = islv_seal(vol, &epoch, &length, &count);
    if (e != 0) {
      fprintf(stderr, "seal: %d\n", e);
      atomic_fetch_add(&failures, 1);
      break;
    }
    uint64_t *list, n;
    if (islv_sealed_list(vol, epoch, &list, &n) == 0) {
      for (uint64_t i = 0; i < n && !atomic_load(&stop); i++) {
        uint64_t len;
        int r = islv_read_sealed(vol, epoch, list[i], buf, &len);
        if (r == ISLV_MISSING) {
          on_miss(NULL, list[i], list[i], false);
          continue;
        }
        if (r == 0) islv_mark_uploaded(vol, epoch, list[i]);
        else if (r != -ECANCELED) {
          fprintf(stderr, "readSealed: %d\n", r);
          atomic_fetch_add(&failures, 1);
        }
      }
      free(list);
    }
    if (rand_r(&seed) % 3 == 0) islv_abandon(vol, epoch, "stress");
    else islv_complete(vol, epoch);
    /* The tail past the bands grows and shrinks; the counters are read while I/O runs. */
    uint64_t len = (uint64_t)(nthreads + 1) * BAND * C;
    int te = islv_truncate(vol, len + (rand_r(&seed) % 4) * C);
    if (te != 0) {
      fprintf(stderr, "truncate: %d\n", te);
      atomic_fetch_add(&failures, 1);
    }
    struct islv_stats st;
    struct islv_record_info ri;
    islv_get_stats(vol, &st);
    islv_record_info(vol, &ri);
    islv_persist(vol);
    uint64_t ie;
    if (islv_new_intent_epoch(vol, &ie) == 0 && ie > 0) islv_intent_recorded(vol, ie);
    usleep(2000);
  }
  return NULL;
}

static int touch(const char *dir, const char *name, uint64_t size) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || ftruncate(fd, (off_t)size) != 0) return -1;
  return close(fd);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: volume-stress DIR THREADS SECONDS RESTORED\n");
    return 2;
  }
  const char *dir = argv[1];
  nthreads = atoi(argv[2]);
  int seconds = atoi(argv[3]);
  bool restored = atoi(argv[4]) != 0;
  if (nthreads < 1 || nthreads > MAXT) return 2;
  uint64_t len = (uint64_t)(nthreads + 1) * BAND * C;
  base_len = restored ? len : 0;
  const char *files[] = { "dirty.0", "dirty.1", "intent", "present", "sidelog" };
  for (int i = 0; i < 5; i++) {
    if (touch(dir, files[i], 0) != 0) return perror(files[i]), 1;
  }
  if (touch(dir, "image.qcow2", len) != 0) return perror("image"), 1;
  struct islv_config cfg = {
    .dir = dir, .cluster_size = C, .region_size = 16 * C, .image_length = len, .base_length = base_len,
    .epoch = 1, .completed_epoch = 0, .intent_epoch = 1, .side_log_budget = 64 * C,
    .miss = on_miss, .event = on_event,
  };
  int err = islv_open(&cfg, &vol);
  if (err != 0) return fprintf(stderr, "open: %s\n", strerror(-err)), 1;
  static struct worker wk[MAXT];
  pthread_t th[MAXT], ctl, fth;
  pthread_create(&fth, NULL, fetcher, NULL);
  for (int i = 0; i < nthreads; i++) {
    wk[i].id = i;
    wk[i].seed = (unsigned)(i * 7919 + 1);
    pthread_create(&th[i], NULL, io_thread, &wk[i]);
  }
  pthread_create(&ctl, NULL, control, NULL);
  sleep((unsigned)seconds);
  atomic_store(&stop, true);
  for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
  pthread_join(ctl, NULL);
  pthread_mutex_lock(&qmu);
  pthread_cond_broadcast(&qcv);
  pthread_mutex_unlock(&qmu);
  /* Checks: every band holds what its thread wrote last; unwritten restored clusters hold the base. */
  uint8_t *buf = malloc(C), expect[C];
  uint64_t checked = 0, dirty_missing = 0;
  for (int t = 0; t < nthreads; t++) {
    for (uint64_t k = 0; k < BAND; k++) {
      uint64_t c = band_start(t) + k;
      int64_t res;
      RETRY(islv_read(vol, buf, C, c * C, W), res);
      if (wk[t].written[k]) memcpy(expect, wk[t].last[k], C);
      else for (uint64_t i = 0; i < C; i++) expect[i] = restored ? base_byte(c * C + i) : 0;
      if (res != C || memcmp(buf, expect, C) != 0) {
        fprintf(stderr, "thread %d cluster %llu: content differs\n", t, (unsigned long long)c);
        atomic_fetch_add(&failures, 1);
      }
      if (wk[t].written[k] && !islv_is_dirty(vol, c)) dirty_missing++;
      checked++;
    }
  }
  atomic_store(&stop, true);
  pthread_mutex_lock(&qmu);
  pthread_cond_broadcast(&qcv);
  pthread_mutex_unlock(&qmu);
  pthread_join(fth, NULL);
  if (atomic_load(&parks) != atomic_load(&wakes)) {
    fprintf(stderr, "%llu calls parked but %llu wakes\n", (unsigned long long)atomic_load(&parks), (unsigned long long)atomic_load(&wakes));
    atomic_fetch_add(&failures, 1);
  }
  struct islv_stats s;
  islv_get_stats(vol, &s);
  bool clean;
  err = islv_close(vol, &clean);
  if (err != 0 || !clean) {
    fprintf(stderr, "close: %d\n", err);
    atomic_fetch_add(&failures, 1);
  }
  islv_unref(vol);
  free(buf);
  printf("threads %d: %llu writes, %llu reads, %llu fsyncs, %llu discards, %llu seals (%llu completed, %llu abandoned), "
         "%llu side log copies, %llu parked, %llu fetched, %llu intent syncs, %llu dirty syncs; %llu clusters checked\n",
         nthreads, (unsigned long long)s.writes, (unsigned long long)s.reads, (unsigned long long)s.fsyncs, (unsigned long long)s.discards,
         (unsigned long long)s.seals, (unsigned long long)s.seals_completed, (unsigned long long)s.seals_abandoned, (unsigned long long)s.side_log_copies,
         (unsigned long long)s.parked, (unsigned long long)s.fetched_clusters, (unsigned long long)s.intent_syncs, (unsigned long long)s.dirty_syncs,
         (unsigned long long)checked);
  (void)dirty_missing;
  return atomic_load(&failures) == 0 ? 0 : 1;
}
