/* oplog.c: see oplog.h. */
#include "oplog.h"

#include <stdlib.h>
#include <string.h>

struct islv_oplog *islv_oplog_new(bool with_data) {
  struct islv_oplog *log = calloc(1, sizeof *log);
  if (log == NULL) return NULL;
  pthread_mutex_init(&log->mu, NULL);
  log->with_data = with_data;
  return log;
}

void islv_oplog_free(struct islv_oplog *log) {
  if (log == NULL) return;
  for (uint64_t i = 0; i < log->n; i++) free(log->ops[i].data);
  free(log->ops);
  pthread_mutex_destroy(&log->mu);
  free(log);
}

void islv_oplog_add(struct islv_oplog *log, int file, int kind, uint64_t a, uint64_t b) {
  islv_oplog_data(log, file, kind, a, b, NULL, 0);
}

void islv_oplog_data(struct islv_oplog *log, int file, int kind, uint64_t a, uint64_t b, const void *data, uint64_t len) {
  if (log == NULL) return;
  uint8_t *copy = NULL;
  if (log->with_data && data != NULL && len > 0) {
    copy = malloc(len);
    if (copy != NULL) memcpy(copy, data, len);
    else len = 0;
  } else {
    len = 0;
  }
  pthread_mutex_lock(&log->mu);
  if (log->n == log->cap) {
    uint64_t cap = log->cap ? log->cap * 2 : 256;
    struct islv_op *ops = realloc(log->ops, cap * sizeof *ops);
    if (ops == NULL) {
      pthread_mutex_unlock(&log->mu);
      free(copy);
      return;
    }
    log->ops = ops;
    log->cap = cap;
  }
  log->ops[log->n++] = (struct islv_op){ .file = (uint8_t)file, .kind = (uint8_t)kind, .a = a, .b = b, .data = copy, .data_len = len };
  pthread_mutex_unlock(&log->mu);
}

struct islv_op *islv_oplog_take(struct islv_oplog *log, uint64_t *n) {
  *n = 0;
  if (log == NULL) return NULL;
  pthread_mutex_lock(&log->mu);
  struct islv_op *ops = log->ops;
  *n = log->n;
  log->ops = NULL;
  log->n = log->cap = 0;
  pthread_mutex_unlock(&log->mu);
  return ops;
}
