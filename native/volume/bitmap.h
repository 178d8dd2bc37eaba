/*
 * bitmap.h: an in-memory bitmap over clusters or regions, cut into the pages of a bitmap file
 * (docs/formats/local-state.md): 32512 bits per page, bit b of a page is bit (b & 7) of
 * payload byte (b >> 3). Pages are allocated on the first bit set in them. Every operation is
 * safe from any thread: bits are set with an atomic OR, pages appear with a compare-and-swap,
 * and each page carries an "unsaved" flag that a writer of the bitmap file takes.
 *
 * Ordering: set() ORs the bit, then raises the page's unsaved flag. A persister takes the flag
 * first, then copies the payload. So a bit set before a persister took the flag is in its copy,
 * and a bit set later leaves the page unsaved for the next persister: no bit is ever missed.
 */
#ifndef ISLV_BITMAP_H
#define ISLV_BITMAP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define ISLV_SLOT_SIZE 4096
#define ISLV_PAYLOAD_BYTES 4064
#define ISLV_PAYLOAD_WORDS (ISLV_PAYLOAD_BYTES / 8)
#define ISLV_BITS_PER_PAGE ((uint64_t)ISLV_PAYLOAD_BYTES * 8)
/* Page directory: ISLV_DIR_TOP chunks of ISLV_DIR_CHUNK pages: 4 Mi pages, 2^37 items. */
#define ISLV_DIR_CHUNK 1024
#define ISLV_DIR_TOP 4096
#define ISLV_MAX_PAGES ((uint64_t)ISLV_DIR_CHUNK * ISLV_DIR_TOP)

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the bitmap payload is kept as little-endian 64-bit words"
#endif

struct islv_bpage {
  _Atomic uint64_t w[ISLV_PAYLOAD_WORDS];
  atomic_bool unsaved;
};

struct islv_bitmap {
  _Atomic(struct islv_bpage *) *_Atomic dir[ISLV_DIR_TOP];
  /* One past the highest page ever allocated. */
  _Atomic uint64_t npages;
};

struct islv_bitmap *islv_bitmap_new(void);
void islv_bitmap_free(struct islv_bitmap *b);
bool islv_bitmap_get(const struct islv_bitmap *b, uint64_t bit);
/* Set a bit; true when it was clear. False (and nothing set) past ISLV_MAX_PAGES too. */
bool islv_bitmap_set(struct islv_bitmap *b, uint64_t bit);
/* Set bits [from, to). */
void islv_bitmap_set_range(struct islv_bitmap *b, uint64_t from, uint64_t to);
/* The page, or NULL when nothing was ever set in it. */
struct islv_bpage *islv_bitmap_page(const struct islv_bitmap *b, uint64_t p);
/* The page, allocated when missing (NULL only when out of memory or range). */
struct islv_bpage *islv_bitmap_page_alloc(struct islv_bitmap *b, uint64_t p);
/* Copy page p's payload into out (ISLV_PAYLOAD_BYTES); false (out zeroed) when never allocated. */
bool islv_bitmap_copy(const struct islv_bitmap *b, uint64_t p, uint8_t *out);
/* OR a payload into page p; marks it unsaved when a bit was added (mark_unsaved) */
void islv_bitmap_or_page(struct islv_bitmap *b, uint64_t p, const uint8_t *payload, bool mark_unsaved);
/* dst |= src, page by page (marks changed pages unsaved). */
void islv_bitmap_or(struct islv_bitmap *dst, const struct islv_bitmap *src);
/* Take the unsaved pages, ascending: returns how many; *out is malloc'd (NULL when none). */
uint64_t islv_bitmap_take_unsaved(struct islv_bitmap *b, uint64_t **out);
void islv_bitmap_mark_unsaved(struct islv_bitmap *b, const uint64_t *pages, uint64_t n);
bool islv_bitmap_has_unsaved(const struct islv_bitmap *b);
uint64_t islv_bitmap_count(const struct islv_bitmap *b);
/* Copies of the allocated pages: *n of them, indices in *pages and payloads (n * 4064 bytes)
 * in *payloads, both malloc'd (NULL when n is 0); -ENOMEM. */
int islv_bitmap_pages(const struct islv_bitmap *b, uint64_t **pages, uint8_t **payloads, uint64_t *n);
/* Calls fn for every set bit, ascending, until it returns false. */
void islv_bitmap_each(const struct islv_bitmap *b, bool (*fn)(void *ctx, uint64_t bit), void *ctx);

#endif
