/*
 * marks.c — the marks of changes in flight (ARCHITECTURE §5.3–5.5): one
 * signed private file per transaction, pg_killswitch/in_flight/<xid>.json,
 * written at XACT_EVENT_PRE_COMMIT and durable before the commit record.
 *
 * The postmaster cannot read the commit log, so after a crash it starts at
 * the highest of the private copy, the state file and every mark; the
 * watcher then settles each mark by the commit log of its transaction
 * (TransactionIdDidCommit()).  A mark of a recorded change carries the
 * state file's text of that change; a mark of a raise whose event follows
 * carries the change whole with the identity of whoever asked (session
 * role, client address, pid, transaction, time), so that the watcher can
 * record it as that caller's.
 *
 * A scope's raise whose event follows (scopechange.c) has a mark of its
 * own per scope, <xid>_<role>.json, beside its transaction's: the fleet's
 * readers (the start, the fleet's settling) never see it.
 *
 * No writers' lock is needed: each transaction writes only its own marks.
 * Nothing here throws: problems come back in the caller's buffer.
 */
#include "postgres.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/file_perm.h"
#include "nodes/pg_list.h"

#include "marks.h"
#include "names.h"
#include "persist.h"
#include "store.h"

#define KS_IN_FLIGHT_DIR KS_PRIVATE_DIR "/in_flight"

/* The path of a transaction's mark (of its raise of scope, if valid). */
static void
mark_path(uint64 xid, Oid scope, char *buf, size_t len)
{
	if (OidIsValid(scope))
		snprintf(buf, len, "%s/" UINT64_FORMAT "_%u.json", KS_IN_FLIGHT_DIR, xid, scope);
	else
		snprintf(buf, len, "%s/" UINT64_FORMAT ".json", KS_IN_FLIGHT_DIR, xid);
}

/* The mark as a JSON object, without its signature. */
static KsJson *
mark_object(const KsMark *m)
{
	KsJson	   *obj = ks_json_object();
	char		at[40];

	ks_json_put_string(obj, "kind", m->deferred ? "deferred" : "recorded");
	ks_json_put_int(obj, "xid", (int64) m->xid);
	ks_json_put_string(obj, "mode", ks_mode_file_names[m->mode]);
	if (m->previous != KS_NO_MODE)
		ks_json_put_string(obj, "previous_mode", ks_mode_file_names[m->previous]);
	ks_json_put_bool(obj, "tampered", m->tampered);
	if (m->deferred)
	{
		ks_format_iso_utc(m->at_usec, at, sizeof(at));
		ks_json_put_string(obj, "at", pstrdup(at));	/* the object outlives this frame */
		ks_json_put_string(obj, "reason", m->reason);
		ks_json_put_string(obj, "triggered_by", m->triggered_by);
		ks_json_put_string(obj, "source", m->source);
		ks_json_put_int(obj, "affected_tasks", m->affected_tasks);
		ks_json_put_string(obj, "session_role", m->session_role);
		ks_json_put_string(obj, "client_addr", m->client_addr);
		ks_json_put_int(obj, "backend_pid", m->backend_pid);
		if (OidIsValid(m->scope))
		{
			ks_json_put_int(obj, "scope", (int64) m->scope);
			ks_json_put_string(obj, "scope_name", m->scope_name);
		}
	}
	else
	{
		ks_json_put_int(obj, "generation", m->generation);
		ks_json_put_string(obj, "state", m->state);
	}
	return obj;
}

/* HMAC-SHA256 under the secret of the canonical form without "signature". */
static bool
mark_signature(const KsJson *obj, const char *secret, size_t secretlen, char *sig)
{
	StringInfoData canon;

	initStringInfo(&canon);
	ks_json_canonical(&canon, obj, "signature");
	return ks_hmac_hex(secret, secretlen, canon.data, canon.len, sig);
}

/* Write a transaction's mark durably. */
bool
ks_mark_write(const KsMark *m, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *secret;
	size_t		secretlen;
	char		sig[KS_HEX_DIGEST_LEN + 1];
	KsJson	   *obj;
	StringInfoData text;

	if (!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return false;
	obj = mark_object(m);
	if (!mark_signature(obj, secret, secretlen, sig))
	{
		snprintf(problem, problemlen, "could not compute HMAC-SHA256");
		return false;
	}
	ks_json_put_string(obj, "signature", sig);
	initStringInfo(&text);
	ks_json_canonical(&text, obj, NULL);
	appendStringInfoChar(&text, '\n');
	if (mkdir(KS_IN_FLIGHT_DIR, pg_dir_create_mode) != 0 && errno != EEXIST)
	{
		snprintf(problem, problemlen, "could not create directory \"%s\": %m", KS_IN_FLIGHT_DIR);
		return false;
	}
	mark_path(m->xid, m->scope, path, sizeof(path));
	return ks_write_file_durably(path, text.data, text.len, problem, problemlen);
}

/* Remove a transaction's mark; false (with a LOG line) if it stays. */
bool
ks_mark_remove(uint64 xid)
{
	return ks_scope_mark_remove(xid, InvalidOid);
}

/* Remove a transaction's mark of its raise of scope (InvalidOid: its own mark). */
bool
ks_scope_mark_remove(uint64 xid, Oid scope)
{
	char		path[MAXPGPATH];

	mark_path(xid, scope, path, sizeof(path));
	if (unlink(path) == 0 || errno == ENOENT)
		return true;
	ereport(LOG,
			(errmsg("could not remove \"%s\": %m", path),
			 errdetail("The watcher settles it by the commit log.")));
	return false;
}

/* A string member, copied, or NULL. */
static char *
member_string(const KsJson *obj, const char *key)
{
	const KsJson *v = ks_json_get(obj, key);

	return v && v->kind == KSJ_STRING ? pstrdup(v->str) : NULL;
}

/* An integer member, or dflt. */
static int64
member_int(const KsJson *obj, const char *key, int64 dflt)
{
	const KsJson *v = ks_json_get(obj, key);

	return v && v->kind == KSJ_INT ? v->ival : dflt;
}

/* Parse and verify one mark's text. */
static bool
mark_from_text(const char *text, size_t len, const char *secret, size_t secretlen,
			   KsMark *m, char *problem, size_t problemlen)
{
	KsJson	   *obj = ks_json_parse(text, len, problem, problemlen);
	const KsJson *sig;
	const KsJson *b;
	char		expect[KS_HEX_DIGEST_LEN + 1];
	char	   *kind;
	char	   *mode;
	char	   *prev;
	char	   *at;

	if (obj == NULL)
		return false;
	sig = ks_json_get(obj, "signature");
	if (obj->kind != KSJ_OBJECT || sig == NULL || sig->kind != KSJ_STRING ||
		!mark_signature(obj, secret, secretlen, expect) || !ks_hex_equal(expect, sig->str))
	{
		snprintf(problem, problemlen, "its signature does not verify");
		return false;
	}
	memset(m, 0, sizeof(*m));
	kind = member_string(obj, "kind");
	mode = member_string(obj, "mode");
	prev = member_string(obj, "previous_mode");
	m->deferred = kind && strcmp(kind, "deferred") == 0;
	m->xid = (uint64) member_int(obj, "xid", 0);
	m->mode = mode ? ks_mode_from_file_name(mode) : -1;
	m->previous = prev ? ks_mode_from_file_name(prev) : KS_NO_MODE;
	b = ks_json_get(obj, "tampered");
	m->tampered = b && b->kind == KSJ_BOOL && b->bval;
	m->generation = member_int(obj, "generation", -1);
	m->state = member_string(obj, "state");
	m->state_len = m->state ? strlen(m->state) : 0;
	m->reason = member_string(obj, "reason");
	m->triggered_by = member_string(obj, "triggered_by");
	m->source = member_string(obj, "source");
	m->affected_tasks = (int32) member_int(obj, "affected_tasks", 0);
	m->session_role = member_string(obj, "session_role");
	m->client_addr = member_string(obj, "client_addr");
	m->backend_pid = (int32) member_int(obj, "backend_pid", 0);
	m->scope = (Oid) member_int(obj, "scope", InvalidOid);
	m->scope_name = member_string(obj, "scope_name");
	at = member_string(obj, "at");
	if (kind == NULL || (int) m->mode < 0 || m->xid == 0 ||
		(m->deferred ? (at == NULL || !ks_parse_iso(at, &m->at_usec) || m->reason == NULL ||
						m->triggered_by == NULL || m->session_role == NULL)
		 : (m->state == NULL || m->generation < 0)) ||
		(OidIsValid(m->scope) && (!m->deferred || m->scope_name == NULL)))
	{
		snprintf(problem, problemlen, "it is not a complete mark");
		return false;
	}
	return true;
}

/* Is a file name a mark: <xid>.json, or for scopes <xid>_<role>.json? */
static bool
is_mark_name(const char *name, bool scopes)
{
	size_t		n = strlen(name);
	size_t		digits = strspn(name, "0123456789");

	/* temporary files of an interrupted write are not marks */
	if (n <= 5 || strcmp(name + n - 5, ".json") != 0 || digits == 0)
		return false;
	if (!scopes)
		return digits == n - 5;
	return name[digits] == '_' && digits + 1 < n - 5 &&
		strspn(name + digits + 1, "0123456789") == n - 5 - digits - 1;
}

/*
 * Every mark in the directory (the fleet's, or those of scopes' raises),
 * oldest transaction first is not promised.  A mark that cannot be read or
 * verified sets *bad (with the problem) and is left out: the caller
 * assumes the halt.
 */
static List *
marks_read(bool scopes, bool *bad, char *problem, size_t problemlen)
{
	DIR		   *dir;
	struct dirent *de;
	List	   *marks = NIL;
	char	   *secret;
	size_t		secretlen;
	bool		have_secret;
	char		why[KS_PROBLEM_LEN];

	*bad = false;
	dir = opendir(KS_IN_FLIGHT_DIR);
	if (dir == NULL)
		return NIL;
	have_secret = ks_backend_secret(&secret, &secretlen, why, sizeof(why));
	while ((de = readdir(dir)) != NULL)
	{
		char		path[MAXPGPATH];
		char	   *text;
		size_t		len;
		KsMark	   *m = palloc0(sizeof(KsMark));

		if (!is_mark_name(de->d_name, scopes))
			continue;
		snprintf(path, sizeof(path), "%s/%s", KS_IN_FLIGHT_DIR, de->d_name);
		if (!have_secret ||
			!ks_read_file(path, KS_MAX_FILE_SIZE, &text, &len, why, sizeof(why)) ||
			!mark_from_text(text, len, secret, secretlen, m, why, sizeof(why)) ||
			(OidIsValid(m->scope) != scopes &&
			 snprintf(why, sizeof(why), "its content does not match its name") > 0))
		{
			*bad = true;
			snprintf(problem, problemlen, "\"%s\": %s", path, why);
			continue;
		}
		marks = lappend(marks, m);
	}
	closedir(dir);
	return marks;
}

/* The fleet's marks (its transactions' changes). */
List *
ks_marks_read(bool *bad, char *problem, size_t problemlen)
{
	return marks_read(false, bad, problem, problemlen);
}

/* The marks of scopes' raises whose event follows. */
List *
ks_scope_marks_read(bool *bad, char *problem, size_t problemlen)
{
	return marks_read(true, bad, problem, problemlen);
}

/* Remove the temporary files of mark writes a crash interrupted (at start). */
void
ks_marks_remove_leftovers(void)
{
	ks_remove_dead_temp_files(KS_IN_FLIGHT_DIR);
}

/* Remove every mark (a server starting from another server's WAL has none of its own). */
void
ks_marks_clear(void)
{
	DIR		   *dir = opendir(KS_IN_FLIGHT_DIR);
	struct dirent *de;

	if (dir == NULL)
		return;
	while ((de = readdir(dir)) != NULL)
	{
		char		path[MAXPGPATH];

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", KS_IN_FLIGHT_DIR, de->d_name);
		(void) unlink(path);
	}
	closedir(dir);
}
