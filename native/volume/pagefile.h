/*
 * pagefile.h: a bitmap file on local disk (dirty.0, dirty.1, intent, present), in the slot
 * format of docs/formats/local-state.md: logical page i in slot 0 at byte 2i * 4096 and slot 1
 * at (2i + 1) * 4096, each slot a header (magic ISBP, version, kind, generation, stamp, index,
 * CRC-32) and 4064 payload bytes.
 *
 * Writing follows the format's rules exactly (the TypeScript BitmapFile does the same, and
 * the differential test compares the two byte for byte):
 *  - the first write of a page (no valid copy in either slot, none unsynced) writes the same
 *    copy to both slots, in one pwrite;
 *  - a later write goes over the copy written since the last fdatasync when there is one,
 *    else to the slot with the older generation (slot 0 on a tie): the copy last synced is
 *    never overwritten;
 *  - the generation is one more than the higher of the two slots'.
 * Nothing here syncs on its own: callers order writes and islv_pagefile_sync() as their
 * protocol requires. Writes and syncs of one file run one at a time (a mutex).
 */
#ifndef ISLV_PAGEFILE_H
#define ISLV_PAGEFILE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define ISLV_KIND_PRESENT 1
#define ISLV_KIND_DIRTY 2
#define ISLV_KIND_INTENT 3

struct islv_oplog;

struct islv_pagefile {
  int fd;
  int kind;
  /* Which file in the operation log (ISLV_FILE_*). */
  int id;
  pthread_mutex_t mu;
  /* Per page: generation of the valid copy in each slot (0: none); unsynced slot + 1 (0: none). */
  uint64_t (*gens)[2];
  uint8_t *unsynced;
  uint64_t cap;
  /* Pages durably written: the file is at least this many pages long on disk. */
  _Atomic uint64_t synced_pages;
  _Atomic uint64_t page_writes;
  struct islv_oplog *log;
};

uint32_t islv_crc32(uint32_t crc, const uint8_t *buf, uint64_t len);

int islv_pagefile_init(struct islv_pagefile *f, int fd, int kind, int id, struct islv_oplog *log);
void islv_pagefile_destroy(struct islv_pagefile *f);
/* What open found: the generations of a page's two slots. */
int islv_pagefile_set_gens(struct islv_pagefile *f, uint64_t page, uint64_t g0, uint64_t g1);
/* Encode one slot into out (4096 bytes). payload NULL: an empty page. */
void islv_page_encode(uint8_t *out, int kind, uint64_t index, uint64_t generation, uint64_t stamp, const uint8_t *payload);
/* Write pages (index[i], stamp, payloads + i * 4064); 0 or a negative errno. */
int islv_pagefile_write(struct islv_pagefile *f, const uint64_t *index, uint64_t n, uint64_t stamp, const uint8_t *payloads);
/* fdatasync: every page written before is durable once it returns 0. */
int islv_pagefile_sync(struct islv_pagefile *f);
uint64_t islv_pagefile_synced_pages(struct islv_pagefile *f);

#endif
