/*
 * volume-bench: what the C write path costs over plain pread/pwrite of the same file.
 * THREADS threads do 4 KiB random writes (then reads) over a 64 MiB image for SECONDS each,
 * through islv_write/islv_read and with pwrite/pread on the image file itself, interleaved,
 * five rounds; the medians are printed (the machine may be shared: interleaving spreads the
 * noise over both).
 *
 * Usage: volume-bench DIR THREADS SECONDS   (DIR must exist and be empty)
 * Build: cc -O2 -pthread -o volume-bench test/native/volume-bench.c native/volume/{bitmap,oplog,pagefile,present,seal,track,volume}.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../native/volume/volume.h"

#define C 65536u
#define SPAN (64u * 1024 * 1024)

static struct islv_volume *vol;
static int fd;
static atomic_bool stop;
static _Atomic uint64_t done;
static int mode; /* 0 volume write, 1 volume read, 2 pwrite, 3 pread */

static void *worker(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  uint8_t buf[4096];
  memset(buf, (int)seed | 1, sizeof buf);
  uint64_t n = 0;
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    uint64_t off = (uint64_t)(rand_r(&seed) % (SPAN / 4096)) * 4096;
    int64_t r;
    switch (mode) {
    case 0: r = islv_write(vol, buf, sizeof buf, off, NULL); break;
    case 1: r = islv_read(vol, buf, sizeof buf, off, NULL); break;
    case 2: r = pwrite(fd, buf, sizeof buf, (off_t)off); break;
    default: r = pread(fd, buf, sizeof buf, (off_t)off); break;
    }
    if (r != 4096) {
      fprintf(stderr, "mode %d: %lld\n", mode, (long long)r);
      exit(1);
    }
    n++;
  }
  atomic_fetch_add(&done, n);
  return NULL;
}

static double run(int m, int threads, int seconds) {
  pthread_t th[64];
  mode = m;
  atomic_store(&stop, false);
  atomic_store(&done, 0);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i * 7919 + 1));
  sleep((unsigned)seconds);
  atomic_store(&stop, true);
  for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &b);
  return (double)atomic_load(&done) / ((double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
}

int main(int argc, char **argv) {
  if (argc != 4) return fprintf(stderr, "usage: volume-bench DIR THREADS SECONDS\n"), 2;
  const char *dir = argv[1];
  int threads = atoi(argv[2]), seconds = atoi(argv[3]);
  if (threads < 1 || threads > 64) return 2;
  char path[4200];
  const char *files[] = { "dirty.0", "dirty.1", "intent", "present", "sidelog", "image.qcow2" };
  for (int i = 0; i < 6; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (f < 0) return perror(path), 1;
    close(f);
  }
  /* The image written once in full, so neither run allocates blocks. */
  snprintf(path, sizeof path, "%s/image.qcow2", dir);
  fd = open(path, O_RDWR);
  static uint8_t fill[1 << 20];
  memset(fill, 7, sizeof fill);
  for (uint64_t off = 0; off < SPAN; off += sizeof fill) pwrite(fd, fill, sizeof fill, (off_t)off);
  fdatasync(fd);
  struct islv_config cfg = { .dir = dir, .cluster_size = C, .region_size = 64u << 20, .image_length = SPAN, .epoch = 1, .intent_epoch = 1, .side_log_budget = 1u << 30 };
  int err = islv_open(&cfg, &vol);
  if (err != 0) return fprintf(stderr, "open: %s\n", strerror(-err)), 1;
  double r[4][5];
  for (int round = 0; round < 5; round++) {
    for (int m = 0; m < 4; m++) r[m][round] = run(m, threads, seconds);
  }
  double med[4];
  for (int m = 0; m < 4; m++) {
    for (int i = 0; i < 5; i++) {
      for (int j = i + 1; j < 5; j++) {
        if (r[m][j] < r[m][i]) {
          double x = r[m][i];
          r[m][i] = r[m][j];
          r[m][j] = x;
        }
      }
    }
    med[m] = r[m][2];
  }
  double vw = med[0], vr = med[1], pw = med[2], pr = med[3];
  printf("4 KiB random, %d threads, medians of 5 interleaved rounds: write %.0f/s through the volume vs %.0f/s pwrite (%.2fx); read %.0f/s vs %.0f/s pread (%.2fx)\n", threads, vw, pw, vw / pw, vr, pr, vr / pr);
  bool clean;
  islv_close(vol, &clean);
  islv_unref(vol);
  return 0;
}
