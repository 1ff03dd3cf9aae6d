/*
 * upstream.c — a standby hears its upstream, whatever replay does
 * (ARCHITECTURE §11 "Halts outrun replay").
 *
 * Replay stops for recovery conflicts, for recovery_min_apply_delay and
 * when the WAL stops coming; a halt must not wait for it.  The watcher of
 * a standby keeps a connection of its own to its upstream — the server it
 * streams from: killswitch.upstream_conninfo, or primary_conninfo — to
 * killswitch.database there, and asks in a long poll for the state the
 * upstream holds as committed (CALL killswitch.await_state(), feed.c): the
 * signed bytes of its private copy, which on a standby upstream include
 * what that one heard from its own, so a cascade hears the primary through
 * every up.  Each answer must come from this standby's own system (the
 * system identifier it reports) and verify with the signing secret; a
 * raise is in force at once, in the heard overlay beside what replay
 * brought (standby.c ks_standby_take_heard(), state.c ks_publish_heard())
 * — waiters in ks_wait() wake, an emergency ends busy agent sessions — and
 * a lower mode never: it comes only by replaying its committed record.
 * The overlay ends when replay reaches its generation, or when the
 * upstream tells of another history (a lower generation, another
 * timeline: a failover), never below what replay brought.  The same for
 * the scoped halts: after each state, the upstream's signed scope copy
 * (killswitch.committed_scopes()), each scope told above what was
 * replayed for it held as a heard scope (scope.c ks_scope_take_heard()).
 *
 * The connection never blocks the watcher, the way the walreceiver
 * (libpqwalreceiver) and postgres_fdw drive theirs: PQconnectStartParams()
 * and PQconnectPoll(), PQsendQueryParams(), PQconsumeInput() and
 * PQisBusy(), with the socket in the watcher's wait set beside its latch
 * (worker.c), so a slow or dead upstream holds up neither replay nor the
 * watcher's other work, and SIGTERM ends it like any wait.
 *
 * Each answer also says how stale the upstream's own news of the primary
 * is (0 on a primary) and the primary's WAL position as it knows it.  So a
 * standby knows how old its newest word from the primary is, through a
 * cascade (ks_status() upstream_age_ms), and how far its replay is behind
 * (replay_behind_bytes, replay_behind_ms).  With
 * killswitch.standby_max_silence, a standby whose news is older than that
 * holds halt_all — a floor under the word (state.c ks_set_floor()), not a
 * tamper verdict — until it hears again.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "libpq-fe.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "guc.h"
#include "persist.h"
#include "release.h"
#include "scope.h"
#include "scopefile.h"
#include "standby.h"
#include "state.h"
#include "store.h"
#include "upstream.h"

#ifdef KS_HAVE_CUSTOM_RMGR
#include "access/xlogrecovery.h"	/* the recovery API's own header from 15 on */
#endif

char	   *ks_upstream_conninfo = NULL;
int			ks_standby_max_silence = 60;

/* The long poll: the upstream answers at least this often when nothing changes. */
#define KS_UPSTREAM_POLL_MS 1000
/* A connection attempt may take this long. */
#define KS_UPSTREAM_CONNECT_MS 5000
/* No answer this long after the poll's own timeout: the link is dead. */
#define KS_UPSTREAM_ANSWER_SLACK_MS 5000
/* After a failure, connect again this much later. */
#define KS_UPSTREAM_RETRY_MS 1000
/* News older than this many polls is a problem worth showing. */
#define KS_UPSTREAM_STALE_POLLS 3
/* Repeat the WARNING about a standing problem this often. */
#define KS_UPSTREAM_WARN_MS 60000
/* WAL positions heard and not replayed yet, remembered to date replay's lag. */
#define KS_BEHIND_SAMPLES 64

/* The questions: the first once per connection, the other two in turn. */
typedef enum KsQuestion
{
	QUESTION_SETUP,				/* no statement_timeout of the role's cuts the long poll short */
	QUESTION_WAIT,				/* CALL killswitch.await_state(): until the state moves */
	QUESTION_READ,				/* killswitch.committed_state(): what it is */
	QUESTION_SCOPES				/* killswitch.committed_scopes(): its scopes (§13 "Standbys") */
} KsQuestion;

typedef enum KsLinkState
{
	LINK_IDLE,					/* no connection: connect at retry_at */
	LINK_CONNECTING,			/* PQconnectPoll() until it says OK */
	LINK_ASKING,				/* the question is being sent: PQflush() */
	LINK_WAITING				/* the question is out: the answer comes */
} KsLinkState;

/* A WAL position the upstream reported, and when. */
typedef struct KsBehindSample
{
	XLogRecPtr	lsn;
	TimestampTz at;
} KsBehindSample;

/* The watcher's side of the link (one watcher per server). */
static struct
{
	bool		started;
	KsLinkState state;
	PGconn	   *conn;
	PostgresPollingStatusType polling;	/* LINK_CONNECTING: what PQconnectPoll() waits for */
	uint64		epoch;			/* counts connections: a new one is a new socket to wait on */
	pgsocket	sock;			/* the connection's socket when last looked at */
	TimestampTz deadline;		/* connecting or asking: give up then */
	TimestampTz retry_at;		/* LINK_IDLE: connect then */
	char	   *conninfo;		/* what the connection was made with */
	KsQuestion	question;		/* the one asked */
	PGresult   *answer;			/* LINK_WAITING: the answer as it comes */
	char		error[KS_WATCHER_PROBLEM_LEN];	/* or the upstream's error */
	char		error_code[6];	/* its SQLSTATE */
	bool		scope_feed;		/* the upstream tells its scopes (false: an earlier build) */
	int64		known_scopes_version;	/* of the last scope copy heard: the poll waits past it */
	char	   *known_scopes;	/* its verified bytes */
	size_t		known_scopes_len;
	TimeLineID	told_timeline;	/* of the last answer */
	TimeLineID	scopes_timeline;	/* the heard scopes were heard on it; 0: not yet known */
	int64		known_generation;	/* of the last state heard: the poll waits past it */
	char	   *known;			/* its verified bytes */
	size_t		known_len;
	char	   *unwritten;		/* a heard state taken, its bytes not yet in the files */
	size_t		unwritten_len;
	int64		unwritten_generation;
	bool		dropped;		/* the heard overlay ended: its file is to go */
	char		problem[KS_WATCHER_PROBLEM_LEN];	/* the link's own problem; "" when none */
	TimestampTz warned_at;
	KsBehindSample behind[KS_BEHIND_SAMPLES];	/* oldest first, positions rising */
	int			nbehind;
	MemoryContext cxt;			/* reset after each answer */
	ResourceOwner owner;		/* the HMAC's resources, outside any transaction */
} up;

/* Define killswitch.upstream_conninfo and killswitch.standby_max_silence (from _PG_init). */
void
ks_upstream_define_settings(void)
{
	DefineCustomStringVariable("killswitch.upstream_conninfo",
							   "Connection string a standby's watcher uses to hear its upstream.",
							   "Empty: primary_conninfo. The watcher connects to killswitch.database there, so pg_hba.conf must let that role into that database (a replication line is not enough).",
							   &ks_upstream_conninfo, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomIntVariable("killswitch.standby_max_silence",
							"Longest time a standby may go without word from its primary before it holds halt_all.",
							"Through a cascade, the age of the newest word from the primary. 0 turns the bound off; the staleness still shows in ks_status().",
							&ks_standby_max_silence, 60, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
}

/* The connection string in force: ours, or the walreceiver's. */
static const char *
conninfo_in_force(void)
{
	if (ks_upstream_conninfo && ks_upstream_conninfo[0] != '\0')
		return ks_upstream_conninfo;
	return PrimaryConnInfo ? PrimaryConnInfo : "";
}

/* How long the upstream may keep a poll: a bound leaves room for several. */
static int
poll_ms(void)
{
	if (ks_standby_max_silence > 0)
		return Min(KS_UPSTREAM_POLL_MS, ks_standby_max_silence * 1000 / 4);
	return KS_UPSTREAM_POLL_MS;
}

/*
 * Put the link's state into shared memory for ks_status(): its problem
 * (the link's own, or the staleness of the news), and the WARNING when a
 * problem appears or changes and once a minute while it stands.
 */
static void
show_problem(const char *problem)
{
	char		last[KS_WATCHER_PROBLEM_LEN];
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&ks_shared->mutex);
	strlcpy(last, ks_shared->upstream.problem, sizeof(last));
	strlcpy(ks_shared->upstream.problem, problem, sizeof(ks_shared->upstream.problem));
	SpinLockRelease(&ks_shared->mutex);
	if (problem[0] == '\0')
	{
		if (last[0] != '\0')
			ereport(LOG, (errmsg("the standby hears its upstream again")));
		return;
	}
	if (strcmp(last, problem) == 0 &&
		!TimestampDifferenceExceeds(up.warned_at, now, KS_UPSTREAM_WARN_MS))
		return;
	ereport(WARNING,
			(errmsg("the standby cannot hear its upstream: %s", problem),
			 errdetail("A halt engaged on the primary reaches this standby only when replay gets to it."),
			 errhint("Check killswitch.upstream_conninfo (or primary_conninfo), and that pg_hba.conf on the upstream lets that role connect to database \"%s\".",
					 ks_database)));
	up.warned_at = now;
}

/* Drop what came of the last question. */
static void
forget_answer(void)
{
	if (up.answer)
		PQclear(up.answer);
	up.answer = NULL;
	up.error[0] = '\0';
	up.error_code[0] = '\0';
}

/* Close the connection, if any; connect again at retry_at. */
static void
disconnect(void)
{
	forget_answer();
	if (up.conn)
		PQfinish(up.conn);
	up.conn = NULL;
	up.state = LINK_IDLE;
}

/* Close the connection, and say why; connect again after a pause. */
static void
fail(const char *what, const char *why)
{
	char		problem[KS_WATCHER_PROBLEM_LEN];
	char	   *nl;

	snprintf(problem, sizeof(problem), "%s: %s", what, why && why[0] ? why : "no reason given");
	/* libpq's messages end in a newline, and may run on several lines */
	while ((nl = strpbrk(problem, "\n\t")) != NULL)
	{
		if (nl[1] == '\0')
			*nl = '\0';
		else
			*nl = ' ';
	}
	strlcpy(up.problem, problem, sizeof(up.problem));
	disconnect();
	up.retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KS_UPSTREAM_RETRY_MS);
}

/* At the watcher's exit: close the connection. */
static void
close_link(int code, Datum arg)
{
	disconnect();
}

/*
 * The watcher starts in recovery: the link is set up, and the news counts
 * as fresh from the first start of a watcher since the server started (a
 * watcher that dies and comes back does not make it fresh again).
 */
void
ks_upstream_start(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (up.started)
		return;
	up.cxt = AllocSetContextCreate(TopMemoryContext, "killswitch upstream",
									 ALLOCSET_SMALL_SIZES);
	up.owner = ResourceOwnerCreate(NULL, "killswitch upstream");
	up.state = LINK_IDLE;
	up.retry_at = 0;
	up.known_generation = -1;
	up.known_scopes_version = 0;
	up.scopes_timeline = 0;
	up.started = true;
	on_proc_exit(close_link, (Datum) 0);
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->upstream.configured = true;
	if (ks_shared->upstream.fresh_at == 0)
		ks_shared->upstream.fresh_at = now;
	SpinLockRelease(&ks_shared->mutex);
}

/* No heard state waits to be written into the files any more. */
static void
forget_unwritten(void)
{
	if (up.unwritten)
		pfree(up.unwritten);
	up.unwritten = NULL;
}

/*
 * Recovery has ended (promotion): no upstream any more.  The connection
 * closes, what was heard ahead of replay and a floor are dropped — the
 * history decides now (standby.c) — and ks_status() shows no upstream.
 */
void
ks_upstream_stop(void)
{
	if (!up.started)
		return;
	disconnect();
	up.started = false;
	up.nbehind = 0;
	forget_unwritten();
	up.dropped = false;
	/* the heard scopes stay until the first look as a primary settles them (§13) */
	up.known_scopes_version = 0;
	up.scopes_timeline = 0;
	if (up.known_scopes)
		pfree(up.known_scopes);
	up.known_scopes = NULL;
	if (ks_heard_generation() >= 0)
	{
		ks_drop_heard();
		ks_standby_heard_dropped();
	}
	ks_set_floor(KS_DISENGAGED);
	SpinLockAcquire(&ks_shared->mutex);
	memset(&ks_shared->upstream, 0, sizeof(ks_shared->upstream));
	SpinLockRelease(&ks_shared->mutex);
}

/* Start connecting to the upstream. */
static void
connect_upstream(void)
{
	const char *keys[5];
	const char *vals[5];
	const char *conninfo = conninfo_in_force();

	if (up.conninfo)
		pfree(up.conninfo);
	up.conninfo = MemoryContextStrdup(TopMemoryContext, conninfo);
	if (conninfo[0] == '\0')
	{
		strlcpy(up.problem, "no upstream to hear: killswitch.upstream_conninfo and primary_conninfo are empty",
				sizeof(up.problem));
		up.retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KS_UPSTREAM_RETRY_MS);
		return;
	}
	/*
	 * The first dbname is the whole string; the second names our database.
	 * (libpq resolves a host name here, before the socket exists: a
	 * hostaddr spares the watcher the lookup, as for the walreceiver.)
	 */
	keys[0] = "dbname";
	vals[0] = conninfo;
	keys[1] = "dbname";
	vals[1] = ks_database;
	keys[2] = "application_name";
	vals[2] = "killswitch standby watcher";
	keys[3] = "replication";
	vals[3] = "false";
	keys[4] = NULL;
	vals[4] = NULL;
	up.conn = PQconnectStartParams(keys, vals, true);
	if (up.conn == NULL || PQstatus(up.conn) == CONNECTION_BAD)
	{
		fail("could not connect to the upstream", up.conn ? PQerrorMessage(up.conn) : "out of memory");
		return;
	}
	up.state = LINK_CONNECTING;
	up.scope_feed = true;		/* until the upstream says it has none */
	up.polling = PGRES_POLLING_WRITING;
	up.sock = PQsocket(up.conn);
	up.epoch++;
	up.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KS_UPSTREAM_CONNECT_MS);
}

/*
 * LINK_ASKING: send the rest of the question.  While the output does not
 * drain, the input is read too, as libpq asks (the server may be waiting
 * for us to read before it reads on).
 */
static void
go_on_asking(void)
{
	int			r = PQflush(up.conn);

	if (r > 0 && !PQconsumeInput(up.conn))
		r = -1;

	if (r < 0)
		fail("could not ask the upstream", PQerrorMessage(up.conn));
	else if (r == 0)
		up.state = LINK_WAITING;
}

/*
 * Send a question: wait until the upstream's state moves past what we
 * know (or the poll's end) — a CALL, which holds no snapshot on the
 * upstream while it waits (feed.c) — or read its state.
 */
static void
ask(KsQuestion question)
{
	char		generation[32];
	char		timeout[16];
	char		scopes_version[32];
	const char *params[3];
	int			sent;

	snprintf(generation, sizeof(generation), INT64_FORMAT, up.known_generation);
	snprintf(timeout, sizeof(timeout), "%d", poll_ms());
	snprintf(scopes_version, sizeof(scopes_version), INT64_FORMAT, up.known_scopes_version);
	params[0] = generation;
	params[1] = timeout;
	params[2] = scopes_version;
	if (question == QUESTION_SETUP)
		sent = PQsendQuery(up.conn, "SET statement_timeout = 0");
	else if (question == QUESTION_WAIT && up.scope_feed)
		sent = PQsendQueryParams(up.conn, "CALL killswitch.await_state($1, $2, $3)",
								 3, NULL, params, NULL, NULL, 0);
	else if (question == QUESTION_WAIT)
		sent = PQsendQueryParams(up.conn, "CALL killswitch.await_state($1, $2)",
								 2, NULL, params, NULL, NULL, 0);
	else if (question == QUESTION_SCOPES)
		sent = PQsendQueryParams(up.conn,
								 "SELECT scopes, version FROM killswitch.committed_scopes()",
								 0, NULL, NULL, NULL, NULL, 0);
	else
		sent = PQsendQueryParams(up.conn,
								 "SELECT state, silent_ms, wal_lsn, system_identifier, timeline_id"
								 " FROM killswitch.committed_state()",
								 0, NULL, NULL, NULL, NULL, 0);
	if (!sent)
	{
		fail("could not ask the upstream", PQerrorMessage(up.conn));
		return;
	}
	up.question = question;
	up.state = LINK_ASKING;
	up.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											  (question == QUESTION_WAIT ? poll_ms() : 0) +
											  KS_UPSTREAM_ANSWER_SLACK_MS);
	go_on_asking();
}

/* Remember a WAL position the upstream reported that replay has not reached. */
static void
note_behind(XLogRecPtr lsn, TimestampTz at)
{
	if (lsn <= GetXLogReplayRecPtr(NULL) ||
		(up.nbehind > 0 && lsn <= up.behind[up.nbehind - 1].lsn))
		return;
	/* full: the newest sample moves on, the oldest ones keep the lag's start */
	if (up.nbehind == KS_BEHIND_SAMPLES)
		up.nbehind--;
	up.behind[up.nbehind].lsn = lsn;
	up.behind[up.nbehind].at = at;
	up.nbehind++;
}

/* Forget the positions replay has reached; the oldest left dates the lag. */
static void
update_behind(void)
{
	XLogRecPtr	replayed = GetXLogReplayRecPtr(NULL);
	int			drop = 0;

	while (drop < up.nbehind && up.behind[drop].lsn <= replayed)
		drop++;
	if (drop > 0)
	{
		memmove(up.behind, up.behind + drop, (up.nbehind - drop) * sizeof(KsBehindSample));
		up.nbehind -= drop;
	}
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->upstream.behind_since = up.nbehind > 0 ? up.behind[0].at : 0;
	SpinLockRelease(&ks_shared->mutex);
}

/* Verify the upstream's bytes with the signing secret (false, and why, if they do not). */
static bool
verify(const char *bytes, size_t len, KsState *st, char *problem, size_t problemlen)
{
	ResourceOwner save = CurrentResourceOwner;
	char	   *secret;
	size_t		secretlen;
	KsVerdict	v;

	if (!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return false;
	/* HMAC contexts are tracked by a resource owner; there is no transaction here */
	CurrentResourceOwner = up.owner;
	v = ks_state_from_text(bytes, len, secret, secretlen, ks_secret_file, true, st,
						   problem, problemlen);
	CurrentResourceOwner = save;
	if (v == KS_FILE_VALID && st->generation < 0)
	{
		snprintf(problem, problemlen, "it has no generation");
		v = KS_FILE_BAD;
	}
	return v == KS_FILE_VALID;
}

/*
 * May the standby take a heard state's generation?  At most
 * KS_GENERATION_STEP_MAX past the one replay brought, as for an outside
 * file (release.c; the parser already refused one past
 * KS_MAX_GENERATION): a heard state holds until replay reaches its
 * generation or the upstream tells of another history, and one far ahead
 * is no news a primary gives.  Replay brings such a state anyway; until
 * the upstream is heard again, past killswitch.standby_max_silence the
 * standby holds halt_all.
 */
static bool
within_step(const KsState *st, char *problem, size_t problemlen)
{
	KsState		held;

	ks_state_init(&held);
	held.generation = KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word));
	return ks_generation_step_ok(st, &held, problem, problemlen);
}

/*
 * Is the upstream of this standby's own system?  Word from another one —
 * a server the connection string names by mistake, another cluster signed
 * with the same secret — is no word from the primary, whatever it says.
 */
static bool
same_system(const char *reported, char *problem, size_t problemlen)
{
	uint64		ours = GetSystemIdentifier();
	int64		theirs = strtoi64(reported, NULL, 10);

	if ((uint64) theirs == ours)
		return true;
	snprintf(problem, problemlen,
			 "its system identifier is " UINT64_FORMAT ", this standby's " UINT64_FORMAT,
			 (uint64) theirs, ours);
	return false;
}

/* Keep a copy of bytes in *copy, in place of the one there; it outlives the pass. */
static void
keep_copy(char **copy, size_t *copy_len, const char *bytes, size_t len)
{
	if (*copy)
		pfree(*copy);
	*copy = MemoryContextAlloc(TopMemoryContext, len);
	memcpy(*copy, bytes, len);
	*copy_len = len;
}

/*
 * A new state from the upstream, verified, on the upstream's timeline:
 * remembered as what the poll waits past, and into the heard overlay (its
 * files written later in the pass, ks_upstream_write_files()).
 */
static void
take(const char *bytes, size_t len, const KsState *st, TimeLineID timeline)
{
	KsHeard		heard;

	keep_copy(&up.known, &up.known_len, bytes, len);
	up.known_generation = st->generation;
	heard = ks_standby_take_heard(st, timeline);
	if (heard == KS_HEARD_DROPPED)
	{
		ereport(LOG,
				(errmsg("the standby no longer holds what it heard ahead of replay: its upstream is on another history"),
				 errdetail("The upstream tells generation " INT64_FORMAT " on timeline %u; the standby holds what it replayed, generation " INT64_FORMAT ".",
						   st->generation, timeline,
						   KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)))));
		forget_unwritten();
		up.dropped = true;
		return;
	}
	if (heard != KS_HEARD_TAKEN)
		return;
	ereport(LOG,
			(errmsg("the standby heard %s (generation " INT64_FORMAT ") from its upstream, ahead of replay",
					ks_mode_sql_names[st->mode], st->generation)));
	keep_copy(&up.unwritten, &up.unwritten_len, bytes, len);
	up.unwritten_generation = st->generation;
}

/*
 * The upstream's own silence is not signed: a negative one would date the
 * word in the future and hold off the silence floor until then, a huge one
 * would overflow.  Word from nowhere is at most as fresh as now, and none
 * is older than a year.
 */
#define KS_MAX_SILENT_MS (INT64CONST(366) * 24 * 3600 * 1000)

/* Word from the primary, through the upstream: how fresh, and its WAL position. */
static void
note_heard(int64 silent_ms, XLogRecPtr lsn)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz said_at;

	silent_ms = Min(Max(silent_ms, 0), KS_MAX_SILENT_MS);
	said_at = TimestampTzPlusMilliseconds(now, -silent_ms);

	up.problem[0] = '\0';
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->upstream.heard_at = now;
	if (said_at > ks_shared->upstream.fresh_at)
		ks_shared->upstream.fresh_at = said_at;
	if (!XLogRecPtrIsInvalid(lsn))
		ks_shared->upstream.upstream_lsn = lsn;
	SpinLockRelease(&ks_shared->mutex);
	if (!XLogRecPtrIsInvalid(lsn))
		note_behind(lsn, now);
}

/*
 * An answer: the upstream's state (bytea), how stale its own news of the
 * primary is, the primary's WAL position, and the upstream's system
 * identifier and timeline.  Of this standby's system and verified (bytes
 * already verified need no second look), it counts as word from the
 * primary; from another system it does not, and the silence bound rules.
 */
static void
hear(PGresult *res)
{
	MemoryContext old = MemoryContextSwitchTo(up.cxt);
	unsigned char *bytes = NULL;
	size_t		len = 0;
	bool		lsn_bad = false;
	XLogRecPtr	lsn = InvalidXLogRecPtr;
	KsState		st;
	char		problem[KS_PROBLEM_LEN];

	if (PQntuples(res) != 1 || PQnfields(res) != 5 ||
		PQgetisnull(res, 0, 3) || PQgetisnull(res, 0, 4))
		fail("the upstream's answer could not be read", "it has not the fields this version asks for");
	else if (!same_system(PQgetvalue(res, 0, 3), problem, sizeof(problem)))
		fail("the upstream is not of this standby's system", problem);
	else if (PQgetisnull(res, 0, 0) || PQgetisnull(res, 0, 1))
		fail("the upstream has no state to tell",
			 "its private copy is missing, or its own news of the primary is unknown");
	else if ((bytes = PQunescapeBytea((unsigned char *) PQgetvalue(res, 0, 0), &len)) == NULL)
		fail("the upstream's answer could not be read", "out of memory");
	else
	{
		if (!PQgetisnull(res, 0, 2))
			lsn = pg_lsn_in_internal(PQgetvalue(res, 0, 2), &lsn_bad);
		up.told_timeline = (TimeLineID) strtoul(PQgetvalue(res, 0, 4), NULL, 10);
		if (up.known && len == up.known_len && memcmp(bytes, up.known, len) == 0)
			note_heard(strtoi64(PQgetvalue(res, 0, 1), NULL, 10), lsn_bad ? InvalidXLogRecPtr : lsn);
		else if (!verify((char *) bytes, len, &st, problem, sizeof(problem)))
			fail("the upstream's state does not verify with this standby's signing secret", problem);
		else if (!within_step(&st, problem, sizeof(problem)))
			fail("the upstream's state is too far ahead of this standby's to be taken", problem);
		else
		{
			up.told_timeline = (TimeLineID) strtoul(PQgetvalue(res, 0, 4), NULL, 10);
			take((char *) bytes, len, &st, up.told_timeline);
			note_heard(strtoi64(PQgetvalue(res, 0, 1), NULL, 10), lsn_bad ? InvalidXLogRecPtr : lsn);
		}
	}
	if (bytes)
		PQfreemem(bytes);
	MemoryContextSwitchTo(old);
	MemoryContextReset(up.cxt);
}

/*
 * The upstream's scopes changed history: it is on another timeline than
 * the one the heard scopes were heard on (a failover).  They end — the new
 * primary's history decides, as for the heard state — and what it tells is
 * weighed against replay alone.
 */
static void
scopes_on_another_history(void)
{
	if (up.scopes_timeline != 0 && up.told_timeline != up.scopes_timeline &&
		ks_scope_heard_count() > 0 && ks_scope_end_heard(NULL, 0, true))
	{
		ereport(LOG,
				(errmsg("the standby no longer holds the scopes it heard ahead of replay: its upstream is on another history"),
				 errdetail("The upstream tells timeline %u; they were heard on timeline %u.",
						   up.told_timeline, up.scopes_timeline)));
		ks_scope_file_write();	/* a restart must not bring them back */
		if (up.known_scopes)
			pfree(up.known_scopes);
		up.known_scopes = NULL;	/* what it tells is weighed again */
	}
	up.scopes_timeline = up.told_timeline;
}

/*
 * An answer to QUESTION_SCOPES: the upstream's signed scope copy and its
 * version (ARCHITECTURE §13 "Standbys").  Verified with the signing secret
 * (the answer to QUESTION_READ just before, on this connection, showed
 * the upstream of this standby's system), its committed scopes go into
 * the heard overlay, raises only (scope.c ks_scope_take_heard()); the
 * standby's own copy is written when that changed the set, so a restart
 * keeps them.  The poll then waits past the version.
 */
static void
hear_scopes(PGresult *res)
{
	MemoryContext old = MemoryContextSwitchTo(up.cxt);
	ResourceOwner save = CurrentResourceOwner;
	unsigned char *bytes = NULL;
	size_t		len = 0;
	char	   *secret;
	size_t		secretlen;
	char		problem[KS_PROBLEM_LEN];
	KsScope    *list = NULL;
	int			n = 0;
	int64		version;

	CurrentResourceOwner = up.owner;	/* the HMAC's, outside any transaction */
	if (PQntuples(res) != 1 || PQnfields(res) != 2 || PQgetisnull(res, 0, 1))
	{
		fail("the upstream's scopes could not be read", "they have not the fields this version asks for");
		goto done;
	}
	/* whatever it tells now, the heard scopes of another history end first */
	scopes_on_another_history();
	if (PQgetisnull(res, 0, 0))
		up.known_scopes_version = strtoi64(PQgetvalue(res, 0, 1), NULL, 10);	/* none there */
	else if ((bytes = PQunescapeBytea((unsigned char *) PQgetvalue(res, 0, 0), &len)) == NULL)
		fail("the upstream's scopes could not be read", "out of memory");
	else if (up.known_scopes && len == up.known_scopes_len && memcmp(bytes, up.known_scopes, len) == 0)
		up.known_scopes_version = strtoi64(PQgetvalue(res, 0, 1), NULL, 10);
	else if (!ks_backend_secret(&secret, &secretlen, problem, sizeof(problem)) ||
			 (list = ks_scope_file_heard((char *) bytes, len, secret, secretlen, &version, &n,
										 problem, sizeof(problem))) == NULL)
		fail("the upstream's scopes do not verify with this standby's signing secret", problem);
	else
	{
		if (ks_scope_take_heard(list, n))
		{
			ereport(LOG,
					(errmsg("the standby heard scopes from its upstream ahead of replay (scope copy version " INT64_FORMAT ")",
							version)));
			ks_scope_file_write();
		}
		keep_copy(&up.known_scopes, &up.known_scopes_len, (char *) bytes, len);
		up.known_scopes_version = strtoi64(PQgetvalue(res, 0, 1), NULL, 10);
	}
done:
	CurrentResourceOwner = save;
	if (bytes)
		PQfreemem(bytes);
	MemoryContextSwitchTo(old);
	MemoryContextReset(up.cxt);
}

/* LINK_CONNECTING: go on with the handshake. */
static void
go_on_connecting(void)
{
	up.polling = PQconnectPoll(up.conn);
	if (PQsocket(up.conn) != up.sock)
	{
		/* libpq went on to the next address */
		up.sock = PQsocket(up.conn);
		up.epoch++;
	}
	if (up.polling == PGRES_POLLING_FAILED)
		fail("could not connect to the upstream", PQerrorMessage(up.conn));
	else if (up.polling == PGRES_POLLING_OK)
	{
		if (PQsetnonblocking(up.conn, 1) != 0)
			fail("could not connect to the upstream", PQerrorMessage(up.conn));
		else
			ask(QUESTION_SETUP);
	}
}

/*
 * LINK_WAITING: read what came; once the answer is whole (libpq has no
 * more results), hear it and ask again.  An error from the upstream (no
 * such procedure: an upstream without this version of the library)
 * closes the up.
 */
static void
go_on_waiting(void)
{
	PGresult   *res;

	if (!PQconsumeInput(up.conn))
	{
		fail("lost the connection to the upstream", PQerrorMessage(up.conn));
		return;
	}
	while (!PQisBusy(up.conn) && (res = PQgetResult(up.conn)) != NULL)
	{
		ExecStatusType status = PQresultStatus(res);

		if ((status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK) && up.answer == NULL)
			up.answer = res;
		else
		{
			if (up.error[0] == '\0' && status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK)
			{
				const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);

				strlcpy(up.error, PQresultErrorMessage(res), sizeof(up.error));
				strlcpy(up.error_code, code ? code : "", sizeof(up.error_code));
			}
			PQclear(res);
		}
	}
	if (PQisBusy(up.conn))
		return;					/* more to come */
	if (up.error[0] != '\0' && up.question == QUESTION_SCOPES &&
		strcmp(up.error_code, "42883") == 0)
	{
		/* an upstream of an earlier build: no scopes heard, the rest as before */
		ereport(LOG,
				(errmsg("the standby's upstream does not tell its scopes"),
				 errdetail("Its killswitch build has no killswitch.committed_scopes(); a scope reaches this standby when replay brings it.")));
		up.scope_feed = false;
		forget_answer();
		ask(QUESTION_WAIT);
		return;
	}
	if (up.error[0] != '\0')
		fail("the upstream refused the question", up.error);
	else if (up.answer == NULL)
		fail("the upstream gave no answer", PQerrorMessage(up.conn));
	else if (up.question == QUESTION_SETUP || up.question == QUESTION_WAIT)
		ask(QUESTION_READ);
	else if (up.question == QUESTION_READ)
	{
		hear(up.answer);
		if (up.state == LINK_WAITING)
			ask(up.scope_feed ? QUESTION_SCOPES : QUESTION_WAIT);
	}
	else
	{
		hear_scopes(up.answer);
		if (up.state == LINK_WAITING)
			ask(QUESTION_WAIT);
	}
	forget_answer();
}

/*
 * Hold halt_all while the news from the primary is older than
 * killswitch.standby_max_silence (a floor, not a verdict), lift it when
 * word comes again; and show the staleness as a problem once it is more
 * than a few polls old.
 */
static void
judge_silence(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz fresh_at;
	bool		lost_before;
	bool		lost;
	long		age_ms;
	char		problem[KS_WATCHER_PROBLEM_LEN];

	SpinLockAcquire(&ks_shared->mutex);
	fresh_at = ks_shared->upstream.fresh_at;
	lost_before = ks_shared->upstream.lost;
	SpinLockRelease(&ks_shared->mutex);
	age_ms = TimestampDifferenceMilliseconds(fresh_at, now);
	lost = ks_standby_max_silence > 0 && age_ms > ks_standby_max_silence * 1000L;
	if (lost != lost_before)
	{
		SpinLockAcquire(&ks_shared->mutex);
		ks_shared->upstream.lost = lost;
		SpinLockRelease(&ks_shared->mutex);
		ks_set_floor(lost ? KS_HALT_ALL : KS_DISENGAGED);
		if (lost)
			ereport(WARNING,
					(errmsg("no word from the primary for %ld s; the standby holds halt_all until it hears again",
							age_ms / 1000),
					 errdetail("killswitch.standby_max_silence is %d s. This is no tamper verdict: the halt lifts when word comes.",
							   ks_standby_max_silence)));
		else
			ereport(LOG,
					(errmsg("word from the primary again; the standby no longer holds halt_all")));
	}
	if (up.problem[0] != '\0')
		strlcpy(problem, up.problem, sizeof(problem));
	else if (age_ms > (long) KS_UPSTREAM_STALE_POLLS * poll_ms())
		strlcpy(problem, "the upstream answers, but has had no word from the primary itself for a while",
				sizeof(problem));
	else
		problem[0] = '\0';
	show_problem(problem);
}

/*
 * The socket to wait on, and for what (WL_SOCKET_*), or PGINVALID_SOCKET
 * when the link waits for nothing but time.  The epoch changes with every
 * connection, and when the handshake moves to another address: a closed
 * socket's number may come back for the next one, which must be waited on
 * afresh.
 */
pgsocket
ks_upstream_socket(int *events, uint64 *epoch)
{
	*events = 0;
	*epoch = up.epoch;
	if (!up.started || up.conn == NULL)
		return PGINVALID_SOCKET;
	switch (up.state)
	{
		case LINK_CONNECTING:
			*events = up.polling == PGRES_POLLING_READING ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE;
			break;
		case LINK_ASKING:
			*events = WL_SOCKET_WRITEABLE | WL_SOCKET_READABLE;
			break;
		case LINK_WAITING:
			*events = WL_SOCKET_READABLE;
			break;
		default:
			return PGINVALID_SOCKET;
	}
	return PQsocket(up.conn);
}

/*
 * One pass of the watcher on a standby: move the link on (socket_ready:
 * its socket was reported ready), hear what came, judge the silence.
 * Never an error, never a wait.
 */
void
ks_upstream_work(bool socket_ready)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!up.started)
		return;
	/* a reloaded setting: connect again with it */
	if (up.conninfo && strcmp(up.conninfo, conninfo_in_force()) != 0)
	{
		disconnect();
		up.retry_at = now;
	}
	switch (up.state)
	{
		case LINK_IDLE:
			if (now >= up.retry_at)
				connect_upstream();
			break;
		case LINK_CONNECTING:
			if (socket_ready)
				go_on_connecting();
			break;
		case LINK_ASKING:
			if (socket_ready)
				go_on_asking();
			break;
		case LINK_WAITING:
			if (socket_ready)
				go_on_waiting();
			break;
	}
	if (up.state != LINK_IDLE && GetCurrentTimestamp() >= up.deadline)
		fail(up.state == LINK_CONNECTING ? "could not connect to the upstream" : "the upstream stopped answering",
			 "timed out");
	update_behind();
	judge_silence();
}

/* The first of the link's deadlines, as a wait timeout no longer than timeout (ms). */
long
ks_upstream_timeout(long timeout)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz when = 0;
	TimestampTz fresh_at;
	bool		lost;

	if (!up.started)
		return timeout;
	if (up.state == LINK_IDLE)
		when = up.retry_at;
	else
		when = up.deadline;
	SpinLockAcquire(&ks_shared->mutex);
	fresh_at = ks_shared->upstream.fresh_at;
	lost = ks_shared->upstream.lost;
	SpinLockRelease(&ks_shared->mutex);
	if (ks_standby_max_silence > 0 && !lost)
	{
		TimestampTz silence_at = TimestampTzPlusMilliseconds(fresh_at, ks_standby_max_silence * 1000L + 1);

		if (when == 0 || silence_at < when)
			when = silence_at;
	}
	if (when != 0)
		timeout = Min(timeout, Max(TimestampDifferenceMilliseconds(now, when), 1));
	return timeout;
}

/* The generation of the upstream's state as last heard while the link works; -1 if none. */
int64
ks_upstream_generation(void)
{
	return up.started && up.problem[0] == '\0' ? up.known_generation : -1;
}

/*
 * Write a heard state's bytes into the heard file and the state file
 * (standby.c), after the watcher did what could not wait: so a restart
 * starts with it, and agents that read the file see it; or, the overlay
 * ended by another history, remove them.
 */
void
ks_upstream_write_files(void)
{
	/* not written (the writers' lock held elsewhere): again at the next pass */
	if (up.dropped && !ks_standby_heard_dropped())
		return;
	up.dropped = false;
	if (up.unwritten == NULL)
		return;
	if (!ks_standby_write_heard(up.unwritten, up.unwritten_len, up.unwritten_generation))
		return;
	forget_unwritten();
}
