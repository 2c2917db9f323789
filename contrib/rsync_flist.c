/*
 * The file list's encoder (send_file_entry) and decoder (recv_file_entry)
 * for the common entries, for rsync_flist.py, in the same ctypes-loaded
 * library as the delta search.
 *
 * From protocol 30 each entry on the wire is: the xflags (a varint, or one
 * or two bytes), the length of the name's prefix shared with the previous
 * entry (XMIT_SAME_NAME) and of the rest (a byte, or a varint with
 * XMIT_LONG_NAME), the rest of the name, the size (varlong, 3 bytes at
 * least), the mtime unless XMIT_SAME_TIME (varlong, 4), its nanoseconds
 * with XMIT_MOD_NSEC (varint), the mode unless XMIT_SAME_MODE (4 bytes),
 * the uid and gid unless XMIT_SAME_UID/GID (varints, when owner and group
 * are kept), a symlink's target (varint length, bytes) and, with
 * --checksum, a regular file's sum.
 *
 * fl_decode() decodes such entries one after another into fixed-size
 * records, and stops before the first entry it leaves to Python: the end
 * of the list, an entry whose bytes run past the data, a hard link, a
 * device or special file, an entry that carries a user or group name,
 * and anything malformed (rsync_flist.py then parses that entry itself
 * and reports what is wrong with it). An entry is either decoded whole,
 * with the state (previous name, mtime, mode, uid, gid) updated, or not
 * touched at all.
 *
 * fl_encode() is the sender's half: it writes entries given as records
 * (regular files, directories and symlinks without hard links; Python
 * sends the others) with the same SAME_* compression against the same
 * state, byte for byte what rsync_flist.FlistEncoder.send writes.
 *
 * fl_lstat() is the receiving generator's look at the destination for a
 * run of listed files in one directory: an lstat of each, relative to the
 * directory's descriptor (names are single components, so nothing outside
 * it is looked at).
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#if defined(_WIN32)
#define FL_API __declspec(dllexport)
#else
#define FL_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a signature or one of the structs below changes. */
#define FL_ABI_VERSION 3

#define FL_MAX_PATH 4096
#define FL_MAX_WIRE_NSEC 999999999

enum {
	XMIT_TOP_DIR = 1 << 0,
	XMIT_SAME_MODE = 1 << 1,
	XMIT_EXTENDED_FLAGS = 1 << 2,
	XMIT_SAME_UID = 1 << 3,
	XMIT_SAME_GID = 1 << 4,
	XMIT_SAME_NAME = 1 << 5,
	XMIT_LONG_NAME = 1 << 6,
	XMIT_SAME_TIME = 1 << 7,
	XMIT_NO_CONTENT_DIR = 1 << 8,
	XMIT_HLINKED = 1 << 9,
	XMIT_USER_NAME_FOLLOWS = 1 << 10,
	XMIT_GROUP_NAME_FOLLOWS = 1 << 11,
	XMIT_HLINK_FIRST = 1 << 12,	/* also XMIT_IO_ERROR_ENDLIST */
	XMIT_MOD_NSEC = 1 << 13,
};

/* FileEntry.flags bits (rsync_flist.FLAG_*), and one of the record's own. */
enum { FLAG_TOP_DIR = 1 << 0, FLAG_CONTENT_DIR = 1 << 2, FLAG_IMPLIED_DIR = 1 << 9, FL_HAS_SUM = 1 << 31 };

enum { S_FMT = 0170000, S_REG = 0100000, S_DIR = 0040000, S_LNK = 0120000 };

struct fl_params {
	int32_t protocol;
	int32_t varint_flags;	/* xfer_flags_as_varint */
	int32_t owner, group, links, checksum, relative;
	int32_t csum_len;
};

struct fl_state {
	int64_t modtime;
	uint32_t mode, uid, gid;
	int32_t lastname_len;
	unsigned char lastname[FL_MAX_PATH];
};

/* One decoded entry; name, link and sum are at offsets into `strings`. */
struct fl_record {
	int64_t size;
	int64_t mtime;
	uint32_t mode, nsec, uid, gid;
	uint32_t name_off, name_len;
	uint32_t link_off, link_len;	/* link_len 0: no link */
	uint32_t sum_off;		/* csum_len bytes, with FL_HAS_SUM */
	uint32_t flags;
};

/* One entry to encode; name, link and sum at offsets into `strings`. */
struct fl_entry {
	int64_t size;
	int64_t mtime;
	uint32_t mode, nsec, uid, gid, flags;
	uint32_t name_off, name_len;
	uint32_t link_off, link_len;
	uint32_t sum_off, sum_len;	/* sum_len 0: csum_len zero bytes */
};

#if defined(__APPLE__)
#define FL_MTIM(st) ((st).st_mtimespec)
#else
#define FL_MTIM(st) ((st).st_mtim)
#endif

/* What the quick check needs of a destination file, or err (an errno). */
struct fl_stat {
	int64_t size;
	int64_t mtime_ns;
	uint32_t mode, uid, gid;
	int32_t err;
};

FL_API int fl_abi_version(void)
{
	return FL_ABI_VERSION;
}

FL_API size_t fl_record_size(void)
{
	return sizeof(struct fl_record);
}

FL_API size_t fl_entry_size(void)
{
	return sizeof(struct fl_entry);
}

FL_API size_t fl_stat_size(void)
{
	return sizeof(struct fl_stat);
}

FL_API size_t fl_state_size(void)
{
	return sizeof(struct fl_state);
}

/* rsync's int_byte_extra: how many bytes follow a varint's first byte,
 * by that byte's top six bits. */
static int extra_bytes(unsigned char ch)
{
	unsigned top = ch >> 2;

	if (top < 32)
		return 0;
	if (top < 48)
		return 1;
	if (top < 56)
		return 2;
	if (top < 60)
		return 3;
	if (top < 62)
		return 4;
	return top == 62 ? 5 : 6;
}

static uint64_t little_endian(const unsigned char *p, int n)
{
	uint64_t v = 0;

	while (n-- > 0)
		v = v << 8 | p[n];
	return v;
}

/* read_varint: 0 with *v set, or -1 for short data or an overflow. */
static int varint(const unsigned char *d, int64_t len, int64_t *pos, int32_t *v)
{
	int64_t p = *pos;
	int extra;
	uint64_t x;

	if (p >= len)
		return -1;
	extra = extra_bytes(d[p]);
	if (extra >= 5 || p + 1 + extra > len)
		return -1;
	x = little_endian(d + p + 1, extra);
	if (extra < 4)
		x |= (uint64_t)(d[p] & ((1u << (8 - extra)) - 1)) << (8 * extra);
	*v = (int32_t)(uint32_t)x;
	*pos = p + 1 + extra;
	return 0;
}

/* read_varlong with min_bytes: 0 with *v set, or -1. */
static int varlong(const unsigned char *d, int64_t len, int64_t *pos, int min_bytes, int64_t *v)
{
	int64_t p = *pos, end = p + min_bytes;
	int extra, low;
	uint64_t x;

	if (end > len)
		return -1;
	extra = extra_bytes(d[p]);
	if (min_bytes + extra > 9)
		return -1;
	if (extra) {
		if (end + extra > len)
			return -1;
		low = min_bytes - 1 + extra;
		x = little_endian(d + p + 1, low);
		if (low < 8)
			x |= (uint64_t)(d[p] & ((1u << (8 - extra)) - 1)) << (8 * low);
		end += extra;
	} else {
		x = little_endian(d + p + 1, min_bytes - 1) | (uint64_t)d[p] << (8 * (min_bytes - 1));
	}
	*v = (int64_t)x;
	*pos = end;
	return 0;
}

/* What check_name lets through: no NUL, no leading slash unless the
 * names are relative, no ".." component. */
static int name_ok(const unsigned char *name, int32_t n, int relative)
{
	int32_t i, start = 0;

	if (memchr(name, 0, n))
		return 0;
	if (name[0] == '/' && !relative)
		return 0;
	for (i = 0; i <= n; i++) {
		if (i == n || name[i] == '/') {
			if (i - start == 2 && name[start] == '.' && name[start + 1] == '.')
				return 0;
			start = i + 1;
		}
	}
	return 1;
}

static int wire_type_ok(uint32_t mode)
{
	uint32_t fmt = mode & S_FMT;

	return fmt == S_REG || fmt == S_DIR || fmt == S_LNK;
}

/*
 * Decodes entries of data[*pos..len) into recs (at most max_recs) and
 * their strings into strings[*strings_used..strings_cap), advancing *pos
 * and *strings_used past each entry decoded. Returns how many.
 */
FL_API int32_t fl_decode(const unsigned char *data, int64_t len, int64_t *pos,
			 const struct fl_params *pa, struct fl_state *st,
			 struct fl_record *recs, int32_t max_recs,
			 unsigned char *strings, int64_t strings_cap, int64_t *strings_used)
{
	int32_t n = 0;
	int64_t used = *strings_used;

	if (pa->protocol < 30)
		return 0;
	while (n < max_recs && strings_cap - used >= 2 * FL_MAX_PATH + pa->csum_len) {
		int64_t p = *pos, size, modtime = st->modtime;
		int32_t xflags, l1 = 0, l2, nsec = 0, v, link_len = 0;
		uint32_t mode = st->mode, uid = st->uid, gid = st->gid, flags;
		unsigned char *name = strings + used;
		struct fl_record *r = recs + n;

		if (p >= len)
			break;
		if (pa->varint_flags) {
			if (varint(data, len, &p, &xflags) < 0)
				break;
		} else {
			xflags = data[p++];
			if (xflags & XMIT_EXTENDED_FLAGS) {
				if (p >= len)
					break;
				xflags |= data[p++] << 8;
			}
		}
		if (xflags <= 0 || (xflags & (XMIT_HLINKED | XMIT_HLINK_FIRST | XMIT_USER_NAME_FOLLOWS
						| XMIT_GROUP_NAME_FOLLOWS)))
			break;
		if (xflags & XMIT_SAME_NAME) {
			if (p >= len)
				break;
			l1 = data[p++];
		}
		if (!(xflags & XMIT_LONG_NAME)) {
			if (p >= len)
				break;
			l2 = data[p++];
		} else if (varint(data, len, &p, &l2) < 0) {
			break;
		}
		if (l1 > st->lastname_len || l2 < 0 || l2 >= FL_MAX_PATH - l1 || l1 + l2 == 0
		    || p + l2 > len)
			break;
		memcpy(name, st->lastname, l1);
		memcpy(name + l1, data + p, l2);
		p += l2;
		if (!name_ok(name, l1 + l2, pa->relative))
			break;
		if (varlong(data, len, &p, 3, &size) < 0 || size < 0)
			break;
		if (!(xflags & XMIT_SAME_TIME) && varlong(data, len, &p, 4, &modtime) < 0)
			break;
		if (xflags & XMIT_MOD_NSEC) {
			if (varint(data, len, &p, &nsec) < 0 || nsec < 0 || nsec > FL_MAX_WIRE_NSEC)
				break;
		}
		if (!(xflags & XMIT_SAME_MODE)) {
			if (p + 4 > len)
				break;
			mode = (uint32_t)little_endian(data + p, 4);
			p += 4;
		}
		if (!wire_type_ok(mode))
			break;
		if (pa->owner && !(xflags & XMIT_SAME_UID)) {
			if (varint(data, len, &p, &v) < 0)
				break;
			uid = (uint32_t)v;
		}
		if (pa->group && !(xflags & XMIT_SAME_GID)) {
			if (varint(data, len, &p, &v) < 0)
				break;
			gid = (uint32_t)v;
		}
		r->name_off = (uint32_t)used;
		r->name_len = (uint32_t)(l1 + l2);
		used += l1 + l2;
		r->link_off = (uint32_t)used;
		if ((mode & S_FMT) == S_LNK && pa->links) {
			if (varint(data, len, &p, &link_len) < 0 || link_len <= 0 || link_len >= FL_MAX_PATH
			    || p + link_len > len || memchr(data + p, 0, link_len))
				break;
			memcpy(strings + used, data + p, link_len);
			p += link_len;
			used += link_len;
		}
		flags = xflags & XMIT_TOP_DIR ? FLAG_TOP_DIR : 0;
		if (!(xflags & XMIT_NO_CONTENT_DIR))
			flags |= FLAG_CONTENT_DIR;
		r->sum_off = (uint32_t)used;
		if (pa->checksum && (mode & S_FMT) == S_REG) {
			if (p + pa->csum_len > len)
				break;
			memcpy(strings + used, data + p, pa->csum_len);
			p += pa->csum_len;
			used += pa->csum_len;
			flags |= FL_HAS_SUM;
		}
		r->size = size;
		r->mtime = modtime;
		r->mode = mode;
		r->nsec = (uint32_t)nsec;
		r->uid = uid;
		r->gid = gid;
		r->link_len = (uint32_t)link_len;
		r->flags = flags;
		memcpy(st->lastname, name, l1 + l2);
		st->lastname_len = l1 + l2;
		st->modtime = modtime;
		st->mode = mode;
		st->uid = uid;
		st->gid = gid;
		*pos = p;
		*strings_used = used;
		n++;
	}
	return n;
}

/* write_varint of a 32-bit value: its low bytes, with the count of those
 * beyond the first in the leading 1 bits of the first byte. */
static unsigned char *put_varint(unsigned char *out, uint32_t x)
{
	unsigned char b[5];
	int cnt = 4, i;
	unsigned bit;

	for (i = 1; i <= 4; i++, x >>= 8)
		b[i] = x & 0xFF;
	while (cnt > 1 && b[cnt] == 0)
		cnt--;
	bit = 1u << (8 - cnt);
	if (b[cnt] >= bit) {
		cnt++;
		b[0] = (unsigned char)~(bit - 1);
	} else if (cnt > 1) {
		b[0] = (unsigned char)(b[cnt] | ~(bit * 2 - 1));
	} else {
		b[0] = b[cnt];
	}
	memcpy(out, b, cnt);
	return out + cnt;
}

/* write_varlong: min_bytes - 1 low bytes always, more as needed. */
static unsigned char *put_varlong(unsigned char *out, int64_t v, int min_bytes)
{
	unsigned char b[9];
	uint64_t x = (uint64_t)v;
	int cnt, i;
	unsigned bit;

	for (i = 1; i <= 8; i++, x >>= 8)
		b[i] = x & 0xFF;
	for (cnt = 8; cnt > min_bytes && b[cnt] == 0; cnt--)
		;
	bit = 1u << (7 - cnt + min_bytes);
	if (b[cnt] >= bit) {
		cnt++;
		b[0] = (unsigned char)~(bit - 1);
	} else if (cnt > min_bytes) {
		b[0] = (unsigned char)(b[cnt] | ~(bit * 2 - 1));
	} else {
		b[0] = b[cnt];
	}
	memcpy(out, b, cnt);
	return out + cnt;
}

/*
 * Encodes entries[0..n) after out[*out_len], as far as out_cap leaves room
 * for the largest entry, advancing *out_len. Returns how many.
 */
FL_API int32_t fl_encode(const struct fl_params *pa, struct fl_state *st,
			 const struct fl_entry *entries, int32_t n, const unsigned char *strings,
			 unsigned char *out, int64_t out_cap, int64_t *out_len)
{
	int32_t i;
	unsigned char *o = out + *out_len;

	if (pa->protocol < 30)
		return 0;
	for (i = 0; i < n; i++) {
		const struct fl_entry *e = entries + i;
		const unsigned char *name = strings + e->name_off;
		uint32_t xflags = 0, fmt = e->mode & S_FMT, l1 = 0, l2, limit;

		if (out_cap - (o - out) < 3 * FL_MAX_PATH + 64 + pa->csum_len
		    || e->name_len >= FL_MAX_PATH || e->link_len >= FL_MAX_PATH)
			break;
		if (fmt == S_DIR) {
			if (e->flags & FLAG_CONTENT_DIR)
				xflags = e->flags & FLAG_TOP_DIR;
			else if (e->flags & FLAG_IMPLIED_DIR)
				xflags = XMIT_TOP_DIR | XMIT_NO_CONTENT_DIR;
			else
				xflags = XMIT_NO_CONTENT_DIR;
		}
		if (e->mode == st->mode)
			xflags |= XMIT_SAME_MODE;
		if (!pa->owner || (e->uid == st->uid && st->lastname_len))
			xflags |= XMIT_SAME_UID;
		if (!pa->group || (e->gid == st->gid && st->lastname_len))
			xflags |= XMIT_SAME_GID;
		if (e->mtime == st->modtime)
			xflags |= XMIT_SAME_TIME;
		if (e->nsec && pa->protocol >= 31)
			xflags |= XMIT_MOD_NSEC;
		limit = e->name_len < (uint32_t)st->lastname_len ? e->name_len : (uint32_t)st->lastname_len;
		if (limit > 255)
			limit = 255;
		while (l1 < limit && name[l1] == st->lastname[l1])
			l1++;
		l2 = e->name_len - l1;
		if (l1)
			xflags |= XMIT_SAME_NAME;
		if (l2 > 255)
			xflags |= XMIT_LONG_NAME;
		if (pa->varint_flags) {
			o = put_varint(o, xflags ? xflags : XMIT_EXTENDED_FLAGS);
		} else {
			if (!xflags && fmt != S_DIR)
				xflags |= XMIT_TOP_DIR;
			if ((xflags & 0xFF00) || !xflags) {
				xflags |= XMIT_EXTENDED_FLAGS;
				*o++ = xflags & 0xFF;
				*o++ = (xflags >> 8) & 0xFF;
			} else {
				*o++ = (unsigned char)xflags;
			}
		}
		if (xflags & XMIT_SAME_NAME)
			*o++ = (unsigned char)l1;
		if (xflags & XMIT_LONG_NAME)
			o = put_varint(o, l2);
		else
			*o++ = (unsigned char)l2;
		memcpy(o, name + l1, l2);
		o += l2;
		o = put_varlong(o, e->size, 3);
		if (!(xflags & XMIT_SAME_TIME))
			o = put_varlong(o, e->mtime, 4);
		if (xflags & XMIT_MOD_NSEC)
			o = put_varint(o, e->nsec);
		if (!(xflags & XMIT_SAME_MODE)) {
			o[0] = e->mode & 0xFF;
			o[1] = (e->mode >> 8) & 0xFF;
			o[2] = (e->mode >> 16) & 0xFF;
			o[3] = (e->mode >> 24) & 0xFF;
			o += 4;
		}
		if (!(xflags & XMIT_SAME_UID))
			o = put_varint(o, e->uid);
		if (!(xflags & XMIT_SAME_GID))
			o = put_varint(o, e->gid);
		if (pa->links && fmt == S_LNK) {
			o = put_varint(o, e->link_len);
			memcpy(o, strings + e->link_off, e->link_len);
			o += e->link_len;
		}
		if (pa->checksum && fmt == S_REG) {
			if (e->sum_len)
				memcpy(o, strings + e->sum_off, pa->csum_len);
			else
				memset(o, 0, pa->csum_len);
			o += pa->csum_len;
		}
		memcpy(st->lastname, name, e->name_len);
		st->lastname_len = (int32_t)e->name_len;
		st->mode = e->mode;
		if (!(xflags & XMIT_SAME_UID))
			st->uid = e->uid;
		if (!(xflags & XMIT_SAME_GID))
			st->gid = e->gid;
		st->modtime = e->mtime;
	}
	*out_len = o - out;
	return i;
}

/* lstat (fstatat without following a symlink) of each of n names, each
 * ended by a NUL, in the directory dirfd. */
FL_API void fl_lstat(int dirfd, const char *names, int32_t n, struct fl_stat *out)
{
	struct stat st;
	int32_t i;

	for (i = 0; i < n; i++, out++) {
		if (fstatat(dirfd, names, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			memset(out, 0, sizeof(*out));
			out->err = errno;
		} else {
			out->size = st.st_size;
			out->mtime_ns = (int64_t)FL_MTIM(st).tv_sec * 1000000000 + FL_MTIM(st).tv_nsec;
			out->mode = st.st_mode;
			out->uid = st.st_uid;
			out->gid = st.st_gid;
			out->err = 0;
		}
		names += strlen(names) + 1;
	}
}
