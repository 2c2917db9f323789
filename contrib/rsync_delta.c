/*
 * The byte-at-a-time loops of rsync's delta search, for rsync_delta.py.
 *
 * Plain C with no Python headers: rsync_delta.py loads the built library
 * with ctypes, which releases the GIL around every call.
 *
 * The sender looks for the receiver's blocks in its file by rolling a
 * weak checksum over every offset. This file does the rolling and the
 * hash-table lookups and hands control back to Python only at offsets
 * where some block has the same weak sum and length (Python then computes
 * the strong sum and calls rd_first_match), when the pending literal has
 * grown to the flush size, or at the end of the search.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define RD_API __declspec(dllexport)
#else
#define RD_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a signature or struct rd_search's public part changes. */
#define RD_ABI_VERSION 1

/* rsync's hash table has 2^16 buckets, indexed by s1 + s2, unless there
 * are so many blocks that it needs a bigger one, indexed by sum % size. */
#define RD_SMALL_TABLE 65536u

enum { RD_END = 0, RD_CANDIDATES = 1, RD_FLUSH = 2 };

struct rd_search {
	/* Public part: rsync_delta.py mirrors these fields. */
	int64_t offset;		/* start of the window */
	int64_t last_match;	/* start of the pending literal */
	uint32_t sum;		/* weak sum of the window */
	int32_t window;		/* length of the window */
	int32_t ncand;		/* blocks found at offset with its weak sum and length */
	int32_t max_chain;	/* most same-weak-sum blocks looked at for one offset */
	uint64_t comparisons;	/* strong sums compared */
	uint64_t false_alarms;	/* of which differed */
	uint64_t capped;	/* offsets where max_chain_len cut the search short */

	const signed char *buf;
	int64_t len;
	int64_t end;		/* first offset too close to the end for the last block */
	int64_t flush;
	uint32_t s1, s2;
	const uint32_t *sum1;
	const unsigned char *sum2;
	unsigned char *same_offset;
	int32_t count, blength, lastlen, s2length, max_chain_len;
	int inplace;
	uint32_t tablesize;
	int32_t *head;
	int32_t *next;
	int32_t *cand;
	unsigned char *seen;	/* bit per hash of a weak sum in the table */
	int seen_shift;
};

RD_API int rd_abi_version(void)
{
	return RD_ABI_VERSION;
}

RD_API size_t rd_public_size(void)
{
	return offsetof(struct rd_search, buf);
}

/* rsync's weak checksum: s1 is the sum of the bytes taken as signed chars,
 * s2 the sum of the running s1 values, both modulo 2^32. A 16-byte step
 * adds 16 times the old s1 plus the bytes weighted 16, 15, ... 1. */
static void weak_sums(const signed char *p, int64_t n, uint32_t *s1p, uint32_t *s2p)
{
	uint32_t s1 = 0, s2 = 0;
	int64_t i = 0;

	for (; i + 16 <= n; i += 16) {
		int32_t plain = 0, weighted = 0;
		int j;
		for (j = 0; j < 16; j++) {
			plain += p[i + j];
			weighted += (16 - j) * p[i + j];
		}
		s2 += 16 * s1 + (uint32_t)weighted;
		s1 += (uint32_t)plain;
	}
	for (; i < n; i++) {
		s1 += (uint32_t)(int32_t)p[i];
		s2 += s1;
	}
	*s1p = s1;
	*s2p = s2;
}

static uint32_t pack_sum(uint32_t s1, uint32_t s2)
{
	return (s1 & 0xFFFF) | (s2 << 16);
}

RD_API uint32_t rd_checksum1(const void *buf, int64_t len)
{
	uint32_t s1, s2;

	weak_sums(buf, len, &s1, &s2);
	return pack_sum(s1, s2);
}

/* The weak sum of each blength-sized block of buf (the last may be short)
 * into out, which has room for ceil(len / blength) sums. */
RD_API void rd_block_checksum1s(const void *buf, int64_t len, int32_t blength, uint32_t *out)
{
	const signed char *p = buf;
	int64_t off;
	uint32_t s1, s2;

	for (off = 0; off < len; off += blength) {
		int64_t n = len - off < blength ? len - off : blength;
		weak_sums(p + off, n, &s1, &s2);
		*out++ = pack_sum(s1, s2);
	}
}

/* Most offsets have a weak sum that no block has. A bitmap with about 32
 * bits per block, indexed by a multiplicative hash of the weak sum, rules
 * almost all of them out with one predictable branch. */
static uint32_t seen_index(uint32_t sum, int shift)
{
	return (sum * 0x9E3779B1u) >> shift;
}

static int seen(const unsigned char *bitmap, uint32_t index)
{
	return bitmap[index >> 3] & (1u << (index & 7));
}

static uint32_t bucket(const struct rd_search *st, uint32_t sum)
{
	if (st->tablesize == RD_SMALL_TABLE)
		return ((sum & 0xFFFF) + (sum >> 16)) & 0xFFFF;
	return sum % st->tablesize;
}

static int32_t block_len(const struct rd_search *st, int32_t i)
{
	return i == st->count - 1 ? st->lastlen : st->blength;
}

static void set_window(struct rd_search *st, int64_t offset)
{
	int64_t left = st->len - offset;
	int32_t k = left <= 0 ? 0 : left < st->blength ? (int32_t)left : st->blength;

	st->offset = offset;
	st->window = k;
	weak_sums(st->buf + offset, k, &st->s1, &st->s2);
	st->sum = pack_sum(st->s1, st->s2);
}

RD_API void rd_free(struct rd_search *st)
{
	if (!st)
		return;
	free(st->head);
	free(st->next);
	free(st->cand);
	free(st->seen);
	free(st);
}

/* Starts a search of buf[0:len) for the count blocks whose weak sums are
 * sum1[] and whose strong sums (s2length bytes each) are packed in sum2.
 * Every block is blength long except the last, lastlen long. same_offset
 * has a byte per block, set by the caller when a block has been matched at
 * its own offset (it is only read, with inplace). The arrays must outlive
 * the search. Returns NULL when out of memory. */
RD_API struct rd_search *rd_new(const void *buf, int64_t len,
				const uint32_t *sum1, const void *sum2, int32_t count,
				int32_t blength, int32_t lastlen, int32_t s2length,
				int inplace, unsigned char *same_offset,
				int32_t max_chain_len, int64_t flush)
{
	struct rd_search *st = calloc(1, sizeof *st);
	int32_t i;

	if (!st)
		return NULL;
	st->buf = buf;
	st->len = len;
	st->end = len + 1 - lastlen;
	st->flush = flush;
	st->sum1 = sum1;
	st->sum2 = sum2;
	st->same_offset = same_offset;
	st->count = count;
	st->blength = blength;
	st->lastlen = lastlen;
	st->s2length = s2length;
	st->max_chain_len = max_chain_len;
	st->inplace = inplace;

	st->tablesize = (uint32_t)(count / 8) * 10 + 11;
	if (st->tablesize < RD_SMALL_TABLE)
		st->tablesize = RD_SMALL_TABLE;
	st->head = malloc(st->tablesize * sizeof *st->head);
	st->next = malloc((size_t)(count ? count : 1) * sizeof *st->next);
	st->cand = malloc((size_t)(max_chain_len > 0 ? max_chain_len : 1) * sizeof *st->cand);
	for (st->seen_shift = 32 - 15; st->seen_shift > 32 - 26; st->seen_shift--) {
		if (((uint64_t)1 << (32 - st->seen_shift)) >= (uint64_t)count * 32)
			break;
	}
	st->seen = calloc((size_t)1 << (32 - st->seen_shift - 3), 1);
	if (!st->head || !st->next || !st->cand || !st->seen) {
		rd_free(st);
		return NULL;
	}
	memset(st->head, 0xFF, st->tablesize * sizeof *st->head);
	/* Each block goes to the front of its bucket's chain, so chains run
	 * from the highest block number down, as rsync's do. */
	for (i = 0; i < count; i++) {
		uint32_t h = bucket(st, sum1[i]);
		uint32_t bit = seen_index(sum1[i], st->seen_shift);
		st->next[i] = st->head[h];
		st->head[h] = i;
		st->seen[bit >> 3] |= (unsigned char)(1u << (bit & 7));
	}
	set_window(st, 0);
	return st;
}

/* Collects into cand[] the blocks of bucket h with weak sum `sum` and length
 * k, in chain order, giving up after max_chain_len blocks with that weak
 * sum. With inplace, blocks that start before offset and were not matched
 * at their own offset can never be used again (the receiver has already
 * written over them) and are unlinked for good. */
static int32_t collect(struct rd_search *st, uint32_t h, uint32_t sum, int32_t k, int64_t offset)
{
	int32_t *link = &st->head[h];
	int32_t i, same_sum = 0, found = 0;

	while ((i = *link) >= 0) {
		if (st->inplace && (int64_t)i * st->blength < offset && !st->same_offset[i]) {
			*link = st->next[i];
			continue;
		}
		link = &st->next[i];
		if (st->sum1[i] != sum)
			continue;
		if (same_sum == st->max_chain_len) {
			st->capped++;
			break;
		}
		same_sum++;
		if (block_len(st, i) == k)
			st->cand[found++] = i;
	}
	if (same_sum > st->max_chain)
		st->max_chain = same_sum;
	st->ncand = found;
	return found;
}

#if defined(__GNUC__)
#define RD_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define RD_UNLIKELY(x) (x)
#endif

/* The hash-table lookup at offset, for a weak sum that passed the bitmap. */
static int32_t lookup(struct rd_search *st, uint32_t s1, uint32_t s2, int32_t k, int64_t offset)
{
	uint32_t sum = pack_sum(s1, s2);
	uint32_t h = st->tablesize == RD_SMALL_TABLE ? (s1 + s2) & 0xFFFF : sum % st->tablesize;

	if (st->head[h] < 0)
		return 0;
	return collect(st, h, sum, k, offset);
}

/* Rolls the window on from the current offset (first by one byte if roll is
 * set) and returns RD_CANDIDATES at the first offset with candidate blocks,
 * RD_FLUSH at the first offset flush bytes past last_match, or RD_END. */
RD_API int rd_scan(struct rd_search *st, int roll)
{
	const signed char *b = st->buf;
	const unsigned char *bitmap = st->seen;
	const int shift = st->seen_shift;
	const int64_t len = st->len, end = st->end;
	const int64_t flush_at = st->last_match + st->flush;
	int64_t off = st->offset;
	uint32_t s1 = st->s1, s2 = st->s2;
	int32_t k = st->window;
	int event = RD_END;

	if (roll && off < end)
		goto roll_one;
	while (off < end) {
		int64_t stop;

		if (off >= flush_at) {
			event = RD_FLUSH;
			break;
		}
		/* Offsets whose window is followed by a byte to roll in. */
		stop = end < flush_at ? end : flush_at;
		if (stop > len - k)
			stop = len - k;
		for (; off < stop; off++) {
			int32_t out;
			if (RD_UNLIKELY(seen(bitmap, seen_index(pack_sum(s1, s2), shift)))
			    && lookup(st, s1, s2, k, off)) {
				event = RD_CANDIDATES;
				goto done;
			}
			out = b[off];
			s1 += (uint32_t)((int32_t)b[off + k] - out);
			s2 += s1 - (uint32_t)k * (uint32_t)out;
		}
		if (off >= end || off >= flush_at)
			continue;
		if (seen(bitmap, seen_index(pack_sum(s1, s2), shift)) && lookup(st, s1, s2, k, off)) {
			event = RD_CANDIDATES;
			break;
		}
	roll_one:
		{
			int32_t out = b[off];
			s1 -= (uint32_t)out;
			s2 -= (uint32_t)k * (uint32_t)out;
			if (off + k < len) {
				s1 += (uint32_t)(int32_t)b[off + k];
				s2 += s1;
			} else
				k--;
			off++;
		}
	}
done:
	st->offset = off;
	st->s1 = s1;
	st->s2 = s2;
	st->window = k;
	st->sum = pack_sum(s1, s2);
	return event;
}

/* The first candidate, in chain order, whose strong sum starts with the
 * s2length bytes of digest, or -1. */
RD_API int32_t rd_first_match(struct rd_search *st, const void *digest)
{
	int32_t j;

	for (j = 0; j < st->ncand; j++) {
		int32_t i = st->cand[j];
		st->comparisons++;
		if (memcmp(st->sum2 + (size_t)i * st->s2length, digest, st->s2length) == 0)
			return i;
		st->false_alarms++;
	}
	return -1;
}

/* Block i was sent as matching at offset: the search resumes after it. */
RD_API void rd_matched(struct rd_search *st, int64_t offset, int32_t i)
{
	int64_t next = offset + block_len(st, i);

	st->last_match = next;
	set_window(st, next);
}

/* setuptools builds this as an extension module, and some linkers insist on
 * the module's init symbol. The library is for ctypes: importing it fails. */
RD_API void *PyInit__rsync_delta(void)
{
	return NULL;
}
