/*
 * oplog.h: the ordered list of the file operations a volume performs, kept only when the
 * volume was opened with logging on (tests: the differential test compares it with the
 * TypeScript engine's, and a model test can replay it). Off, every call returns at once.
 *
 * One entry: file (ISLV_FILE_*), kind (ISLV_OP_*), and for a page write the page and the slot
 * (0, 1, or 2 for both slots at once), for image operations the byte range.
 */
#ifndef ISLV_OPLOG_H
#define ISLV_OPLOG_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define ISLV_FILE_IMAGE 0
#define ISLV_FILE_DIRTY0 1
#define ISLV_FILE_DIRTY1 2
#define ISLV_FILE_INTENT 3
#define ISLV_FILE_PRESENT 4
#define ISLV_FILE_SIDELOG 5

#define ISLV_OP_PAGE 1     /* a bitmap page written: a = page, b = slot (2: both) */
#define ISLV_OP_SYNC 2     /* fdatasync */
#define ISLV_OP_WRITE 3    /* data written: a = offset, b = length */
#define ISLV_OP_PUNCH 4    /* hole punched / range zeroed: a = offset, b = length */
#define ISLV_OP_TRUNCATE 5 /* a = new length */

struct islv_op {
  uint8_t file, kind;
  uint64_t a, b;
  /* With data logging: the bytes a page write or an image write wrote (malloc'd), else NULL. */
  uint8_t *data;
  uint64_t data_len;
};

struct islv_oplog {
  pthread_mutex_t mu;
  struct islv_op *ops;
  uint64_t n, cap;
  bool with_data;
};

/* NULL (logging off) is accepted by every call. */
struct islv_oplog *islv_oplog_new(bool with_data);
void islv_oplog_free(struct islv_oplog *log);
void islv_oplog_add(struct islv_oplog *log, int file, int kind, uint64_t a, uint64_t b);
/* The same with the bytes written (kept only with data logging). */
void islv_oplog_data(struct islv_oplog *log, int file, int kind, uint64_t a, uint64_t b, const void *data, uint64_t len);
/* Move the entries out (*n of them; free() the array and every entry's data). */
struct islv_op *islv_oplog_take(struct islv_oplog *log, uint64_t *n);

static inline void islv_oplog_page(struct islv_oplog *log, int file, uint64_t page, int slot, const void *bytes, uint64_t len) {
  if (log != NULL) islv_oplog_data(log, file, ISLV_OP_PAGE, page, (uint64_t)slot, bytes, len);
}
static inline void islv_oplog_sync(struct islv_oplog *log, int file) {
  if (log != NULL) islv_oplog_add(log, file, ISLV_OP_SYNC, 0, 0);
}

#endif
