/* bitmap.c: see bitmap.h. */
#include "bitmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct islv_bitmap *islv_bitmap_new(void) {
  return calloc(1, sizeof(struct islv_bitmap));
}

void islv_bitmap_free(struct islv_bitmap *b) {
  if (b == NULL) return;
  for (int i = 0; i < ISLV_DIR_TOP; i++) {
    _Atomic(struct islv_bpage *) *chunk = atomic_load(&b->dir[i]);
    if (chunk == NULL) continue;
    for (int j = 0; j < ISLV_DIR_CHUNK; j++) free(atomic_load(&chunk[j]));
    free(chunk);
  }
  free(b);
}

struct islv_bpage *islv_bitmap_page(const struct islv_bitmap *b, uint64_t p) {
  if (p >= ISLV_MAX_PAGES) return NULL;
  _Atomic(struct islv_bpage *) *chunk = atomic_load_explicit(&((struct islv_bitmap *)b)->dir[p / ISLV_DIR_CHUNK], memory_order_acquire);
  if (chunk == NULL) return NULL;
  return atomic_load_explicit(&chunk[p % ISLV_DIR_CHUNK], memory_order_acquire);
}

struct islv_bpage *islv_bitmap_page_alloc(struct islv_bitmap *b, uint64_t p) {
  if (p >= ISLV_MAX_PAGES) return NULL;
  _Atomic(struct islv_bpage *) *chunk = atomic_load_explicit(&b->dir[p / ISLV_DIR_CHUNK], memory_order_acquire);
  if (chunk == NULL) {
    _Atomic(struct islv_bpage *) *fresh = calloc(ISLV_DIR_CHUNK, sizeof *fresh);
    if (fresh == NULL) return NULL;
    _Atomic(struct islv_bpage *) *expected = NULL;
    if (atomic_compare_exchange_strong(&b->dir[p / ISLV_DIR_CHUNK], &expected, fresh)) chunk = fresh;
    else {
      free(fresh);
      chunk = expected;
    }
  }
  struct islv_bpage *page = atomic_load_explicit(&chunk[p % ISLV_DIR_CHUNK], memory_order_acquire);
  if (page != NULL) return page;
  struct islv_bpage *fresh = calloc(1, sizeof *fresh);
  if (fresh == NULL) return NULL;
  struct islv_bpage *expected = NULL;
  if (!atomic_compare_exchange_strong(&chunk[p % ISLV_DIR_CHUNK], &expected, fresh)) {
    free(fresh);
    return expected;
  }
  uint64_t n = atomic_load(&b->npages);
  while (n < p + 1 && !atomic_compare_exchange_weak(&b->npages, &n, p + 1)) {
  }
  return fresh;
}

bool islv_bitmap_get(const struct islv_bitmap *b, uint64_t bit) {
  struct islv_bpage *page = islv_bitmap_page(b, bit / ISLV_BITS_PER_PAGE);
  if (page == NULL) return false;
  uint64_t i = bit % ISLV_BITS_PER_PAGE;
  return (atomic_load_explicit(&page->w[i / 64], memory_order_acquire) >> (i % 64)) & 1;
}

bool islv_bitmap_set(struct islv_bitmap *b, uint64_t bit) {
  uint64_t i = bit % ISLV_BITS_PER_PAGE;
  struct islv_bpage *page = islv_bitmap_page(b, bit / ISLV_BITS_PER_PAGE);
  if (page != NULL && ((atomic_load_explicit(&page->w[i / 64], memory_order_acquire) >> (i % 64)) & 1)) return false;
  if (page == NULL) page = islv_bitmap_page_alloc(b, bit / ISLV_BITS_PER_PAGE);
  if (page == NULL) return false;
  uint64_t mask = (uint64_t)1 << (i % 64);
  uint64_t old = atomic_fetch_or(&page->w[i / 64], mask);
  if (old & mask) return false;
  atomic_store(&page->unsaved, true);
  return true;
}

void islv_bitmap_set_range(struct islv_bitmap *b, uint64_t from, uint64_t to) {
  uint64_t i = from;
  while (i < to) {
    uint64_t p = i / ISLV_BITS_PER_PAGE;
    uint64_t bit = i % ISLV_BITS_PER_PAGE;
    struct islv_bpage *page = islv_bitmap_page_alloc(b, p);
    if (page == NULL) return;
    /* A whole page counts as changed even when it was full already (as the TypeScript engine's fillPage). */
    bool changed = bit == 0 && to - i >= ISLV_BITS_PER_PAGE;
    while (i < to && bit < ISLV_BITS_PER_PAGE) {
      if (bit % 64 == 0 && to - i >= 64 && ISLV_BITS_PER_PAGE - bit >= 64) {
        uint64_t old = atomic_fetch_or(&page->w[bit / 64], ~(uint64_t)0);
        if (old != ~(uint64_t)0) changed = true;
        i += 64;
        bit += 64;
        continue;
      }
      uint64_t mask = (uint64_t)1 << (bit % 64);
      if (!(atomic_fetch_or(&page->w[bit / 64], mask) & mask)) changed = true;
      i++;
      bit++;
    }
    if (changed) atomic_store(&page->unsaved, true);
  }
}

bool islv_bitmap_copy(const struct islv_bitmap *b, uint64_t p, uint8_t *out) {
  struct islv_bpage *page = islv_bitmap_page(b, p);
  if (page == NULL) {
    memset(out, 0, ISLV_PAYLOAD_BYTES);
    return false;
  }
  for (int i = 0; i < ISLV_PAYLOAD_WORDS; i++) {
    uint64_t v = atomic_load_explicit(&page->w[i], memory_order_acquire);
    memcpy(out + 8 * i, &v, 8);
  }
  return true;
}

void islv_bitmap_or_page(struct islv_bitmap *b, uint64_t p, const uint8_t *payload, bool mark_unsaved) {
  struct islv_bpage *page = NULL;
  bool changed = false;
  for (int i = 0; i < ISLV_PAYLOAD_WORDS; i++) {
    uint64_t v;
    memcpy(&v, payload + 8 * i, 8);
    if (v == 0) continue;
    if (page == NULL) page = islv_bitmap_page_alloc(b, p);
    if (page == NULL) return;
    uint64_t old = atomic_fetch_or(&page->w[i], v);
    if ((old | v) != old) changed = true;
  }
  if (changed && mark_unsaved) atomic_store(&page->unsaved, true);
}

void islv_bitmap_or(struct islv_bitmap *dst, const struct islv_bitmap *src) {
  uint64_t n = atomic_load(&((struct islv_bitmap *)src)->npages);
  uint8_t buf[ISLV_PAYLOAD_BYTES];
  for (uint64_t p = 0; p < n; p++) {
    if (islv_bitmap_copy(src, p, buf)) islv_bitmap_or_page(dst, p, buf, true);
  }
}

uint64_t islv_bitmap_take_unsaved(struct islv_bitmap *b, uint64_t **out) {
  uint64_t n = atomic_load(&b->npages), count = 0, cap = 0;
  *out = NULL;
  for (uint64_t p = 0; p < n; p++) {
    struct islv_bpage *page = islv_bitmap_page(b, p);
    if (page == NULL || !atomic_exchange(&page->unsaved, false)) continue;
    if (count == cap) {
      cap = cap ? cap * 2 : 16;
      uint64_t *grown = realloc(*out, cap * sizeof **out);
      if (grown == NULL) {
        atomic_store(&page->unsaved, true);
        break;
      }
      *out = grown;
    }
    (*out)[count++] = p;
  }
  return count;
}

void islv_bitmap_mark_unsaved(struct islv_bitmap *b, const uint64_t *pages, uint64_t n) {
  for (uint64_t i = 0; i < n; i++) {
    struct islv_bpage *page = islv_bitmap_page(b, pages[i]);
    if (page != NULL) atomic_store(&page->unsaved, true);
  }
}

bool islv_bitmap_has_unsaved(const struct islv_bitmap *b) {
  uint64_t n = atomic_load(&((struct islv_bitmap *)b)->npages);
  for (uint64_t p = 0; p < n; p++) {
    struct islv_bpage *page = islv_bitmap_page(b, p);
    if (page != NULL && atomic_load(&page->unsaved)) return true;
  }
  return false;
}

uint64_t islv_bitmap_count(const struct islv_bitmap *b) {
  uint64_t n = atomic_load(&((struct islv_bitmap *)b)->npages), count = 0;
  for (uint64_t p = 0; p < n; p++) {
    struct islv_bpage *page = islv_bitmap_page(b, p);
    if (page == NULL) continue;
    for (int i = 0; i < ISLV_PAYLOAD_WORDS; i++) count += (uint64_t)__builtin_popcountll(atomic_load(&page->w[i]));
  }
  return count;
}

void islv_bitmap_each(const struct islv_bitmap *b, bool (*fn)(void *ctx, uint64_t bit), void *ctx) {
  uint64_t n = atomic_load(&((struct islv_bitmap *)b)->npages);
  for (uint64_t p = 0; p < n; p++) {
    struct islv_bpage *page = islv_bitmap_page(b, p);
    if (page == NULL) continue;
    for (int i = 0; i < ISLV_PAYLOAD_WORDS; i++) {
      uint64_t v = atomic_load(&page->w[i]);
      while (v != 0) {
        int k = __builtin_ctzll(v);
        v &= v - 1;
        if (!fn(ctx, p * ISLV_BITS_PER_PAGE + (uint64_t)i * 64 + (uint64_t)k)) return;
      }
    }
  }
}

int islv_bitmap_pages(const struct islv_bitmap *b, uint64_t **pages, uint8_t **payloads, uint64_t *n) {
  uint64_t total = atomic_load(&((struct islv_bitmap *)b)->npages), count = 0;
  *pages = NULL, *payloads = NULL, *n = 0;
  for (uint64_t p = 0; p < total; p++) count += islv_bitmap_page(b, p) != NULL;
  if (count == 0) return 0;
  uint64_t *idx = malloc(count * sizeof *idx);
  uint8_t *data = malloc(count * ISLV_PAYLOAD_BYTES);
  if (idx == NULL || data == NULL) {
    free(idx);
    free(data);
    return -ENOMEM;
  }
  uint64_t k = 0;
  for (uint64_t p = 0; p < total && k < count; p++) {
    if (!islv_bitmap_copy(b, p, data + k * ISLV_PAYLOAD_BYTES)) continue;
    idx[k++] = p;
  }
  *pages = idx, *payloads = data, *n = k;
  return 0;
}
