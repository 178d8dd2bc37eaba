/* pagefile.c: see pagefile.h. */
#define _GNU_SOURCE
#include "pagefile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bitmap.h"
#include "oplog.h"

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[n] = c;
  }
}

/* CRC-32 of the zlib polynomial, continuing from crc (0 to start). */
uint32_t islv_crc32(uint32_t crc, const uint8_t *buf, uint64_t len) {
  pthread_once(&crc_once, crc_init);
  crc = ~crc;
  for (uint64_t i = 0; i < len; i++) crc = crc_table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

static void put_be64(uint8_t *p, uint64_t v) {
  put_be32(p, (uint32_t)(v >> 32));
  put_be32(p + 4, (uint32_t)v);
}

void islv_page_encode(uint8_t *out, int kind, uint64_t index, uint64_t generation, uint64_t stamp, const uint8_t *payload) {
  put_be32(out, 0x49534250u);
  out[4] = 1;
  out[5] = (uint8_t)kind;
  out[6] = out[7] = 0;
  put_be64(out + 8, generation);
  put_be64(out + 16, stamp);
  put_be32(out + 24, (uint32_t)index);
  if (payload == NULL) memset(out + 32, 0, ISLV_PAYLOAD_BYTES);
  else memcpy(out + 32, payload, ISLV_PAYLOAD_BYTES);
  uint32_t crc = islv_crc32(0, out, 28);
  crc = islv_crc32(crc, out + 32, ISLV_SLOT_SIZE - 32);
  put_be32(out + 28, crc);
}

int islv_pagefile_init(struct islv_pagefile *f, int fd, int kind, int id, struct islv_oplog *log) {
  memset(f, 0, sizeof *f);
  f->fd = fd;
  f->kind = kind;
  f->id = id;
  f->log = log;
  return -pthread_mutex_init(&f->mu, NULL);
}

void islv_pagefile_destroy(struct islv_pagefile *f) {
  free(f->gens);
  free(f->unsynced);
  f->gens = NULL;
  f->unsynced = NULL;
  if (f->fd >= 0) close(f->fd);
  f->fd = -1;
  pthread_mutex_destroy(&f->mu);
}

static int grow(struct islv_pagefile *f, uint64_t page) {
  if (page < f->cap) return 0;
  if (page >= ISLV_MAX_PAGES) return -EFBIG;
  uint64_t cap = f->cap ? f->cap : 64;
  while (cap <= page) cap *= 2;
  uint64_t(*gens)[2] = realloc(f->gens, cap * sizeof *gens);
  if (gens == NULL) return -ENOMEM;
  f->gens = gens;
  uint8_t *unsynced = realloc(f->unsynced, cap);
  if (unsynced == NULL) return -ENOMEM;
  f->unsynced = unsynced;
  memset(f->gens + f->cap, 0, (cap - f->cap) * sizeof *gens);
  memset(f->unsynced + f->cap, 0, cap - f->cap);
  f->cap = cap;
  return 0;
}

int islv_pagefile_set_gens(struct islv_pagefile *f, uint64_t page, uint64_t g0, uint64_t g1) {
  pthread_mutex_lock(&f->mu);
  int err = grow(f, page);
  if (err == 0) {
    f->gens[page][0] = g0;
    f->gens[page][1] = g1;
  }
  pthread_mutex_unlock(&f->mu);
  return err;
}

static int pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t pos) {
  while (len > 0) {
    ssize_t n = pwrite(fd, buf, len, (off_t)pos);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    buf += n, len -= (size_t)n, pos += (uint64_t)n;
  }
  return 0;
}

int islv_pagefile_write(struct islv_pagefile *f, const uint64_t *index, uint64_t n, uint64_t stamp, const uint8_t *payloads) {
  uint8_t both[2 * ISLV_SLOT_SIZE];
  int err = 0;
  pthread_mutex_lock(&f->mu);
  for (uint64_t i = 0; i < n && err == 0; i++) {
    uint64_t p = index[i];
    if ((err = grow(f, p)) != 0) break;
    uint64_t *g = f->gens[p];
    uint64_t generation = (g[0] > g[1] ? g[0] : g[1]) + 1;
    islv_page_encode(both, f->kind, p, generation, stamp, payloads + i * ISLV_PAYLOAD_BYTES);
    uint64_t at = 2 * p * ISLV_SLOT_SIZE;
    if (f->unsynced[p] == 0 && g[0] == 0 && g[1] == 0) {
      /* First write of the page: both slots, so a synced page never has a blank slot. */
      memcpy(both + ISLV_SLOT_SIZE, both, ISLV_SLOT_SIZE);
      f->unsynced[p] = 1;
      islv_oplog_page(f->log, f->id, p, 2, both, sizeof both);
      err = pwrite_all(f->fd, both, sizeof both, at);
      if (err == 0) g[0] = g[1] = generation;
      f->page_writes++;
      continue;
    }
    int slot = f->unsynced[p] ? f->unsynced[p] - 1 : (g[0] <= g[1] ? 0 : 1);
    f->unsynced[p] = (uint8_t)(slot + 1);
    g[slot] = 0; /* unknown until the write returns */
    islv_oplog_page(f->log, f->id, p, slot, both, ISLV_SLOT_SIZE);
    err = pwrite_all(f->fd, both, ISLV_SLOT_SIZE, at + (uint64_t)slot * ISLV_SLOT_SIZE);
    if (err == 0) g[slot] = generation;
    f->page_writes++;
  }
  pthread_mutex_unlock(&f->mu);
  return err;
}

int islv_pagefile_sync(struct islv_pagefile *f) {
  pthread_mutex_lock(&f->mu);
  islv_oplog_sync(f->log, f->id);
  int err = fdatasync(f->fd) == 0 ? 0 : -errno;
  if (err == 0) {
    for (uint64_t p = 0; p < f->cap; p++) {
      if (!f->unsynced[p]) continue;
      f->unsynced[p] = 0;
      if (p + 1 > f->synced_pages) f->synced_pages = p + 1;
    }
  }
  pthread_mutex_unlock(&f->mu);
  return err;
}

uint64_t islv_pagefile_synced_pages(struct islv_pagefile *f) {
  return atomic_load(&f->synced_pages);
}
