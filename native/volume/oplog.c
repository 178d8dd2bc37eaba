/* oplog.c: see oplog.h. */
#include "oplog.h"

#include <stdlib.h>

struct islv_oplog *islv_oplog_new(void) {
  struct islv_oplog *log = calloc(1, sizeof *log);
  if (log != NULL) pthread_mutex_init(&log->mu, NULL);
  return log;
}

void islv_oplog_free(struct islv_oplog *log) {
  if (log == NULL) return;
  free(log->ops);
  pthread_mutex_destroy(&log->mu);
  free(log);
}

void islv_oplog_add(struct islv_oplog *log, int file, int kind, uint64_t a, uint64_t b) {
  if (log == NULL) return;
  pthread_mutex_lock(&log->mu);
  if (log->n == log->cap) {
    uint64_t cap = log->cap ? log->cap * 2 : 256;
    struct islv_op *ops = realloc(log->ops, cap * sizeof *ops);
    if (ops == NULL) {
      pthread_mutex_unlock(&log->mu);
      return;
    }
    log->ops = ops;
    log->cap = cap;
  }
  log->ops[log->n++] = (struct islv_op){ .file = (uint8_t)file, .kind = (uint8_t)kind, .a = a, .b = b };
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
