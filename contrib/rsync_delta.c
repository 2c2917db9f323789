/*
 * The byte-at-a-time loops of rsync's delta search, for rsync_delta.py.
 *
 * Plain C with no Python headers: rsync_delta.py loads the built library
 * with ctypes, which releases the GIL around every call.
 *
 * The sender looks for the receiver's blocks in its file by rolling a
 * weak checksum over every offset. This file does the rolling and the
 * table lookups and hands control back to Python only at offsets where
 * some block has the same weak sum and length (Python then computes the
 * strong sum and calls rd_first_match), when the pending literal has
 * grown to the flush size, or at the end of the search.
 *
 * The receiver chooses the block sums, so the search must stay cheap
 * whatever they are. As the rsync sender does: blocks whose strong sum
 * equals that of the block just found different are dropped for good,
 * at most max_chain_len blocks are compared at one offset, and after more
 * than max_streak offsets in a row without a match among blocks with the
 * right weak sum, the search moves on by a whole block.
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
#define RD_ABI_VERSION 4

#define RD_FREE_SLOT (-2)

enum { RD_END = 0, RD_CANDIDATES = 1, RD_FLUSH = 2 };

struct rd_search {
	/* Public part: rsync_delta.py mirrors these fields. */
	int64_t offset;		/* start of the window */
	int64_t last_match;	/* start of the pending literal */
	uint32_t sum;		/* weak sum of the window */
	int32_t window;		/* length of the window */
	int32_t max_chain;	/* most blocks compared at one offset */
	int32_t streak;		/* offsets in a row with false alarms, up to offset */
	uint64_t comparisons;	/* strong sums compared */
	uint64_t false_alarms;	/* of which differed */
	uint64_t capped;	/* offsets where max_chain_len cut the search short */
	uint64_t pruned;	/* blocks dropped as repeats of a false alarm */
	uint64_t jumps;		/* times the search skipped a block's worth of offsets */

	const signed char *buf;
	int64_t len;
	int64_t end;		/* first offset too close to the end for the last block */
	int64_t flush;
	uint32_t s1, s2;
	const uint32_t *sum1;
	const unsigned char *sum2;
	unsigned char *same_offset;
	int32_t count, blength, lastlen, s2length, max_chain_len, max_streak;
	int inplace;
	int32_t chained;	/* blocks in the chains: all, or all but a short last one */
	uint32_t slots_shift;	/* 32 - log2 of the number of slots */
	uint32_t multiplier;	/* of the slots' hash: odd, random per search */
	uint32_t *keys;		/* per slot, a weak sum of chained blocks */
	int32_t *head;		/* per slot, its chain (highest block first), -1
				 * once emptied, RD_FREE_SLOT when unused */
	int32_t *next;
	int32_t group;		/* slot of the candidates at offset, or -1 for the last block */
	int64_t streak_next;	/* offset at which a false alarm extends the streak */
	unsigned char *seen;	/* bit per hash of a weak sum in the table */
	int seen_shift;
	unsigned char buckets[1 << 13];	/* bit per (s1 + s2) & 0xFFFF of those sums */
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
/* s1 and s2 over n bytes, 16 (or, with AVX2, 32) at a time when the CPU
 * has the vector instructions: each lane adds up part of a chunk's plain and
 * weighted sums, and s2 gains the chunk size times s1 as it was before the
 * chunk. Sums wrap modulo 2^32 in every lane, which is what the scalar loop
 * does too. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RD_X86 1

static uint32_t hsum128(__m128i v)
{
	v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4E));
	v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xB1));
	return (uint32_t)_mm_cvtsi128_si32(v);
}

static int64_t weak_sums_sse2(const signed char *p, int64_t n, uint32_t *s1p, uint32_t *s2p)
{
	const __m128i w_lo = _mm_setr_epi16(16, 15, 14, 13, 12, 11, 10, 9);
	const __m128i w_hi = _mm_setr_epi16(8, 7, 6, 5, 4, 3, 2, 1);
	const __m128i ones = _mm_set1_epi16(1);
	__m128i s1 = _mm_setzero_si128(), before = _mm_setzero_si128(), weighted = _mm_setzero_si128();
	int64_t i;

	for (i = 0; i + 16 <= n; i += 16) {
		__m128i x = _mm_loadu_si128((const __m128i *)(p + i));
		__m128i lo = _mm_srai_epi16(_mm_unpacklo_epi8(x, x), 8);
		__m128i hi = _mm_srai_epi16(_mm_unpackhi_epi8(x, x), 8);

		before = _mm_add_epi32(before, s1);
		s1 = _mm_add_epi32(s1, _mm_madd_epi16(_mm_add_epi16(lo, hi), ones));
		weighted = _mm_add_epi32(weighted, _mm_add_epi32(_mm_madd_epi16(lo, w_lo),
								 _mm_madd_epi16(hi, w_hi)));
	}
	*s1p = hsum128(s1);
	*s2p = 16 * hsum128(before) + hsum128(weighted);
	return i;
}

__attribute__((target("avx2")))
static int64_t weak_sums_avx2(const signed char *p, int64_t n, uint32_t *s1p, uint32_t *s2p)
{
	const __m256i w_lo = _mm256_setr_epi16(32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17);
	const __m256i w_hi = _mm256_setr_epi16(16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
	const __m256i ones = _mm256_set1_epi16(1);
	__m256i s1 = _mm256_setzero_si256(), before = _mm256_setzero_si256(), weighted = _mm256_setzero_si256();
	int64_t i;

	for (i = 0; i + 32 <= n; i += 32) {
		__m256i lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + i)));
		__m256i hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + i + 16)));

		before = _mm256_add_epi32(before, s1);
		s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_add_epi16(lo, hi), ones));
		weighted = _mm256_add_epi32(weighted, _mm256_add_epi32(_mm256_madd_epi16(lo, w_lo),
								       _mm256_madd_epi16(hi, w_hi)));
	}
	*s1p = hsum128(_mm_add_epi32(_mm256_castsi256_si128(s1), _mm256_extracti128_si256(s1, 1)));
	*s2p = 32 * hsum128(_mm_add_epi32(_mm256_castsi256_si128(before), _mm256_extracti128_si256(before, 1)))
	       + hsum128(_mm_add_epi32(_mm256_castsi256_si128(weighted), _mm256_extracti128_si256(weighted, 1)));
	return i;
}

#endif

/* 0: the scalar loop, 1: SSE2, 2: AVX2; -1 until the CPU was asked. */
static int simd_level = -1;

static int simd_supported(void)
{
#ifdef RD_X86
	return __builtin_cpu_supports("avx2") ? 2 : 1;
#else
	return 0;
#endif
}

/* The vector width weak_sums uses: the best the CPU has, or at most `want`
 * when want >= 0 (tests compare every level with the scalar loop). */
RD_API int rd_simd(int want)
{
	int best = simd_supported();

	simd_level = want < 0 || want > best ? best : want;
	return simd_level;
}

static void weak_sums(const signed char *p, int64_t n, uint32_t *s1p, uint32_t *s2p)
{
	uint32_t s1 = 0, s2 = 0;
	int64_t i = 0;

	if (simd_level < 0)
		rd_simd(-1);
#ifdef RD_X86
	if (n >= 32 && simd_level == 2)
		i = weak_sums_avx2(p, n, &s1, &s2);
	else if (n >= 32 && simd_level == 1)
		i = weak_sums_sse2(p, n, &s1, &s2);
#endif
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

/* A second test, on other bits of the sum, before the binary search. */
static uint32_t bucket_index(uint32_t sum)
{
	return ((sum & 0xFFFF) + (sum >> 16)) & 0xFFFF;
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
	free(st->keys);
	free(st->head);
	free(st->next);
	free(st->seen);
	free(st);
}

/* The slot of sum: where it is, or the free slot where it would go. The
 * multiplier is random, so a receiver cannot choose sums that pile up in
 * one run of slots; at most half the slots are used. */
static uint32_t find_slot(const struct rd_search *st, uint32_t sum)
{
	uint32_t mask = 0xFFFFFFFFu >> st->slots_shift;
	uint32_t slot = (sum * st->multiplier) >> st->slots_shift;

	while (st->head[slot] != RD_FREE_SLOT && st->keys[slot] != sum)
		slot = (slot + 1) & mask;
	return slot;
}

/* Chains the blocks that share a weak sum, highest block first (the order
 * in which rsync tries them), from that sum's slot. */
static int build_chains(struct rd_search *st)
{
	uint32_t bits = 1, slots, j;
	int32_t i;

	while (bits < 31 && ((uint64_t)1 << bits) < (uint64_t)st->chained * 2)
		bits++;
	slots = (uint32_t)1 << bits;
	st->slots_shift = 32 - bits;
	st->keys = malloc(slots * sizeof *st->keys);
	st->head = malloc(slots * sizeof *st->head);
	st->next = malloc((size_t)(st->count ? st->count : 1) * sizeof *st->next);
	if (!st->keys || !st->head || !st->next)
		return 0;
	for (j = 0; j < slots; j++)
		st->head[j] = RD_FREE_SLOT;
	for (i = 0; i < st->chained; i++) {
		uint32_t slot = find_slot(st, st->sum1[i]);

		if (st->head[slot] == RD_FREE_SLOT) {
			st->keys[slot] = st->sum1[i];
			st->next[i] = -1;
		} else
			st->next[i] = st->head[slot];
		st->head[slot] = i;
	}
	return 1;
}

/* With inplace, a block that starts before offset and was not matched at
 * its own offset has been written over by the receiver: never usable again. */
static int overwritten(const struct rd_search *st, int32_t i, int64_t offset)
{
	return st->inplace && (int64_t)i * st->blength < offset && !st->same_offset[i];
}

/* Starts a search of buf[0:len) for the count blocks whose weak sums are
 * sum1[] and whose strong sums (s2length bytes each) are packed in sum2.
 * Every block is blength long except the last, lastlen long. same_offset
 * has a byte per block, set by the caller when a block has been matched at
 * its own offset (it is only read, with inplace). The arrays must outlive
 * the search. hash_seed should be random. Returns NULL when out of memory. */
RD_API struct rd_search *rd_new(const void *buf, int64_t len,
				const uint32_t *sum1, const void *sum2, int32_t count,
				int32_t blength, int32_t lastlen, int32_t s2length,
				int inplace, unsigned char *same_offset,
				int32_t max_chain_len, int32_t max_streak, int64_t flush,
				uint32_t hash_seed)
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
	st->max_streak = max_streak;
	st->inplace = inplace;
	/* A last block shorter than the others can only match the file's
	 * final window: it stays out of the chains. */
	st->chained = count > 0 && lastlen != blength ? count - 1 : count;
	st->group = -1;
	st->streak_next = -1;
	st->multiplier = hash_seed | 1;

	for (st->seen_shift = 32 - 15; st->seen_shift > 32 - 26; st->seen_shift--) {
		if (((uint64_t)1 << (32 - st->seen_shift)) >= (uint64_t)count * 32)
			break;
	}
	st->seen = calloc((size_t)1 << (32 - st->seen_shift - 3), 1);
	if (!st->seen || !build_chains(st)) {
		rd_free(st);
		return NULL;
	}
	for (i = 0; i < count; i++) {
		uint32_t bit = seen_index(sum1[i], st->seen_shift);
		st->seen[bit >> 3] |= (unsigned char)(1u << (bit & 7));
		bit = bucket_index(sum1[i]);
		st->buckets[bit >> 3] |= (unsigned char)(1u << (bit & 7));
	}
	set_window(st, 0);
	return st;
}

#if defined(__GNUC__)
#define RD_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define RD_COLD __attribute__((noinline, cold))
#else
#define RD_UNLIKELY(x) (x)
#define RD_COLD
#endif

/* Whether some block is to be compared at offset, whose window has weak
 * sum `sum` and length k: the chain of that sum for a full window, the
 * short last block for the final one. Notes which in st->group and drops
 * overwritten blocks from the head of the chain. */
/* Kept out of rd_scan's loop, which then keeps its sums in registers. */
static RD_COLD int lookup(struct rd_search *st, uint32_t sum, int32_t k, int64_t offset)
{
	if (!seen(st->buckets, bucket_index(sum)))
		return 0;
	if (k == st->blength) {
		uint32_t slot = find_slot(st, sum);
		int32_t *link = &st->head[slot];
		int32_t i;

		while ((i = *link) >= 0 && overwritten(st, i, offset))
			*link = st->next[i];
		st->group = (int32_t)slot;
		return i >= 0;
	}
	if (st->chained < st->count && k == st->lastlen && sum == st->sum1[st->count - 1]
	    && !overwritten(st, st->count - 1, offset)) {
		st->group = -1;
		return 1;
	}
	return 0;
}

/* Rolls the window on from the current offset and returns RD_CANDIDATES at
 * the first offset with candidate blocks, RD_FLUSH at the first offset
 * flush bytes past last_match, or RD_END. roll is set when the current
 * offset had candidates but no match: the window then moves by one byte,
 * or by a whole block once false alarms have gone on for long enough. */
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

	if (roll && off < end) {
		if (st->streak <= st->max_streak)
			goto roll_one;
		st->jumps++;
		off += st->blength;
		if (off < end) {
			set_window(st, off);
			s1 = st->s1;
			s2 = st->s2;
			k = st->window;
		}
	}
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
			    && lookup(st, pack_sum(s1, s2), k, off)) {
				event = RD_CANDIDATES;
				goto done;
			}
			out = b[off];
			s1 += (uint32_t)((int32_t)b[off + k] - out);
			s2 += s1 - (uint32_t)k * (uint32_t)out;
		}
		if (off >= end || off >= flush_at)
			continue;
		if (seen(bitmap, seen_index(pack_sum(s1, s2), shift))
		    && lookup(st, pack_sum(s1, s2), k, off)) {
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

/* Compares digest, the strong sum of the window at offset, with the blocks
 * found there, in chain order, and returns the first that has it, or -1.
 * Every block compared before the one being looked at differed from
 * digest; when the last of them has the same strong sum, so does this one,
 * which is dropped from the chain for good without counting toward
 * max_chain_len. With inplace, a block matched at its own offset is kept
 * unless that last one was too. */
RD_API int32_t rd_first_match(struct rd_search *st, const void *digest)
{
	const size_t n = (size_t)st->s2length;
	const int64_t offset = st->offset;
	int32_t compared = 0, found = -1;

	if (st->group < 0) {
		int32_t i = st->count - 1;

		compared = 1;
		st->comparisons++;
		if (memcmp(st->sum2 + (size_t)i * n, digest, n) == 0)
			found = i;
		else
			st->false_alarms++;
	} else {
		int32_t *link = &st->head[st->group];
		int32_t i, last = -1;

		while ((i = *link) >= 0) {
			const unsigned char *strong = st->sum2 + (size_t)i * n;

			if (overwritten(st, i, offset)) {
				*link = st->next[i];
				continue;
			}
			if (last >= 0 && memcmp(strong, st->sum2 + (size_t)last * n, n) == 0
			    && !(st->inplace && st->same_offset[i] && !st->same_offset[last])) {
				*link = st->next[i];
				st->pruned++;
				continue;
			}
			if (compared == st->max_chain_len) {
				st->capped++;
				break;
			}
			compared++;
			st->comparisons++;
			if (memcmp(strong, digest, n) == 0) {
				found = i;
				break;
			}
			st->false_alarms++;
			last = i;
			link = &st->next[i];
		}
	}
	if (compared > st->max_chain)
		st->max_chain = compared;
	if (found >= 0) {
		st->streak = 0;
		st->streak_next = -1;
		return found;
	}
	st->streak = offset == st->streak_next ? st->streak + 1 : 1;
	st->streak_next = offset + (st->streak > st->max_streak ? st->blength : 1);
	return -1;
}

/* Block i was sent as matching at offset: the search resumes after it. */
RD_API void rd_matched(struct rd_search *st, int64_t offset, int32_t i)
{
	int64_t next = offset + block_len(st, i);

	st->last_match = next;
	set_window(st, next);
}

/*
 * Mappings that survive their file shrinking.
 *
 * Reading a page of a shared file mapping that lies wholly past the end of
 * the file raises SIGBUS, whose default action kills the process: in a
 * threaded daemon, every transfer at once. rsync_delta.SafeMap registers
 * the address range of each of its mappings here. The SIGBUS handler,
 * installed once for the process, maps an anonymous zero page over the
 * faulting page when the address lies in a registered range, notes the
 * truncation on that range and returns, so the access resumes and reads
 * zeros. Faults anywhere else go to the handler that was there before.
 *
 * The handler reads the table without locks: each slot is a sequence
 * counter (odd while a thread under rd_lock rewrites the slot) and atomic
 * fields. Ranges are registered before the mapping is handed out and
 * released after it is unmapped, so a fault in a live mapping always finds
 * a settled slot.
 */
#if !defined(_WIN32) && !defined(__STDC_NO_ATOMICS__)
#include <stdatomic.h>
#endif
/* The handler may only read slots that need no lock. */
#if !defined(_WIN32) && !defined(__STDC_NO_ATOMICS__) \
	&& ATOMIC_POINTER_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#define MAP_ANONYMOUS MAP_ANON
#endif

#define RD_RANGES 256

struct rd_range {
	atomic_uint seq;
	atomic_uintptr_t start;	/* 0 when the slot is free */
	atomic_uintptr_t end;
	atomic_int truncated;
};

static struct rd_range rd_ranges[RD_RANGES];
static pthread_mutex_t rd_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction rd_previous;
static uintptr_t rd_page;

static void rd_write_range(struct rd_range *r, uintptr_t start, uintptr_t end)
{
	unsigned seq = atomic_load(&r->seq);

	atomic_store(&r->seq, seq + 1);
	atomic_store(&r->truncated, 0);
	atomic_store(&r->end, end);
	atomic_store(&r->start, start);
	atomic_store(&r->seq, seq + 2);
}

/* Marks every range holding addr as truncated; whether there was one. */
static int rd_claim(uintptr_t addr)
{
	int i, hit = 0;

	for (i = 0; i < RD_RANGES; i++) {
		struct rd_range *r = &rd_ranges[i];
		uintptr_t start, end;
		unsigned seq;

		do {
			while ((seq = atomic_load(&r->seq)) & 1)
				;
			start = atomic_load(&r->start);
			end = atomic_load(&r->end);
		} while (atomic_load(&r->seq) != seq);
		if (start && start <= addr && addr < end) {
			atomic_store(&r->truncated, 1);
			hit = 1;
		}
	}
	return hit;
}

static void rd_sigbus(int sig, siginfo_t *info, void *context)
{
	int saved = errno;

	if (info && info->si_code > 0 && rd_claim((uintptr_t)info->si_addr)) {
		void *page = (void *)((uintptr_t)info->si_addr & ~(rd_page - 1));

		if (mmap(page, rd_page, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
		    != MAP_FAILED) {
			errno = saved;
			return;
		}
	}
	errno = saved;
	if (rd_previous.sa_flags & SA_SIGINFO) {
		rd_previous.sa_sigaction(sig, info, context);
	} else if (rd_previous.sa_handler != SIG_DFL && rd_previous.sa_handler != SIG_IGN) {
		rd_previous.sa_handler(sig);
	} else if (rd_previous.sa_handler == SIG_DFL || (info && info->si_code > 0)) {
		/* Die of it, as without this handler: a fault comes back when the
		 * access resumes, a signal sent by kill is raised again. */
		struct sigaction dfl;

		memset(&dfl, 0, sizeof dfl);
		dfl.sa_handler = SIG_DFL;
		sigemptyset(&dfl.sa_mask);
		sigaction(sig, &dfl, NULL);
		if (!info || info->si_code <= 0)
			raise(sig);
	}
}

static int rd_is_ours(const struct sigaction *sa)
{
	return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == rd_sigbus;
}

/* Makes sure the handler is in place: 0, or -1 when it is not and cannot
 * be. Whatever handled SIGBUS before gets the faults outside our ranges.
 * If some other handler has since replaced ours, it may itself pass faults
 * on to ours: that is not fought over, and the caller reads files instead
 * of mapping them. */
RD_API int rd_safemap_install(void)
{
	static int installed;
	struct sigaction current, ours;
	int ok = -1;

	pthread_mutex_lock(&rd_lock);
	if (sigaction(SIGBUS, NULL, &current) == 0) {
		if (rd_is_ours(&current)) {
			ok = 0;
		} else if (!installed || (!(current.sa_flags & SA_SIGINFO)
					  && (current.sa_handler == SIG_DFL
					      || current.sa_handler == SIG_IGN))) {
			long page = sysconf(_SC_PAGESIZE);

			memset(&ours, 0, sizeof ours);
			ours.sa_sigaction = rd_sigbus;
			ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
			sigemptyset(&ours.sa_mask);
			if (page > 0 && (page & (page - 1)) == 0) {
				rd_page = (uintptr_t)page;
				rd_previous = current;
				if (sigaction(SIGBUS, &ours, NULL) == 0) {
					installed = 1;
					ok = 0;
				}
			}
		}
	}
	pthread_mutex_unlock(&rd_lock);
	return ok;
}

/* Registers the mapping at addr, len bytes long, and returns its slot, or
 * -1 when the table is full. */
RD_API int32_t rd_safemap_register(const void *addr, int64_t len)
{
	uintptr_t start = (uintptr_t)addr & ~(rd_page - 1);
	uintptr_t end = ((uintptr_t)addr + (uintptr_t)len + rd_page - 1) & ~(rd_page - 1);
	int32_t i, slot = -1;

	if (!rd_page || !addr || len <= 0)
		return -1;
	pthread_mutex_lock(&rd_lock);
	for (i = 0; i < RD_RANGES; i++) {
		if (!atomic_load(&rd_ranges[i].start)) {
			rd_write_range(&rd_ranges[i], start, end);
			slot = i;
			break;
		}
	}
	pthread_mutex_unlock(&rd_lock);
	return slot;
}

/* Whether a fault in the mapping of slot has been absorbed. */
RD_API int rd_safemap_truncated(int32_t slot)
{
	if (slot < 0 || slot >= RD_RANGES)
		return 0;
	return atomic_load(&rd_ranges[slot].truncated);
}

/* Frees slot once its mapping is gone; returns rd_safemap_truncated. */
RD_API int rd_safemap_release(int32_t slot)
{
	int truncated;

	if (slot < 0 || slot >= RD_RANGES)
		return 0;
	pthread_mutex_lock(&rd_lock);
	truncated = atomic_load(&rd_ranges[slot].truncated);
	rd_write_range(&rd_ranges[slot], 0, 0);
	pthread_mutex_unlock(&rd_lock);
	return truncated;
}
#else
RD_API int rd_safemap_install(void)
{
	return -1;
}

RD_API int32_t rd_safemap_register(const void *addr, int64_t len)
{
	(void)addr;
	(void)len;
	return -1;
}

RD_API int rd_safemap_truncated(int32_t slot)
{
	(void)slot;
	return 0;
}

RD_API int rd_safemap_release(int32_t slot)
{
	(void)slot;
	return 0;
}
#endif

/* setuptools builds this as an extension module, and some linkers insist on
 * the module's init symbol. The library is for ctypes: importing it fails. */
RD_API void *PyInit__rsync_delta(void)
{
	return NULL;
}
