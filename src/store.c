/*
 * store.c — the state file's format: state <-> JSON, signatures,
 * verification, reading and writing the whole file (ARCHITECTURE §3, §4).
 * Frontend-safe: shared by the server module and the command-line tool, so
 * that there is one implementation of the format.  The file primitives
 * under it are in files.c, its time stamps in isotime.c.
 */
#ifndef FRONTEND
#include "postgres.h"
#else
#include "postgres_fe.h"
#endif

#include <sys/stat.h>

#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/sha2.h"

#include "store.h"

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

/*
 * A copy of a state that outlives the one it was made from (in the current
 * memory context): its texts copied, and what only a read found (the
 * signatures, the object read) left out — a copy is a state to write or
 * compare, never one to verify again.
 */
KsState *
ks_state_copy(const KsState *st)
{
	KsState    *c = palloc(sizeof(KsState));

	*c = *st;
	c->engaged_at = st->engaged_at ? pstrdup(st->engaged_at) : NULL;
	c->reason = st->reason ? pstrdup(st->reason) : NULL;
	c->triggered_by = st->triggered_by ? pstrdup(st->triggered_by) : NULL;
	c->source = st->source ? pstrdup(st->source) : NULL;
	c->key_id = st->key_id ? pstrdup(st->key_id) : NULL;
	c->replaces = st->replaces ? pstrdup(st->replaces) : NULL;
	c->signature = NULL;
	c->release_signature = NULL;
	c->release_key_id = NULL;
	c->object = NULL;
	return c;
}

/*
 * Is a state with this source a tamper verdict?  Only the server writes
 * source "tamper" (always with at least halt_all), so the verdict is part of
 * the state and stands, across restarts, until the state changes.
 */
bool
ks_is_tamper_source(const char *source)
{
	return source != NULL && strcmp(source, "tamper") == 0;
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

/*
 * Is signature the HMAC-SHA256 of canon under the retired key kept beside
 * key_file for key_id (ks_retired_secret())?  The key's bytes are zeroed
 * once compared, like every secret loaded (ks_secret_forget()).
 */
static bool
signed_with_retired(const char *key_file, const char *key_id, const StringInfoData *canon,
					const char *signature)
{
	char	   *old;
	size_t		oldlen;
	char		expect[KS_HEX_DIGEST_LEN + 1];
	bool		match;

	if (!ks_retired_secret(key_file, key_id, &old, &oldlen))
		return false;
	match = ks_hmac_hex(old, oldlen, canon->data, canon->len, expect) &&
		ks_hex_equal(expect, signature);
	ks_secret_forget(old, oldlen);
	return match;
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
	/* only when set: a file without a verdict stays byte-compatible */
	if (st->tampered)
		ks_json_put_bool(obj, "tampered", true);
	if (st->replaces)
		ks_json_put_string(obj, "replaces", st->replaces);
	return obj;
}

/*
 * Which key signed: the first 16 hex digits of its SHA-256 (key_id's rule),
 * for the state file and the scope file (scopeformat.c) alike.
 */
bool
ks_key_id_of(const char *key, size_t keylen, char *id)
{
	char		hex[KS_HEX_DIGEST_LEN + 1];

	if (!ks_sha256_hex(key, keylen, hex))
		return false;
	strlcpy(id, hex, 17);
	return true;
}

/*
 * Sign a file's object as §3 says.  With a release key, first add
 * release_key_id and release_signature: the HMAC-SHA256 under the release
 * key of the canonical form of every member so far.  Then compute the
 * signature under the shared secret over every member, release_signature
 * included; the caller adds it as "signature" where its layout puts it.
 * The members point into sigs: it must live until the text is made.
 * Shared by the state file and the scope file (scopeformat.c).
 */
bool
ks_json_sign(KsJson *obj, const char *secret, size_t secretlen,
			 const char *release_key, size_t release_keylen, KsSignatures *sigs)
{
	StringInfoData canon;

	if (release_key != NULL)
	{
		if (!ks_key_id_of(release_key, release_keylen, sigs->release_key_id))
			return false;
		ks_json_put_string(obj, "release_key_id", sigs->release_key_id);
		initStringInfo(&canon);
		ks_json_canonical(&canon, obj, NULL);
		if (!ks_hmac_hex(release_key, release_keylen, canon.data, canon.len,
						 sigs->release_signature))
			return false;
		ks_json_put_string(obj, "release_signature", sigs->release_signature);
	}
	initStringInfo(&canon);
	ks_json_canonical(&canon, obj, NULL);
	return ks_hmac_hex(secret, secretlen, canon.data, canon.len, sigs->signature);
}

/*
 * The file's text: the canonical members, one per line as Python's
 * json.dump(indent=2) lays them out, then the signature.  With a release
 * key, the file also carries release_key_id and release_signature: the
 * HMAC-SHA256 under the release key of the canonical form of every member
 * but signature and release_signature.  signature, under the shared
 * secret, then covers every member but itself, release_signature included,
 * as the reference library computes it.  Returns false if no signature
 * could be computed, or if the generation is beyond KS_MAX_GENERATION (no
 * reader would accept the file).
 */
bool
ks_state_file_text(StringInfo out, const KsState *state,
				   const char *secret, size_t secretlen,
				   const char *release_key, size_t release_keylen)
{
	KsJson	   *obj = state_object(state);
	/* the members point into these: they must live until the text is made */
	KsSignatures sigs;
	int			sorted[16];

	if (state->generation > KS_MAX_GENERATION)
		return false;
	if (!ks_json_sign(obj, secret, secretlen, release_key, release_keylen, &sigs))
		return false;
	ks_json_sorted_members(obj, sorted);
	ks_json_put_string(obj, "signature", sigs.signature);
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

/*
 * Copy a string member into *dst (absent: NULL); false if it is not a
 * string, or is null and not nullable.  The scope file's reader
 * (scopeformat.c) takes its members with it too.
 */
bool
ks_json_take_string(const KsJson *obj, const char *key, char **dst, bool nullable)
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
	st->signature = sig ? sig->str : NULL;
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

			if (secret_file == NULL || kid == NULL || kid->kind != KSJ_STRING ||
				!signed_with_retired(secret_file, kid->str, &canon, sig->str))
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

	if (!ks_json_take_string(root, "engaged_at", &st->engaged_at, true) ||
		(st->engaged_at && !ks_parse_iso(st->engaged_at, &dummy)))
		return PROBLEM("\"engaged_at\" is not an ISO-8601 time stamp or null");
	if (!ks_json_take_string(root, "reason", &st->reason, true))
		return PROBLEM("\"reason\" is not a string or null");
	if (!ks_json_take_string(root, "triggered_by", &st->triggered_by, true))
		return PROBLEM("\"triggered_by\" is not a string or null");
	if (!take_count(root, "generation", &st->generation))
		return PROBLEM("\"generation\" is not a non-negative integer");
	if (st->generation > KS_MAX_GENERATION)
		return PROBLEM("\"generation\" is beyond " INT64_FORMAT " (2^53 - 1)", KS_MAX_GENERATION);
	if (!take_count(root, "affected_tasks", &st->affected_tasks))
		return PROBLEM("\"affected_tasks\" is not a non-negative integer");
	if (!take_count(root, "event_id", &st->event_id))
		return PROBLEM("\"event_id\" is not a non-negative integer");
	if (!ks_json_take_string(root, "source", &st->source, true))
		return PROBLEM("\"source\" is not a string");
	if (!ks_json_take_string(root, "key_id", &st->key_id, true))
		return PROBLEM("\"key_id\" is not a string");
	if (!ks_json_take_string(root, "replaces", &st->replaces, true))
		return PROBLEM("\"replaces\" is not a string");
	if (!ks_json_take_string(root, "release_signature", &st->release_signature, false))
		return PROBLEM("\"release_signature\" is not a string");
	if (!ks_json_take_string(root, "release_key_id", &st->release_key_id, false))
		return PROBLEM("\"release_key_id\" is not a string");
	st->object = root;
	{
		const KsJson *t = ks_json_get(root, "tampered");

		if (t != NULL && t->kind != KSJ_BOOL)
			return PROBLEM("\"tampered\" is not a boolean");
		st->tampered = t != NULL && t->bval;
	}
	if (!ks_json_take_string(root, "previous_mode", &prev, true))
		return PROBLEM("\"previous_mode\" is not a string");
	if (prev != NULL)
	{
		st->previous_mode = ks_mode_from_file_name(prev);
		if (st->previous_mode == KS_NO_MODE)
			return PROBLEM("unknown previous_mode");
	}
	return verdict;
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

/* Sign (with the release key too, if given) and write a state file atomically. */
bool
ks_state_write(const char *path, const KsState *state,
			   const char *secret, size_t secretlen,
			   const char *release_key, size_t release_keylen,
			   char *problem, size_t problemlen)
{
	StringInfoData text;

	initStringInfo(&text);
	if (state->generation > KS_MAX_GENERATION)
	{
		snprintf(problem, problemlen, "generation " INT64_FORMAT " is beyond " INT64_FORMAT " (2^53 - 1)",
				 state->generation, KS_MAX_GENERATION);
		return false;
	}
	if (!ks_state_file_text(&text, state, secret, secretlen,
							release_key, release_keylen))
	{
		snprintf(problem, problemlen, "could not compute HMAC-SHA256");
		return false;
	}
	return ks_write_shared_file_durably(path, text.data, text.len, problem, problemlen);
}

/* The object without one member: a shallow copy, the values shared. */
static KsJson *
without_member(const KsJson *object, const char *key)
{
	KsJson	   *copy = ks_json_object();

	copy->keys = palloc(sizeof(char *) * Max(object->nitems, 1));
	copy->items = palloc(sizeof(KsJson *) * Max(object->nitems, 1));
	copy->maxitems = Max(object->nitems, 1);
	for (int i = 0; i < object->nitems; i++)
	{
		if (strcmp(object->keys[i], key) == 0)
			continue;
		copy->keys[copy->nitems] = object->keys[i];
		copy->items[copy->nitems] = object->items[i];
		copy->nitems++;
	}
	return copy;
}

/*
 * Does a state read from a file carry a valid release_signature: the
 * HMAC-SHA256 under the release key (or a retired one kept beside it as
 * <release_key_file>.<release_key_id>) of the canonical form of every
 * member but signature and release_signature?  This is the credential a
 * file needs to lower the mode (ARCHITECTURE §3): agents hold the shared secret,
 * never the release key.  On false, problem says why.
 */
bool
ks_state_release_signed(const KsState *st, const char *release_key, size_t release_keylen,
						const char *release_key_file, char *problem, size_t problemlen)
{
	StringInfoData canon;
	char		expect[KS_HEX_DIGEST_LEN + 1];

	if (st->object == NULL || st->release_signature == NULL)
	{
		snprintf(problem, problemlen, "it carries no release_signature");
		return false;
	}
	if (release_key == NULL)
	{
		snprintf(problem, problemlen, "there is no release key to verify its release_signature with");
		return false;
	}
	initStringInfo(&canon);
	ks_json_canonical(&canon, without_member(st->object, "release_signature"), "signature");
	if (ks_hmac_hex(release_key, release_keylen, canon.data, canon.len, expect) &&
		ks_hex_equal(expect, st->release_signature))
		return true;
	/* signed with a retired release key that is still kept beside the current one? */
	if (release_key_file != NULL && st->release_key_id != NULL &&
		signed_with_retired(release_key_file, st->release_key_id, &canon, st->release_signature))
		return true;
	snprintf(problem, problemlen, "its release_signature does not match the contents");
	return false;
}
