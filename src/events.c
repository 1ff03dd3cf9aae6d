/*
 * events.c — the governance table killswitch.events (ARCHITECTURE §2): append
 * a chained, signed row; re-derive a row's canonical content; verify the
 * chain.  The NOTIFY of a change is in notify.c.
 *
 * A row's hash is SHA-256 over the previous row's hash (hex) followed by
 * the row's canonical content (the same canonical JSON as the state file);
 * its signature is HMAC-SHA256 of that hash under the secret.  So pgcrypto
 * re-checks a signature in plain SQL:
 *   encode(hmac(hash, secret, 'sha256'), 'hex') = signature
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/ip.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "libpq/libpq-be.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"
#include "utils/xid8.h"

#include "encoding.h"
#include "events.h"
#include "guc.h"
#include "modetype.h"
#include "owner.h"
#include "persist.h"
#include "state.h"
#include "store.h"

PG_FUNCTION_INFO_V1(ks_event_canonical);
PG_FUNCTION_INFO_V1(ks_verify_events);

#define KS_GENESIS_HASH \
	"0000000000000000000000000000000000000000000000000000000000000000"

/* Every column of a row that its hash covers. */
typedef struct KsEventRow
{
	int64		id;
	TimestampTz at;
	KsMode		mode;
	int			previous_mode;	/* KS_NO_MODE for NULL */
	char	   *reason;			/* database encoding, as the table holds it */
	char	   *triggered_by;
	int32		affected_tasks;
	char	   *source;
	int			release_target; /* KS_NO_MODE unless a release request */
	char	   *session_role;
	char	   *client_addr;	/* NULL for local connections */
	int32		backend_pid;
	uint64		xid;
	int64		generation;
	char	   *key_id;
	bool		require_hmac;
	Oid			scope;			/* InvalidOid: the fleet's event */
	char	   *scope_name;		/* the scope's role name at the time */
} KsEventRow;

/* Text in the server encoding as UTF-8, which the canonical form is in. */
static const char *
to_utf8(const char *s)
{
	return s ? pg_server_to_any(s, strlen(s), PG_UTF8) : NULL;
}

/* The canonical content of a row (without prev_hash, hash and signature). */
static void
row_canonical(StringInfo out, const KsEventRow *r)
{
	KsJson	   *obj = ks_json_object();
	char		at[40];

	ks_format_iso_utc(ks_timestamptz_to_unix_usec(r->at), at, sizeof(at));
	ks_json_put_int(obj, "affected_tasks", r->affected_tasks);
	ks_json_put_string(obj, "at", at);
	ks_json_put_int(obj, "backend_pid", r->backend_pid);
	ks_json_put_string(obj, "client_addr", r->client_addr);
	ks_json_put_int(obj, "generation", r->generation);
	ks_json_put_int(obj, "id", r->id);
	ks_json_put_string(obj, "key_id", r->key_id);
	ks_json_put_string(obj, "mode", ks_mode_sql_names[r->mode]);
	ks_json_put_string(obj, "previous_mode", r->previous_mode == KS_NO_MODE ? NULL
					   : ks_mode_sql_names[r->previous_mode]);
	ks_json_put_string(obj, "reason", to_utf8(r->reason));
	ks_json_put_string(obj, "release_target", r->release_target == KS_NO_MODE ? NULL
					   : ks_mode_sql_names[r->release_target]);
	ks_json_put_bool(obj, "require_hmac", r->require_hmac);
	ks_json_put_string(obj, "session_role", to_utf8(r->session_role));
	ks_json_put_string(obj, "source", r->source);
	ks_json_put_string(obj, "triggered_by", to_utf8(r->triggered_by));
	ks_json_put_int(obj, "xid", (int64) r->xid);
	/* a scope's event only: the fleet's canonical form is what it always was */
	if (OidIsValid(r->scope))
	{
		ks_json_put_int(obj, "scope", (int64) r->scope);
		ks_json_put_string(obj, "scope_name", to_utf8(r->scope_name));
	}
	ks_json_canonical(out, obj, NULL);
}

/* hash = sha256(prev_hash || canonical); signature = hmac(secret, hash). */
static void
row_digests(const KsEventRow *r, const char *prev_hash,
			const char *secret, size_t secretlen, char *hash, char *signature)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, prev_hash);
	row_canonical(&buf, r);
	if (!ks_sha256_hex(buf.data, buf.len, hash) ||
		!ks_hmac_hex(secret, secretlen, hash, KS_HEX_DIGEST_LEN, signature))
		elog(ERROR, "could not compute SHA-256/HMAC");
	pfree(buf.data);
}

/*
 * The secret and its key id (key_id: 17 bytes), or a clear error (never
 * showing its value).
 */
static void
require_secret(char **secret, size_t *len, char *key_id)
{
	char		problem[KS_PROBLEM_LEN];

	if (!ks_backend_secret(secret, len, problem, sizeof(problem)))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("could not read the kill switch signing secret: %s", problem),
				 errhint("Check killswitch.signing_secret_file.")));
	ks_key_id(*secret, *len, key_id);
}

/* The client's address as text, or NULL for a Unix-socket connection. */
char *
ks_client_address(void)
{
	char		host[NI_MAXHOST];
	int			family;

	if (MyProcPort == NULL)
		return NULL;
	family = MyProcPort->raddr.addr.ss_family;
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	if (pg_getnameinfo_all(&MyProcPort->raddr.addr, MyProcPort->raddr.salen,
						   host, sizeof(host), NULL, 0, NI_NUMERICHOST) != 0)
		return NULL;
	clean_ipv6_addr(family, host);
	return pstrdup(host);
}

/*
 * Run a query for the newest row of killswitch.events with a fresh
 * snapshot: it sees every change committed before it, even in a REPEATABLE
 * READ transaction whose own snapshot is older.  At most one row, in
 * SPI_tuptable.
 */
static void
select_newest_event(const char *query, int nargs, Oid *argtypes, Datum *values)
{
	SPIPlanPtr	plan = SPI_prepare(query, nargs, argtypes);
	int			rc;

	rc = SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(),
							  InvalidSnapshot, true, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.events: %d", rc);
}

/*
 * Read the newest row's id and hash, and the generation of the newest row
 * of scope (InvalidOid: the fleet's), with a fresh snapshot (the caller
 * holds the lock that orders changes).  Each scope has its own generation
 * line; the fleet's rows are those without a scope.
 */
static void
events_tail(Oid scope, int64 *id, char *hash, int64 *generation)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(scope)};

	select_newest_event("SELECT e.id, e.hash, COALESCE((SELECT g.generation "
						"FROM killswitch.events g WHERE g.scope IS NOT DISTINCT FROM "
						"NULLIF($1, 0::oid) ORDER BY g.id DESC LIMIT 1), 0) "
						"FROM killswitch.events e ORDER BY e.id DESC LIMIT 1",
						1, argtypes, values);
	if (SPI_processed == 0)
	{
		*id = 0;
		strlcpy(hash, KS_GENESIS_HASH, KS_HEX_DIGEST_LEN + 1);
		*generation = 0;
		return;
	}
	{
		bool		isnull;
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		*id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		strlcpy(hash, SPI_getvalue(tup, desc, 2), KS_HEX_DIGEST_LEN + 1);
		*generation = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	}
}

/*
 * A RETURNING row as a value of the table's row type, which is what
 * ks_engage() is declared to return (the SPI row is an anonymous record).
 */
static Datum
as_events_row(HeapTuple tuple, TupleDesc spidesc)
{
	TupleDesc	rowdesc = lookup_rowtype_tupdesc(get_rel_type_id(ks_events_relid()), -1);
	Datum	   *values = palloc0(sizeof(Datum) * rowdesc->natts);
	bool	   *nulls = palloc0(sizeof(bool) * rowdesc->natts);
	Datum		result;

	for (int i = 0; i < rowdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(rowdesc, i);
		int			col = att->attisdropped ? SPI_ERROR_NOATTRIBUTE
			: SPI_fnumber(spidesc, NameStr(att->attname));

		if (col <= 0)
			nulls[i] = true;
		else
			values[i] = SPI_getbinval(tuple, spidesc, col, &nulls[i]);
	}
	result = HeapTupleGetDatum(heap_form_tuple(rowdesc, values, nulls));
	ReleaseTupleDesc(rowdesc);
	return result;
}

/*
 * The row's content that does not depend on the chain: the texts as this
 * database shows them, who asked, from where, in which transaction.  Built
 * in the caller's memory, before the SPI region: everything here is used
 * after the region ends, and the region's memory goes with SPI_finish().
 */
static void
row_content(KsEventRow *r, const KsEventInput *in, const char *key_id)
{
	const KsEventIdentity *who = in->identity;

	memset(r, 0, sizeof(*r));
	r->at = who ? who->at : GetCurrentTimestamp();
	r->mode = in->mode;
	r->previous_mode = in->previous;
	/*
	 * The table holds text as this database shows it (a character it cannot
	 * hold escaped), and the hash covers what the table holds, so auditors
	 * re-derive it from the row alone; the file keeps the exact UTF-8.
	 */
	r->reason = ks_utf8_to_db(in->reason);
	r->triggered_by = ks_utf8_to_db(in->triggered_by);
	r->affected_tasks = in->affected_tasks;
	r->source = pstrdup(in->source);
	r->release_target = in->request ? (int) in->release_target : KS_NO_MODE;
	/* a raise whose event followed is recorded as its caller's (ARCHITECTURE §5.3) */
	r->session_role = who ? ks_utf8_to_db(who->session_role)
		: GetUserNameFromId(GetSessionUserId(), false);
	r->client_addr = who ? (who->client_addr ? pstrdup(who->client_addr) : NULL)
		: ks_client_address();
	r->backend_pid = who ? who->backend_pid : MyProcPid;
	r->xid = who ? who->xid : 0;
	r->key_id = pstrdup(key_id);
	r->require_hmac = ks_require_hmac;
}

/* The row's column values for the INSERT (inside the SPI region). */
static void
row_values(const KsEventRow *r, Oid modetype, const char *prev_hash,
		   const char *hash, const char *signature, Datum *values, char *nulls)
{
	memset(nulls, ' ', 21);
	values[0] = Int64GetDatum(r->id);
	values[1] = TimestampTzGetDatum(r->at);
	values[2] = ks_mode_to_datum(r->mode, modetype);
	if (r->previous_mode == KS_NO_MODE)
		nulls[3] = 'n', values[3] = (Datum) 0;
	else
		values[3] = ks_mode_to_datum((KsMode) r->previous_mode, modetype);
	values[4] = CStringGetTextDatum(r->reason);
	values[5] = CStringGetTextDatum(r->triggered_by);
	values[6] = Int32GetDatum(r->affected_tasks);
	values[7] = CStringGetTextDatum(r->source);
	values[8] = CStringGetTextDatum(r->session_role);
	if (r->client_addr)
		values[9] = DirectFunctionCall1(inet_in, CStringGetDatum(r->client_addr));
	else
		nulls[9] = 'n', values[9] = (Datum) 0;
	values[10] = Int32GetDatum(r->backend_pid);
	values[11] = FullTransactionIdGetDatum(FullTransactionIdFromU64(r->xid));
	values[12] = Int64GetDatum(r->generation);
	values[13] = CStringGetTextDatum(r->key_id);
	values[14] = BoolGetDatum(r->require_hmac);
	values[15] = CStringGetTextDatum(prev_hash);
	values[16] = CStringGetTextDatum(hash);
	values[17] = CStringGetTextDatum(signature);
	if (r->release_target == KS_NO_MODE)
		nulls[18] = 'n', values[18] = (Datum) 0;
	else
		values[18] = ks_mode_to_datum((KsMode) r->release_target, modetype);
	if (OidIsValid(r->scope))
	{
		values[19] = ObjectIdGetDatum(r->scope);
		values[20] = CStringGetTextDatum(r->scope_name);
	}
	else
	{
		nulls[19] = nulls[20] = 'n';
		values[19] = values[20] = (Datum) 0;
	}
}

/*
 * Append an event; the caller holds the lock that orders changes.  The
 * generation is the next after the newest row's, and at least floor.
 * Fills file_state with what the state file must say after it, and
 * returns the new row as a composite Datum.  (Its NOTIFY is the watcher's,
 * after the commit: ARCHITECTURE §5.6.)
 *
 * Only the chain's tail, the INSERT and the returned row are made inside
 * the owner region; what outlives it (the row's texts, file_state) is made
 * before it, in the caller's memory, or copied out of it.
 */
static Datum record_event(const KsEventInput *in, Oid scope, const char *scope_name,
						  KsState *file_state, TimestampTz *at);

Datum
ks_record_event(const KsEventInput *in, KsState *file_state)
{
	return record_event(in, InvalidOid, NULL, file_state, NULL);
}

/*
 * Append the event of a scope's change (ARCHITECTURE §13): in the one
 * chain, on the scope's own generation line; its texts, scope_name too,
 * in UTF-8.  Fills *generation and *at.
 */
Datum
ks_record_scope_event(const KsEventInput *in, Oid scope, const char *scope_name,
					  int64 *generation, TimestampTz *at)
{
	KsState		st;
	Datum		row = record_event(in, scope, scope_name, &st, at);

	*generation = st.generation;
	return row;
}

static Datum
record_event(const KsEventInput *in, Oid scope, const char *scope_name, KsState *file_state,
			 TimestampTz *at_out)
{
	KsOwnerContext owner;
	KsEventRow	r;
	char		prev_hash[KS_HEX_DIGEST_LEN + 1];
	char		hash[KS_HEX_DIGEST_LEN + 1];
	char		signature[KS_HEX_DIGEST_LEN + 1];
	char		key_id[17];
	char		at[40];
	char	   *secret;
	size_t		secretlen;
	int64		last_id,
				last_gen;
	Oid			modetype = ks_mode_type_oid();
	Oid			argtypes[21] = {INT8OID, TIMESTAMPTZOID, modetype, modetype,
		TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID, INETOID, INT4OID,
	XID8OID, INT8OID, TEXTOID, BOOLOID, TEXTOID, TEXTOID, TEXTOID, modetype, OIDOID, TEXTOID};
	Datum		values[21];
	char		nulls[21];
	Datum		result;
	int			rc;

	require_secret(&secret, &secretlen, key_id);
	row_content(&r, in, key_id);
	r.scope = scope;
	r.scope_name = scope_name ? ks_utf8_to_db(scope_name) : NULL;

	ks_owner_begin(&owner);
	events_tail(scope, &last_id, prev_hash, &last_gen);
	r.id = last_id + 1;
	if (in->identity == NULL)
		r.xid = U64FromFullTransactionId(GetTopFullTransactionId());
	r.generation = Max(last_gen + 1, in->floor_generation);
	if (OidIsValid(scope) && r.generation > KS_MAX_GENERATION)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the generation of scope \"%s\" is at its bound", scope_name),
				 errdetail("A generation is at most " INT64_FORMAT ".", (int64) KS_MAX_GENERATION)));
	if (at_out)
		*at_out = r.at;
	row_digests(&r, prev_hash, secret, secretlen, hash, signature);
	row_values(&r, modetype, prev_hash, hash, signature, values, nulls);
	rc = SPI_execute_with_args("INSERT INTO killswitch.events (id, at, mode, previous_mode, "
							   "reason, triggered_by, affected_tasks, source, session_role, "
							   "client_addr, backend_pid, xid, generation, key_id, require_hmac, "
							   "prev_hash, hash, signature, release_target, scope, scope_name) "
							   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
							   "$14, $15, $16, $17, $18, $19, $20, $21) RETURNING *",
							   21, argtypes, values, nulls, false, 1);
	if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "could not insert into killswitch.events: %d", rc);
	/* copied into the caller's memory: SPI_finish() frees the region's */
	result = SPI_datumTransfer(as_events_row(SPI_tuptable->vals[0], SPI_tuptable->tupdesc),
							   false, -1);
	ks_owner_end(&owner);

	/* what the state file must say once this commits */
	ks_format_iso_utc(ks_timestamptz_to_unix_usec(r.at), at, sizeof(at));
	ks_state_init(file_state);
	file_state->mode = r.mode;
	file_state->engaged_at = pstrdup(at);
	file_state->reason = pstrdup(in->reason);
	file_state->triggered_by = pstrdup(in->triggered_by);
	file_state->generation = r.generation;
	file_state->previous_mode = r.previous_mode;
	file_state->affected_tasks = r.affected_tasks;
	file_state->event_id = r.id;
	file_state->source = pstrdup(r.source);
	file_state->key_id = pstrdup(key_id);
	file_state->tampered = in->tampered;
	return result;
}

/*
 * The row ks_engage() returns for a raise whose event follows (ARCHITECTURE
 * §5.3): what the event will say, with id, generation, prev_hash, hash and
 * signature null until the watcher (or the next change) records it.
 */
Datum
ks_event_row_pending(const KsEventInput *in)
{
	return ks_event_row_pending_scope(in, InvalidOid, NULL);
}

/* The same for a scope's raise (scope and scope_name filled; InvalidOid: the fleet's). */
Datum
ks_event_row_pending_scope(const KsEventInput *in, Oid scope, const char *scope_name)
{
	TupleDesc	rowdesc = lookup_rowtype_tupdesc(get_rel_type_id(ks_events_relid()), -1);
	Oid			modetype = ks_mode_type_oid();
	Datum	   *values = palloc0(sizeof(Datum) * rowdesc->natts);
	bool	   *nulls = palloc(sizeof(bool) * rowdesc->natts);
	char	   *secret;
	size_t		secretlen;
	char		key_id[17];
	KsEventRow	r;
	Datum		result;

	require_secret(&secret, &secretlen, key_id);
	row_content(&r, in, key_id);
	r.xid = U64FromFullTransactionId(GetTopFullTransactionId());
	for (int i = 0; i < rowdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(rowdesc, i);
		const char *name = NameStr(att->attname);

		nulls[i] = false;
		if (att->attisdropped)
			nulls[i] = true;
		else if (strcmp(name, "at") == 0)
			values[i] = TimestampTzGetDatum(r.at);
		else if (strcmp(name, "mode") == 0)
			values[i] = ks_mode_to_datum(r.mode, modetype);
		else if (strcmp(name, "previous_mode") == 0 && r.previous_mode != KS_NO_MODE)
			values[i] = ks_mode_to_datum((KsMode) r.previous_mode, modetype);
		else if (strcmp(name, "reason") == 0)
			values[i] = CStringGetTextDatum(r.reason);
		else if (strcmp(name, "triggered_by") == 0)
			values[i] = CStringGetTextDatum(r.triggered_by);
		else if (strcmp(name, "affected_tasks") == 0)
			values[i] = Int32GetDatum(r.affected_tasks);
		else if (strcmp(name, "source") == 0)
			values[i] = CStringGetTextDatum(r.source);
		else if (strcmp(name, "session_role") == 0)
			values[i] = CStringGetTextDatum(r.session_role);
		else if (strcmp(name, "client_addr") == 0 && r.client_addr)
			values[i] = DirectFunctionCall1(inet_in, CStringGetDatum(r.client_addr));
		else if (strcmp(name, "backend_pid") == 0)
			values[i] = Int32GetDatum(r.backend_pid);
		else if (strcmp(name, "xid") == 0)
			values[i] = FullTransactionIdGetDatum(FullTransactionIdFromU64(r.xid));
		else if (strcmp(name, "key_id") == 0)
			values[i] = CStringGetTextDatum(r.key_id);
		else if (strcmp(name, "require_hmac") == 0)
			values[i] = BoolGetDatum(r.require_hmac);
		else if (strcmp(name, "scope") == 0 && OidIsValid(scope))
			values[i] = ObjectIdGetDatum(scope);
		else if (strcmp(name, "scope_name") == 0 && OidIsValid(scope))
			values[i] = CStringGetTextDatum(ks_utf8_to_db(scope_name));
		else
			nulls[i] = true;	/* id, generation, prev_hash, hash, signature, release_target */
	}
	result = HeapTupleGetDatum(heap_form_tuple(rowdesc, values, nulls));
	ReleaseTupleDesc(rowdesc);
	return result;
}

/* Is the raise of this transaction, asked at this time, in the history yet? */
bool
ks_events_hold(uint64 xid, TimestampTz at)
{
	KsOwnerContext owner;
	Oid			argtypes[2] = {XID8OID, TIMESTAMPTZOID};
	Datum		values[2] = {FullTransactionIdGetDatum(FullTransactionIdFromU64(xid)),
	TimestampTzGetDatum(at)};
	SPIPlanPtr	plan;
	bool		found;

	ks_owner_begin(&owner);
	plan = SPI_prepare("SELECT 1 FROM killswitch.events WHERE xid = $1 AND at = $2", 2, argtypes);
	/* the caller holds the lock that orders changes: a fresh snapshot sees every one */
	if (SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.events");
	found = SPI_processed > 0;
	ks_owner_end(&owner);
	return found;
}

/* Generation of the newest event (0 when there is none). */
int64
ks_events_last_generation(void)
{
	KsOwnerContext owner;
	int64		id,
				generation;
	char		hash[KS_HEX_DIGEST_LEN + 1];

	ks_owner_begin(&owner);
	events_tail(InvalidOid, &id, hash, &generation);
	ks_owner_end(&owner);
	return generation;
}

/* Text of a column of a composite row; NULL for SQL NULL. */
static char *
row_text(HeapTupleHeader row, const char *column)
{
	bool		isnull;
	Datum		d = GetAttributeByName(row, column, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* Decode a killswitch.events row. */
static void
row_from_composite(HeapTupleHeader row, KsEventRow *r)
{
	bool		isnull;
	Datum		d;

	memset(r, 0, sizeof(*r));
	r->id = DatumGetInt64(GetAttributeByName(row, "id", &isnull));
	r->at = DatumGetTimestampTz(GetAttributeByName(row, "at", &isnull));
	r->mode = ks_mode_from_datum(GetAttributeByName(row, "mode", &isnull));
	d = GetAttributeByName(row, "previous_mode", &isnull);
	r->previous_mode = isnull ? KS_NO_MODE : (int) ks_mode_from_datum(d);
	r->reason = row_text(row, "reason");
	r->triggered_by = row_text(row, "triggered_by");
	r->affected_tasks = DatumGetInt32(GetAttributeByName(row, "affected_tasks", &isnull));
	r->source = row_text(row, "source");
	d = GetAttributeByName(row, "release_target", &isnull);
	r->release_target = isnull ? KS_NO_MODE : (int) ks_mode_from_datum(d);
	r->session_role = row_text(row, "session_role");
	d = GetAttributeByName(row, "client_addr", &isnull);
	r->client_addr = isnull ? NULL : DatumGetCString(DirectFunctionCall1(inet_out, d));
	r->backend_pid = DatumGetInt32(GetAttributeByName(row, "backend_pid", &isnull));
	r->xid = U64FromFullTransactionId(DatumGetFullTransactionId(GetAttributeByName(row, "xid", &isnull)));
	r->generation = DatumGetInt64(GetAttributeByName(row, "generation", &isnull));
	r->key_id = row_text(row, "key_id");
	r->require_hmac = DatumGetBool(GetAttributeByName(row, "require_hmac", &isnull));
	d = GetAttributeByName(row, "scope", &isnull);
	r->scope = isnull ? InvalidOid : DatumGetObjectId(d);
	r->scope_name = row_text(row, "scope_name");
}

/*
 * SQL: the canonical content a row's hash covers, for auditors.  Only a
 * row that could be in killswitch.events has one: a NULL where the table
 * has NOT NULL (a row built by hand) is refused with a clear error rather
 * than decoded as zero (a NULL mode was "cache lookup failed", XX000).
 */
Datum
ks_event_canonical(PG_FUNCTION_ARGS)
{
	static const char *const not_null[] = {
		"id", "at", "mode", "reason", "triggered_by", "affected_tasks", "source",
		"session_role", "backend_pid", "xid", "generation", "key_id", "require_hmac"
	};
	HeapTupleHeader row = PG_GETARG_HEAPTUPLEHEADER(0);
	KsEventRow	r;
	StringInfoData buf;

	for (size_t i = 0; i < lengthof(not_null); i++)
	{
		bool		isnull;

		(void) GetAttributeByName(row, not_null[i], &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("column \"%s\" of the killswitch.events row is null", not_null[i]),
					 errdetail("Only a row that killswitch.events could hold has a canonical form, and that column is NOT NULL there.")));
	}
	row_from_composite(row, &r);
	initStringInfo(&buf);
	row_canonical(&buf, &r);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(buf.data, buf.len));
}

/*
 * The secret that signed a row: the current one, or the retired key its
 * key_id names.  An unknown key leaves the current one, and the row fails.
 */
static void
row_secret(const KsEventRow *r, char *current, size_t currentlen,
		   const char *current_id, char **secret, size_t *len)
{
	char	   *retired;
	size_t		retiredlen;

	*secret = current;
	*len = currentlen;
	if (r->key_id && strcmp(r->key_id, current_id) != 0 &&
		ks_retired_secret(ks_secret_file, r->key_id, &retired, &retiredlen))
	{
		*secret = retired;
		*len = retiredlen;
	}
}

/*
 * Does a row verify: its hash and signature right over the prev_hash it
 * names?  The row is read from columns col (the row itself), col+1
 * (prev_hash), col+2 (hash) and col+3 (signature) of an SPI result; *r
 * receives it and *row_prev its prev_hash (NULL if missing).
 */
static bool
row_verifies(HeapTuple tup, TupleDesc desc, int col, const char *secret, size_t secretlen,
			 const char *key_id, KsEventRow *r, char **row_prev)
{
	bool		isnull;
	char	   *rsecret;
	size_t		rsecretlen;
	char		hash[KS_HEX_DIGEST_LEN + 1];
	char		sig[KS_HEX_DIGEST_LEN + 1];
	char	   *row_hash = SPI_getvalue(tup, desc, col + 2);
	char	   *row_sig = SPI_getvalue(tup, desc, col + 3);

	*row_prev = SPI_getvalue(tup, desc, col + 1);
	row_from_composite(DatumGetHeapTupleHeader(SPI_getbinval(tup, desc, col, &isnull)), r);
	if (*row_prev == NULL || row_hash == NULL || row_sig == NULL)
		return false;
	row_secret(r, (char *) secret, secretlen, key_id, &rsecret, &rsecretlen);
	row_digests(r, *row_prev, rsecret, rsecretlen, hash, sig);
	return ks_hex_equal(hash, row_hash) && ks_hex_equal(sig, row_sig);
}

/* Is the newest row (columns 11-14) what the secret signed?  It alone decides the state taken from the history. */
static bool
newest_row_signed(HeapTuple tup, TupleDesc desc)
{
	char	   *secret;
	size_t		secretlen;
	char		key_id[17];
	char		problem[KS_PROBLEM_LEN];
	KsEventRow	r;
	char	   *row_prev;

	if (!ks_backend_secret(&secret, &secretlen, problem, sizeof(problem)))
		return false;
	ks_key_id(secret, secretlen, key_id);
	return row_verifies(tup, desc, 11, secret, secretlen, key_id, &r, &row_prev);
}

/*
 * The state the newest event leaves, as the state file says it (the same
 * fields ks_record_event() fills), with a fresh snapshot — if the row
 * verifies.  For a server that comes out of recovery, and for a standby
 * following the history (standby.c).
 */
KsHistory
ks_events_newest_state(KsState *st)
{
	KsOwnerContext owner;
	MemoryContext caller = CurrentMemoryContext;
	KsHistory	result = KS_HISTORY_EMPTY;

	ks_owner_begin(&owner);
	select_newest_event("SELECT e.at, e.mode::text, e.previous_mode::text, e.reason, e.triggered_by, "
						"e.affected_tasks, e.source, e.generation, e.id, e.key_id, e, "
						"e.prev_hash, e.hash, e.signature "
						"FROM killswitch.events e WHERE e.scope IS NULL "
						"ORDER BY e.id DESC LIMIT 1", 0, NULL, NULL);
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char		at[40];
		char	   *prev;
		bool		signed_ok = newest_row_signed(tup, desc);
		MemoryContext spi = MemoryContextSwitchTo(caller);

		ks_state_init(st);
		ks_format_iso_utc(ks_timestamptz_to_unix_usec(DatumGetTimestampTz(SPI_getbinval(tup, desc, 1, &isnull))),
						  at, sizeof(at));
		st->engaged_at = pstrdup(at);
		st->mode = (KsMode) ks_mode_from_sql_name(SPI_getvalue(tup, desc, 2));
		prev = SPI_getvalue(tup, desc, 3);
		st->previous_mode = prev ? ks_mode_from_sql_name(prev) : KS_NO_MODE;
		st->reason = ks_text_to_utf8(SPI_getvalue(tup, desc, 4), "reason");
		st->triggered_by = ks_text_to_utf8(SPI_getvalue(tup, desc, 5), "triggered_by");
		st->affected_tasks = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		st->source = pstrdup(SPI_getvalue(tup, desc, 7));
		st->generation = DatumGetInt64(SPI_getbinval(tup, desc, 8, &isnull));
		st->event_id = DatumGetInt64(SPI_getbinval(tup, desc, 9, &isnull));
		st->key_id = pstrdup(SPI_getvalue(tup, desc, 10));
		MemoryContextSwitchTo(spi);
		result = signed_ok && st->mode >= 0 ? KS_HISTORY_OK : KS_HISTORY_BAD;
	}
	ks_owner_end(&owner);
	return result;
}

/*
 * SQL: walk the chain in id order.  A row is bad if its id does not follow
 * the previous one, its prev_hash is not the previous row's hash, its hash
 * does not match its content, or its signature does not match its hash.
 */
Datum
ks_verify_events(PG_FUNCTION_ARGS)
{
	KsOwnerContext owner;
	TupleDesc	tupdesc;
	char	   *secret;
	size_t		secretlen;
	char		key_id[17];
	char		prev[KS_HEX_DIGEST_LEN + 1] = KS_GENESIS_HASH;
	int64		checked = 0,
				bad_id = -1,
				expect_id = 1;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	int			rc;

	ks_require_loaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	require_secret(&secret, &secretlen, key_id);

	ks_owner_begin(&owner);
	rc = SPI_execute("SELECT e, e.prev_hash, e.hash, e.signature "
					 "FROM killswitch.events e ORDER BY e.id", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.events: %d", rc);
	for (uint64 i = 0; i < SPI_processed && bad_id < 0; i++)
	{
		KsEventRow	r;
		char	   *row_prev;
		bool		ok = row_verifies(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
									  secret, secretlen, key_id, &r, &row_prev);

		checked++;
		/* each row signed, numbered in turn, and chained to the one before */
		if (!ok || r.id != expect_id || strcmp(row_prev, prev) != 0)
			bad_id = r.id;
		else
		{
			strlcpy(prev, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3), sizeof(prev));
			expect_id = r.id + 1;
		}
	}
	ks_owner_end(&owner);

	values[0] = BoolGetDatum(bad_id < 0);
	values[1] = Int64GetDatum(checked);
	values[2] = Int64GetDatum(bad_id);
	nulls[2] = bad_id < 0;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
