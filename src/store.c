/*
 * store.c — the state file: state <-> JSON, signatures, verification,
 * durable writes, the secret, the writers' lock.  Frontend-safe: shared by
 * the server module and the command-line tool (DESIGN §3, §4).
 */
#include "ks_base.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/sha2.h"

#ifdef FRONTEND
#include "common/file_utils.h"
#else
#include "storage/fd.h"
#endif

#include "store.h"

#ifdef FRONTEND
#define ks_durable_rename(from, to) durable_rename((from), (to))
#else
#define ks_durable_rename(from, to) durable_rename((from), (to), LOG)
#endif

const char *const ks_mode_sql_names[KS_MODE_COUNT] = {
	"disengaged", "halt_noncritical", "halt_all", "emergency"
};

const char *const ks_mode_file_names[KS_MODE_COUNT] = {
	"DISENGAGED", "HALT_NONCRITICAL", "HALT_ALL", "EMERGENCY"
};

/* A state with every optional key absent. */
void
ks_state_init(KsState *state)
{
	memset(state, 0, sizeof(KsState));
	state->mode = KS_DISENGAGED;
	state->generation = -1;
	state->previous_mode = KS_NO_MODE;
	state->affected_tasks = -1;
	state->event_id = -1;
}

/* Mode from its upper-case file name, or KS_NO_MODE. */
int
ks_mode_from_file_name(const char *name)
{
	for (int m = 0; m < KS_MODE_COUNT; m++)
		if (strcmp(name, ks_mode_file_names[m]) == 0)
			return m;
	return KS_NO_MODE;
}

/* Mode from its lower-case SQL name, or KS_NO_MODE. */
int
ks_mode_from_sql_name(const char *name)
{
	for (int m = 0; m < KS_MODE_COUNT; m++)
		if (strcmp(name, ks_mode_sql_names[m]) == 0)
			return m;
	return KS_NO_MODE;
}

/* Hex-encode a digest into 65 bytes. */
static void
to_hex(const uint8 *digest, char *hex)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
	{
		hex[2 * i] = digits[digest[i] >> 4];
		hex[2 * i + 1] = digits[digest[i] & 0x0F];
	}
	hex[KS_HEX_DIGEST_LEN] = '\0';
}

/* HMAC-SHA256 of data under key, as lower-case hex. */
bool
ks_hmac_hex(const char *key, size_t keylen, const char *data, size_t datalen,
			char *hex)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	bool		ok;

	if (ctx == NULL)
		return false;
	ok = pg_hmac_init(ctx, (const uint8 *) key, keylen) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) data, datalen) == 0 &&
		pg_hmac_final(ctx, digest, sizeof(digest)) == 0;
	pg_hmac_free(ctx);
	if (ok)
		to_hex(digest, hex);
	return ok;
}

/* SHA-256 of data, as lower-case hex. */
bool
ks_sha256_hex(const char *data, size_t datalen, char *hex)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	bool		ok;

	if (ctx == NULL)
		return false;
	ok = pg_cryptohash_init(ctx) == 0 &&
		pg_cryptohash_update(ctx, (const uint8 *) data, datalen) == 0 &&
		pg_cryptohash_final(ctx, digest, sizeof(digest)) == 0;
	pg_cryptohash_free(ctx);
	if (ok)
		to_hex(digest, hex);
	return ok;
}

/* Compare two hex digests in time independent of where they differ. */
bool
ks_hex_equal(const char *a, const char *b)
{
	size_t		la = strlen(a);
	unsigned char diff = 0;

	if (la != strlen(b))
		return false;
	for (size_t i = 0; i < la; i++)
		diff |= (unsigned char) a[i] ^ (unsigned char) b[i];
	return diff == 0;
}

/* The state as a JSON object, without the signature. */
static KsJson *
state_object(const KsState *st)
{
	KsJson	   *obj = ks_json_object();

	ks_json_put_string(obj, "mode", ks_mode_file_names[st->mode]);
	ks_json_put_string(obj, "engaged_at", st->engaged_at);
	ks_json_put_string(obj, "reason", st->reason);
	ks_json_put_string(obj, "triggered_by", st->triggered_by);
	if (st->generation >= 0)
		ks_json_put_int(obj, "generation", st->generation);
	if (st->previous_mode != KS_NO_MODE)
		ks_json_put_string(obj, "previous_mode", ks_mode_file_names[st->previous_mode]);
	if (st->affected_tasks >= 0)
		ks_json_put_int(obj, "affected_tasks", st->affected_tasks);
	if (st->event_id >= 0)
		ks_json_put_int(obj, "event_id", st->event_id);
	if (st->source)
		ks_json_put_string(obj, "source", st->source);
	if (st->key_id)
		ks_json_put_string(obj, "key_id", st->key_id);
	return obj;
}

/* The canonical bytes of a state: what its signature covers. */
void
ks_state_canonical(StringInfo out, const KsState *state)
{
	ks_json_canonical(out, state_object(state), NULL);
}

/*
 * The file's text: the canonical members, one per line as Python's
 * json.dump(indent=2) lays them out, then the signature.  Returns false if
 * no signature could be computed.
 */
bool
ks_state_file_text(StringInfo out, const KsState *state,
				   const char *secret, size_t secretlen)
{
	KsJson	   *obj = state_object(state);
	StringInfoData canon;
	char		sig[KS_HEX_DIGEST_LEN + 1];
	int			sorted[16];

	initStringInfo(&canon);
	ks_json_canonical(&canon, obj, NULL);
	if (!ks_hmac_hex(secret, secretlen, canon.data, canon.len, sig))
		return false;
	ks_json_sorted_members(obj, sorted);
	ks_json_put_string(obj, "signature", sig);
	sorted[obj->nitems - 1] = obj->nitems - 1;

	/*
	 * One member per line as json.dump(indent=2) lays them out: the members
	 * in canonical order, the signature last.
	 */
	appendStringInfoString(out, "{\n");
	for (int i = 0; i < obj->nitems; i++)
	{
		appendStringInfoString(out, "  ");
		ks_json_append_string(out, obj->keys[sorted[i]]);
		appendStringInfoString(out, ": ");
		ks_json_canonical(out, obj->items[sorted[i]], NULL);
		appendStringInfoString(out, i + 1 < obj->nitems ? ",\n" : "\n");
	}
	appendStringInfoString(out, "}\n");
	return true;
}

/* Copy a string member into *dst; false if it is neither string nor null. */
static bool
take_string(const KsJson *obj, const char *key, char **dst, bool nullable)
{
	const KsJson *v = ks_json_get(obj, key);

	*dst = NULL;
	if (v == NULL || v->kind == KSJ_NULL)
		return nullable || v == NULL;
	if (v->kind != KSJ_STRING)
		return false;
	*dst = v->str;
	return true;
}

/* Copy a non-negative integer member; absent leaves -1. */
static bool
take_count(const KsJson *obj, const char *key, int64 *dst)
{
	const KsJson *v = ks_json_get(obj, key);

	*dst = -1;
	if (v == NULL || v->kind == KSJ_NULL)
		return true;
	if (v->kind != KSJ_INT || v->ival < 0)
		return false;
	*dst = v->ival;
	return true;
}

#define PROBLEM(...) (snprintf(problem, problemlen, __VA_ARGS__), KS_FILE_BAD)

/*
 * Judge a file's text.  The signature is checked over every member but
 * "signature", known or not, exactly as the Python library does; then the
 * known members must have the right types.
 */
KsVerdict
ks_state_from_text(const char *text, size_t len,
				   const char *secret, size_t secretlen, const char *secret_file,
				   bool require_hmac, KsState *st, char *problem, size_t problemlen)
{
	KsJson	   *root;
	const KsJson *sig;
	const KsJson *mode;
	char	   *prev = NULL;
	int64		dummy;
	KsVerdict	verdict = KS_FILE_VALID;

	ks_state_init(st);
	if (len == 0)
		return PROBLEM("the file is empty");
	root = ks_json_parse(text, len, problem, problemlen);
	if (root == NULL)
		return KS_FILE_BAD;
	if (root->kind != KSJ_OBJECT)
		return PROBLEM("not a JSON object");

	sig = ks_json_get(root, "signature");
	if (sig != NULL && sig->kind != KSJ_STRING)
		return PROBLEM("\"signature\" is not a string");
	if (sig != NULL && secret != NULL)
	{
		StringInfoData canon;
		char		expect[KS_HEX_DIGEST_LEN + 1];

		initStringInfo(&canon);
		ks_json_canonical(&canon, root, "signature");
		if (!ks_hmac_hex(secret, secretlen, canon.data, canon.len, expect))
			return PROBLEM("could not compute HMAC-SHA256");
		if (!ks_hex_equal(expect, sig->str))
		{
			/* signed with a retired key that is still kept beside the secret? */
			const KsJson *kid = ks_json_get(root, "key_id");
			char	   *old;
			size_t		oldlen;

			if (secret_file == NULL || kid == NULL || kid->kind != KSJ_STRING ||
				!ks_retired_secret(secret_file, kid->str, &old, &oldlen) ||
				!ks_hmac_hex(old, oldlen, canon.data, canon.len, expect) ||
				!ks_hex_equal(expect, sig->str))
				return PROBLEM("the signature does not match the contents");
		}
	}
	else if (require_hmac)
		return PROBLEM(sig ? "no signing secret to verify the signature with"
					   : "the file is not signed");
	else
		verdict = KS_FILE_UNSIGNED;

	mode = ks_json_get(root, "mode");
	if (mode == NULL || mode->kind != KSJ_STRING)
		return PROBLEM("\"mode\" is missing or not a string");
	if (ks_mode_from_file_name(mode->str) == KS_NO_MODE)
		return PROBLEM("unknown mode");
	st->mode = ks_mode_from_file_name(mode->str);

	if (!take_string(root, "engaged_at", &st->engaged_at, true) ||
		(st->engaged_at && !ks_parse_iso(st->engaged_at, &dummy)))
		return PROBLEM("\"engaged_at\" is not an ISO-8601 time stamp or null");
	if (!take_string(root, "reason", &st->reason, true))
		return PROBLEM("\"reason\" is not a string or null");
	if (!take_string(root, "triggered_by", &st->triggered_by, true))
		return PROBLEM("\"triggered_by\" is not a string or null");
	if (!take_count(root, "generation", &st->generation))
		return PROBLEM("\"generation\" is not a non-negative integer");
	if (!take_count(root, "affected_tasks", &st->affected_tasks))
		return PROBLEM("\"affected_tasks\" is not a non-negative integer");
	if (!take_count(root, "event_id", &st->event_id))
		return PROBLEM("\"event_id\" is not a non-negative integer");
	if (!take_string(root, "source", &st->source, true))
		return PROBLEM("\"source\" is not a string");
	if (!take_string(root, "key_id", &st->key_id, true))
		return PROBLEM("\"key_id\" is not a string");
	if (!take_string(root, "previous_mode", &prev, true))
		return PROBLEM("\"previous_mode\" is not a string");
	if (prev != NULL)
	{
		st->previous_mode = ks_mode_from_file_name(prev);
		if (st->previous_mode == KS_NO_MODE)
			return PROBLEM("unknown previous_mode");
	}
	return verdict;
}

/*
 * Read a whole regular file of at most maxlen bytes.  Symbolic links,
 * directories and other non-regular files are refused: the state file is
 * only ever a plain file we or a library renamed into place.
 */
bool
ks_read_file(const char *path, size_t maxlen, char **contents, size_t *len,
			 char *problem, size_t problemlen)
{
	struct stat sb;
	int			fd;
	char	   *buf;
	size_t		got = 0;

	*contents = NULL;
	*len = 0;
	if (lstat(path, &sb) != 0)
	{
		snprintf(problem, problemlen, "cannot stat: %s", strerror(errno));
		return false;
	}
	if (S_ISLNK(sb.st_mode))
	{
		snprintf(problem, problemlen, "is a symbolic link");
		return false;
	}
	if (S_ISDIR(sb.st_mode))
	{
		snprintf(problem, problemlen, "is a directory");
		return false;
	}
	if (!S_ISREG(sb.st_mode))
	{
		snprintf(problem, problemlen, "is not a regular file");
		return false;
	}
	if ((size_t) sb.st_size > maxlen)
	{
		snprintf(problem, problemlen, "is too large (%lld bytes; the limit is %zu)",
				 (long long) sb.st_size, maxlen);
		return false;
	}
	fd = open(path, O_RDONLY | O_NOFOLLOW | PG_BINARY, 0);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "cannot open: %s", strerror(errno));
		return false;
	}
	buf = palloc(maxlen + 1);
	for (;;)
	{
		ssize_t		n = read(fd, buf + got, maxlen + 1 - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
		{
			snprintf(problem, problemlen, "cannot read: %s", strerror(errno));
			close(fd);
			pfree(buf);
			return false;
		}
		if (n == 0)
			break;
		got += n;
		if (got > maxlen)
		{
			snprintf(problem, problemlen, "grew past %zu bytes while being read", maxlen);
			close(fd);
			pfree(buf);
			return false;
		}
	}
	close(fd);
	buf[got] = '\0';
	*contents = buf;
	*len = got;
	return true;
}

/* Read and judge the state file once. */
static KsVerdict
state_read_once(const char *path, const char *secret, size_t secretlen,
				const char *secret_file, bool require_hmac, KsState *st,
				char *problem, size_t problemlen)
{
	char	   *text;
	size_t		len;
	struct stat sb;

	ks_state_init(st);
	if (lstat(path, &sb) != 0 && errno == ENOENT)
	{
		snprintf(problem, problemlen, "the file does not exist");
		return KS_FILE_MISSING;
	}
	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &text, &len, problem, problemlen))
		return KS_FILE_BAD;
	return ks_state_from_text(text, len, secret, secretlen, secret_file,
							  require_hmac, st, problem, problemlen);
}

/*
 * Read and judge the state file.  A bad verdict is confirmed by a second
 * read settle_ms later: a writer that truncates and rewrites in place (as
 * the Python library does) may be caught mid-write, and half a file must
 * never flip the state.
 */
KsVerdict
ks_state_read(const char *path, const char *secret, size_t secretlen,
			  const char *secret_file, bool require_hmac, int settle_ms,
			  KsState *st, char *problem, size_t problemlen)
{
	KsVerdict	v = state_read_once(path, secret, secretlen, secret_file,
									require_hmac, st, problem, problemlen);

	if (v != KS_FILE_BAD || settle_ms <= 0)
		return v;
	pg_usleep(settle_ms * 1000L);
	return state_read_once(path, secret, secretlen, secret_file, require_hmac,
						   st, problem, problemlen);
}

/*
 * Write data to path atomically and durably: a temporary file in the same
 * directory, created 0600, then durable_rename() (which fsyncs the file,
 * renames it and fsyncs the directory).
 */
bool
ks_write_file_durably(const char *path, const char *data, size_t len,
					  char *problem, size_t problemlen)
{
	char		tmp[MAXPGPATH];
	int			fd;
	size_t		done = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int) getpid());
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY, S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "could not create \"%s\": %s", tmp, strerror(errno));
		return false;
	}
	while (done < len)
	{
		ssize_t		n = write(fd, data + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
		{
			snprintf(problem, problemlen, "could not write \"%s\": %s", tmp,
					 n < 0 ? strerror(errno) : "no space left");
			close(fd);
			unlink(tmp);
			return false;
		}
		done += n;
	}
	if (close(fd) != 0)
	{
		snprintf(problem, problemlen, "could not close \"%s\": %s", tmp, strerror(errno));
		unlink(tmp);
		return false;
	}
	if (ks_durable_rename(tmp, path) != 0)
	{
		snprintf(problem, problemlen, "could not rename \"%s\" to \"%s\": %s",
				 tmp, path, strerror(errno));
		unlink(tmp);
		return false;
	}
	return true;
}

/* Sign and write a state file atomically. */
bool
ks_state_write(const char *path, const KsState *state,
			   const char *secret, size_t secretlen,
			   char *problem, size_t problemlen)
{
	StringInfoData text;

	initStringInfo(&text);
	if (!ks_state_file_text(&text, state, secret, secretlen))
	{
		snprintf(problem, problemlen, "could not compute HMAC-SHA256");
		return false;
	}
	return ks_write_file_durably(path, text.data, text.len, problem, problemlen);
}

/*
 * Load the signing secret: the file's bytes less one trailing newline.
 * With create, a missing file is made from 32 strong random bytes as 64 hex
 * characters, mode 0600.  The secret's value is never put in a message.
 */
bool
ks_secret_load(const char *path, bool create, char **secret, size_t *len,
			   char *problem, size_t problemlen)
{
	struct stat sb;
	char	   *text;
	size_t		n;

	*secret = NULL;
	*len = 0;
	if (create && lstat(path, &sb) != 0 && errno == ENOENT)
	{
		uint8		raw[32];
		char		hex[65];

		if (!pg_strong_random(raw, sizeof(raw)))
		{
			snprintf(problem, problemlen, "could not generate a random secret");
			return false;
		}
		for (int i = 0; i < 32; i++)
			snprintf(hex + 2 * i, 3, "%02x", raw[i]);
		hex[64] = '\n';
		if (!ks_write_file_durably(path, hex, 65, problem, problemlen))
			return false;
	}
	if (!ks_read_file(path, 4096, &text, &n, problem, problemlen))
		return false;
	if (n > 0 && text[n - 1] == '\n')
		text[--n] = '\0';
	if (n == 0)
	{
		snprintf(problem, problemlen, "the secret file is empty");
		return false;
	}
	*secret = text;
	*len = n;
	return true;
}

/*
 * A retired secret, kept beside the current one as <secret_file>.<key_id>
 * after a rotation, so that what it signed still verifies.  key_id must be
 * 16 lower-case hex digits: it comes from files we are judging and must not
 * name any other path.
 */
bool
ks_retired_secret(const char *secret_file, const char *key_id,
				  char **secret, size_t *len)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];

	if (strlen(key_id) != 16 || strspn(key_id, "0123456789abcdef") != 16)
		return false;
	snprintf(path, sizeof(path), "%s.%s", secret_file, key_id);
	return ks_secret_load(path, false, secret, len, problem, sizeof(problem));
}

/*
 * Take the writers' lock of a state directory (a lock file, flock()), so
 * that the server and the command-line tool never interleave their
 * read-modify-write cycles.  Returns the descriptor to pass to
 * ks_unlock_dir(), or -1.
 */
int
ks_lock_dir(const char *dir, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	int			fd;

	snprintf(path, sizeof(path), "%s/%s", dir, KS_LOCK_FILE_NAME);
	fd = open(path, O_RDWR | O_CREAT | PG_BINARY, S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "could not open \"%s\": %s", path, strerror(errno));
		return -1;
	}
	while (flock(fd, LOCK_EX) != 0)
	{
		if (errno == EINTR)
			continue;
		snprintf(problem, problemlen, "could not lock \"%s\": %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Release the writers' lock. */
void
ks_unlock_dir(int fd)
{
	if (fd >= 0)
		close(fd);
}

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64
days_from_civil(int y, int m, int d)
{
	int			era;
	int			yoe,
				doy,
				doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return (int64) era * 146097 + doe - 719468;
}

/* Format microseconds since the Unix epoch as the file's time stamps. */
void
ks_format_iso_utc(int64 unix_usec, char *buf, size_t buflen)
{
	time_t		secs = (time_t) (unix_usec / 1000000);
	int			usec = (int) (unix_usec % 1000000);
	struct tm	tm;

	if (usec < 0)
		usec += 1000000, secs--;
	gmtime_r(&secs, &tm);
	snprintf(buf, buflen, "%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec, usec);
}

/*
 * Parse what Python's datetime.isoformat() prints for an aware time:
 * YYYY-MM-DDTHH:MM:SS[.ffffff](+HH:MM|-HH:MM|Z).
 */
bool
ks_parse_iso(const char *s, int64 *unix_usec)
{
	int			y,
				mo,
				d,
				h,
				mi,
				se,
				n = 0;
	int64		frac = 0;
	int			offset_min = 0;
	const char *p;

	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &se, &n) != 6 ||
		n != 19)
		return false;
	if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60 ||
		h < 0 || mi < 0 || se < 0)
		return false;
	p = s + 19;
	if (*p == '.')
	{
		int			digits = 0;

		for (p++; *p >= '0' && *p <= '9'; p++, digits++)
		{
			if (digits >= 6)
				return false;
			frac = frac * 10 + (*p - '0');
		}
		if (digits == 0)
			return false;
		for (; digits < 6; digits++)
			frac *= 10;
	}
	if (*p == 'Z')
		p++;
	else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':')
	{
		int			oh,
					om;

		if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2 || oh > 23 || om > 59)
			return false;
		offset_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
		p += 6;
	}
	else
		return false;
	if (*p != '\0')
		return false;
	*unix_usec = ((days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se) -
				  (int64) offset_min * 60) * 1000000 + frac;
	return true;
}
