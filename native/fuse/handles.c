/*
 * handles.c: open file handles. The fh the kernel gets in an OPEN reply is a slot index
 * and a generation, not a pointer, so an fh the server never gave (or gave and took back)
 * is EBADF, never a stray memory access. The kernel sends no RELEASE while a request on the
 * handle is in flight, so a handle found stays valid for the request that found it.
 */
#include <errno.h>
#include <stdlib.h>

#include "fuse_server.h"

uint64_t fs_handle_new(struct fs_server *s, struct fs_node *n, int writable) {
  struct fs_handle *h = malloc(sizeof *h);
  if (h == NULL) return 0;
  h->writable = writable;
  h->node = n;
  pthread_rwlock_wrlock(&s->hlock);
  uint32_t i = 0;
  while (i < s->hcap && s->hslots[i] != NULL) i++;
  if (i == s->hcap) {
    uint32_t cap = s->hcap ? s->hcap * 2 : 64;
    struct fs_handle **slots = realloc(s->hslots, cap * sizeof *slots);
    if (slots == NULL) {
      pthread_rwlock_unlock(&s->hlock);
      free(h);
      return 0;
    }
    for (uint32_t j = s->hcap; j < cap; j++) slots[j] = NULL;
    s->hslots = slots;
    s->hcap = cap;
  }
  if (++s->hgen == 0) s->hgen = 1;
  h->gen = s->hgen;
  s->hslots[i] = h;
  pthread_rwlock_unlock(&s->hlock);
  return ((uint64_t)h->gen << 32) | (uint64_t)(i + 1);
}

static struct fs_handle **slot(struct fs_server *s, uint64_t fh) {
  uint64_t i = fh & 0xffffffffu;
  if (i == 0 || i > s->hcap) return NULL;
  struct fs_handle **p = &s->hslots[i - 1];
  return *p != NULL && (*p)->gen == (uint32_t)(fh >> 32) ? p : NULL;
}

struct fs_handle *fs_handle_get(struct fs_server *s, uint64_t fh) {
  pthread_rwlock_rdlock(&s->hlock);
  struct fs_handle **p = slot(s, fh);
  struct fs_handle *h = p ? *p : NULL;
  pthread_rwlock_unlock(&s->hlock);
  return h;
}

struct fs_node *fs_handle_free(struct fs_server *s, uint64_t fh) {
  pthread_rwlock_wrlock(&s->hlock);
  struct fs_handle **p = slot(s, fh);
  struct fs_handle *h = p ? *p : NULL;
  if (p) *p = NULL;
  pthread_rwlock_unlock(&s->hlock);
  if (h == NULL) return NULL;
  struct fs_node *n = h->node;
  free(h);
  return n;
}

/* At teardown: every handle the kernel still had, with its node reference. */
void fs_handles_release(struct fs_server *s) {
  pthread_rwlock_wrlock(&s->hlock);
  for (uint32_t i = 0; i < s->hcap; i++) {
    struct fs_handle *h = s->hslots[i];
    if (h == NULL) continue;
    s->hslots[i] = NULL;
    atomic_fetch_sub(&h->node->opens, 1);
    fs_node_unref(h->node);
    free(h);
  }
  pthread_rwlock_unlock(&s->hlock);
}
