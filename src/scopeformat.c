/*
 * scopeformat.c — the scope file's format (ARCHITECTURE §13), one
 * implementation for the server (scopefile.c) and the killswitch command
 * (compiled again with -DFRONTEND, as store.c is).
 *
 * The file is a JSON object: "scopes", one member per role OID (decimal)
 * with its mode, generation, since and unconfirmed; "version", which rises
 * with every write; "key_id"; and "signature", HMAC-SHA256 under the signing
 * secret over the canonical form of every other member (§3's scheme).  An
 * outside writer (killswitch -D) adds "reason", "triggered_by" and
 * "replaces" (the signature of the file it replaces); a file that lowers a
 * scope also carries "release_key_id" and "release_signature", HMAC-SHA256
 * under the release key over the canonical form of every member but
 * "signature" and "release_signature" — the state file's release
 * credential, verified by the same code (store.c).
 */
#ifndef FRONTEND
#include "postgres.h"
#else
#include "postgres_fe.h"
#endif

#include "scopeformat.h"

static int
by_role(const void *a, const void *b)
{
	const KsScopeEntry *x = a;
	const KsScopeEntry *y = b;

	if (x->role != y->role)
		return x->role < y->role ? -1 : 1;
	return 0;
}

/*
 * The file's text, signed (with a release key, release-signed too).  The
 * entries must be one per role; they are sorted here.
 */
bool
ks_scope_file_text(StringInfo out, KsScopeFile *f, const char *secret, size_t secretlen,
				   const char *release_key, size_t release_keylen)
{
	KsJson	   *obj = ks_json_object();
	KsJson	   *scopes = ks_json_object();
	char		key_id[17];
	/* the members point into these: they must live until the text is made */
	KsSignatures sigs;

	if (f->n > 1)
		qsort(f->entries, f->n, sizeof(KsScopeEntry), by_role);
	for (int i = 0; i < f->n; i++)
	{
		KsJson	   *s = ks_json_object();
		char		since[40];
		char		role[16];

		ks_format_iso_utc(f->entries[i].since_usec, since, sizeof(since));
		snprintf(role, sizeof(role), "%u", f->entries[i].role);
		ks_json_put_int(s, "generation", f->entries[i].generation);
		ks_json_put_string(s, "mode", ks_mode_file_names[f->entries[i].mode]);
		ks_json_put_string(s, "since", pstrdup(since));
		ks_json_put_bool(s, "unconfirmed", f->entries[i].unconfirmed);
		ks_json_put_value(scopes, pstrdup(role), s);
	}
	if (!ks_key_id_of(secret, secretlen, key_id))
		return false;
	ks_json_put_string(obj, "key_id", key_id);
	ks_json_put_value(obj, "scopes", scopes);
	ks_json_put_int(obj, "version", f->version);
	if (f->replaces)
		ks_json_put_string(obj, "replaces", f->replaces);
	if (f->reason)
		ks_json_put_string(obj, "reason", f->reason);
	if (f->triggered_by)
		ks_json_put_string(obj, "triggered_by", f->triggered_by);
	if (!ks_json_sign(obj, secret, secretlen, release_key, release_keylen, &sigs))
		return false;
	ks_json_put_string(obj, "signature", sigs.signature);
	resetStringInfo(out);
	ks_json_canonical(out, obj, NULL);
	appendStringInfoChar(out, '\n');
	return true;
}

/* One scope member, checked; false if malformed. */
static bool
take_entry(const char *key, const KsJson *s, KsScopeEntry *e)
{
	const KsJson *mode;
	const KsJson *gen;
	const KsJson *since;
	const KsJson *unconfirmed;
	char	   *end;
	unsigned long oid;

	if (s->kind != KSJ_OBJECT)
		return false;
	errno = 0;
	oid = strtoul(key, &end, 10);
	mode = ks_json_get(s, "mode");
	gen = ks_json_get(s, "generation");
	since = ks_json_get(s, "since");
	unconfirmed = ks_json_get(s, "unconfirmed");
	if (errno != 0 || *end != '\0' || key[0] < '1' || key[0] > '9' || oid > PG_UINT32_MAX ||
		mode == NULL || mode->kind != KSJ_STRING ||
		ks_mode_from_file_name(mode->str) <= (int) KS_DISENGAGED ||
		gen == NULL || gen->kind != KSJ_INT || gen->ival < 0 || gen->ival > KS_MAX_GENERATION ||
		since == NULL || since->kind != KSJ_STRING || !ks_parse_iso(since->str, &e->since_usec) ||
		(unconfirmed != NULL && unconfirmed->kind != KSJ_BOOL))
		return false;
	e->role = (uint32) oid;
	e->mode = (KsMode) ks_mode_from_file_name(mode->str);
	e->generation = gen->ival;
	e->unconfirmed = unconfirmed != NULL && unconfirmed->bval;
	return true;
}

/*
 * Parse a scope file's text and verify its signature under the secret.
 * False, with problem, if it is not a scope file or does not verify.
 */
bool
ks_scope_file_parse(const char *text, size_t len, const char *secret, size_t secretlen,
					KsScopeFile *f, char *problem, size_t problemlen)
{
	KsJson	   *obj = ks_json_parse(text, len, problem, problemlen);
	const KsJson *sig;
	const KsJson *ver;
	const KsJson *scopes;
	StringInfoData canon;
	char		expect[KS_HEX_DIGEST_LEN + 1];

	memset(f, 0, sizeof(*f));
	ks_state_init(&f->release);
	if (obj == NULL)
		return false;
	sig = ks_json_get(obj, "signature");
	ver = ks_json_get(obj, "version");
	scopes = ks_json_get(obj, "scopes");
	if (obj->kind != KSJ_OBJECT || sig == NULL || sig->kind != KSJ_STRING ||
		ver == NULL || ver->kind != KSJ_INT || scopes == NULL || scopes->kind != KSJ_OBJECT)
	{
		snprintf(problem, problemlen, "not a scope file (signature, version and scopes required)");
		return false;
	}
	if (secret == NULL)
	{
		snprintf(problem, problemlen, "no signing secret to verify it with");
		return false;
	}
	initStringInfo(&canon);
	ks_json_canonical(&canon, obj, "signature");
	if (!ks_hmac_hex(secret, secretlen, canon.data, canon.len, expect) ||
		!ks_hex_equal(expect, sig->str))
	{
		snprintf(problem, problemlen, "bad signature");
		return false;
	}
	if (!ks_json_take_string(obj, "replaces", &f->replaces, false) ||
		!ks_json_take_string(obj, "reason", &f->reason, false) ||
		!ks_json_take_string(obj, "triggered_by", &f->triggered_by, false) ||
		!ks_json_take_string(obj, "release_signature", &f->release.release_signature, false) ||
		!ks_json_take_string(obj, "release_key_id", &f->release.release_key_id, false))
	{
		snprintf(problem, problemlen, "a member of the scope file is not a string");
		return false;
	}
	f->entries = palloc0(sizeof(KsScopeEntry) * Max(scopes->nitems, 1));
	for (int i = 0; i < scopes->nitems; i++)
	{
		if (!take_entry(scopes->keys[i], scopes->items[i], &f->entries[i]))
		{
			snprintf(problem, problemlen, "scope \"%s\" is malformed", scopes->keys[i]);
			return false;
		}
	}
	f->n = scopes->nitems;
	if (f->n > 1)
		qsort(f->entries, f->n, sizeof(KsScopeEntry), by_role);
	for (int i = 1; i < f->n; i++)
		if (f->entries[i].role == f->entries[i - 1].role)
		{
			snprintf(problem, problemlen, "scope \"%u\" appears twice", f->entries[i].role);
			return false;
		}
	f->version = ver->ival;
	f->signature = sig->str;
	f->release.object = obj;
	return true;
}

/*
 * Does the file carry a valid release_signature (store.c's check of the
 * state file's, over the same members)?  The credential a file needs to
 * lower or remove a scope: agents hold the signing secret, never the
 * release key.
 */
bool
ks_scope_file_release_signed(const KsScopeFile *f, const char *release_key, size_t release_keylen,
							 const char *release_key_file, char *problem, size_t problemlen)
{
	return ks_state_release_signed(&f->release, release_key, release_keylen,
								   release_key_file, problem, problemlen);
}

/* The file's scope of role, or NULL. */
KsScopeEntry *
ks_scope_file_find(const KsScopeFile *f, uint32 role)
{
	KsScopeEntry key;

	key.role = role;
	if (f->n == 0)
		return NULL;
	return bsearch(&key, f->entries, f->n, sizeof(KsScopeEntry), by_role);
}
