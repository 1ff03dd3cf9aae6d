/*
 * offline.c — the killswitch command on the state directory, with the
 * database down or without a connection.  Writes go through store.c under
 * the writers' lock, signed, atomically; the server applies them when it
 * next looks (the watcher) or starts, as source "cli".
 *
 * While a server runs on the data directory, a write waits (a few seconds
 * at most) until the server has judged the one before — its private copy
 * has caught up with the file — so that every write becomes its own event,
 * with the generation printed here.
 */
#include "postgres_fe.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/logging.h"

#include "cli.h"

/* Resolved paths. */
typedef struct KsPaths
{
	char		state_dir[MAXPGPATH];
	char		state_file[MAXPGPATH];
	char		secret_file[MAXPGPATH];
	char		release_key_file[MAXPGPATH];	/* empty: not known */
	char		last_applied[MAXPGPATH];	/* the server's private copy, if known */
} KsPaths;

/* Work out where things are, or exit. */
static void
resolve_paths(const KsOptions *opt, KsPaths *p)
{
	if (opt->pgdata == NULL && (opt->state_dir == NULL || opt->secret_file == NULL))
	{
		pg_log_error("no data directory specified");
		pg_log_error_hint("Use -D DATADIR (or set PGDATA), or give --state-dir and --secret-file, or -d to connect.");
		exit(KS_EXIT_ERROR);
	}
	if (opt->state_dir)
		strlcpy(p->state_dir, opt->state_dir, MAXPGPATH);
	else
		snprintf(p->state_dir, MAXPGPATH, "%s/pg_killswitch", opt->pgdata);
	if (opt->secret_file)
		strlcpy(p->secret_file, opt->secret_file, MAXPGPATH);
	else
		snprintf(p->secret_file, MAXPGPATH, "%s/pg_killswitch/signing.key", opt->pgdata);
	snprintf(p->state_file, MAXPGPATH, "%s/%s", p->state_dir, KS_STATE_FILE_NAME);
	p->release_key_file[0] = '\0';
	if (opt->release_key_file)
		strlcpy(p->release_key_file, opt->release_key_file, MAXPGPATH);
	else if (opt->pgdata)
		snprintf(p->release_key_file, MAXPGPATH, "%s/pg_killswitch/release.key", opt->pgdata);
	p->last_applied[0] = '\0';
	if (opt->pgdata)
		snprintf(p->last_applied, MAXPGPATH, "%s/pg_killswitch/last_applied.json", opt->pgdata);
}

static bool is_standby(const KsOptions *opt);

/* Append "key": to a JSON object's text, after a comma unless first. */
static void
put_key(StringInfo out, const char *key)
{
	if (out->data[out->len - 1] != '{')
		appendStringInfoChar(out, ',');
	ks_json_append_string(out, key);
	appendStringInfoChar(out, ':');
}

/* Append "key":value (a JSON string, or null) to a JSON object's text. */
static void
put_string(StringInfo out, const char *key, const char *value)
{
	put_key(out, key);
	if (value)
		ks_json_append_string(out, value);
	else
		appendStringInfoString(out, "null");
}

/* Append "key":raw, where raw is JSON text already (a number, a literal). */
static void
put_raw(StringInfo out, const char *key, const char *raw)
{
	put_key(out, key);
	appendStringInfoString(out, raw);
}

/* Keys only the database knows: null offline. */
static const char *const database_only[] = {
	"engagement_count", "total_events", "unrecorded_change",
	"watcher_checked_at", "watcher_age_ms"
};

/* A standby's link to its upstream: only the running server knows. */
static const char *const server_only[] = {
	"replayed_generation", "heard_generation", "upstream_heard_at", "upstream_age_ms",
	"upstream_lost", "upstream_problem", "replay_behind_bytes", "replay_behind_ms"
};

/* Put each of these keys, null. */
static void
put_nulls(StringInfo out, const char *const *keys, int nkeys)
{
	for (int i = 0; i < nkeys; i++)
		put_raw(out, keys[i], "null");
}

/*
 * status --json: the members of ks_status(), as "killswitch -d ... status
 * --json" prints them, so that a script reads one shape either way.  What
 * only the database knows (the history's counts, the watcher) is null; so
 * is last_engagement when the file is disengaged, and the mode of a file
 * that cannot be trusted (the server then assumes at least halt_all).
 */
static void
print_status_json(const KsOptions *opt, const KsState *st, KsVerdict v,
				  const char *integrity, const char *problem)
{
	StringInfoData out;
	bool		bad = v == KS_FILE_BAD;
	char		gen[32];

	initStringInfo(&out);
	appendStringInfoChar(&out, '{');
	put_string(&out, "mode", bad ? NULL : ks_mode_file_names[st->mode]);
	put_raw(&out, "engaged", bad || st->mode != KS_DISENGAGED ? "true" : "false");
	snprintf(gen, sizeof(gen), INT64_FORMAT, st->generation);
	put_raw(&out, "generation", !bad && st->generation >= 0 ? gen : "null");
	put_string(&out, "since", bad ? NULL : st->engaged_at);
	put_string(&out, "source", bad ? NULL : st->source);
	put_string(&out, "integrity", integrity);
	put_string(&out, "problem", bad ? problem : ks_is_tamper_source(st->source) ? st->reason : NULL);
	put_raw(&out, "require_hmac", opt->require_hmac ? "true" : "false");
	if (!bad && st->mode != KS_DISENGAGED)
	{
		put_key(&out, "last_engagement");
		appendStringInfoChar(&out, '{');
		put_string(&out, "timestamp", st->engaged_at);
		put_string(&out, "mode", ks_mode_file_names[st->mode]);
		put_string(&out, "reason", st->reason);
		put_string(&out, "triggered_by", st->triggered_by);
		appendStringInfoChar(&out, '}');
	}
	else
		put_raw(&out, "last_engagement", "null");
	put_nulls(&out, database_only, lengthof(database_only));
	put_string(&out, "role", opt->pgdata == NULL ? NULL : is_standby(opt) ? "standby" : "primary");
	put_nulls(&out, server_only, lengthof(server_only));
	appendStringInfoChar(&out, '}');
	puts(out.data);
}

/* Print a state, for people or as JSON. */
static void
print_state(const KsOptions *opt, const KsState *st, KsVerdict v, const char *problem)
{
	const char *integrity = v == KS_FILE_BAD || ks_is_tamper_source(st->source) ? "tampered" :
		v == KS_FILE_UNSIGNED ? "unsigned" : "ok";

	if (opt->json)
	{
		print_status_json(opt, st, v, integrity, problem);
		return;
	}
	if (v == KS_FILE_BAD)
	{
		printf("integrity:    tampered (%s)\n", problem);
		printf("mode:         unknown: the server assumes at least halt_all\n");
		return;
	}
	printf("mode:         %s\n", ks_mode_sql_names[st->mode]);
	if (st->generation >= 0)
		printf("generation:   " INT64_FORMAT "\n", st->generation);
	printf("since:        %s\n", st->engaged_at ? st->engaged_at : "(never engaged)");
	printf("reason:       %s\n", st->reason ? st->reason : "");
	printf("triggered_by: %s\n", st->triggered_by ? st->triggered_by : "");
	printf("source:       %s\n", st->source ? st->source : "");
	printf("integrity:    %s\n", integrity);
	if (opt->pgdata)
		printf("role:         %s\n", is_standby(opt) ? "standby" : "primary");
}

/*
 * Is the secret we hold not the server's?  Then what we read cannot be
 * judged, and what we would write the server would judge tampering: say so
 * (an error, not a tamper verdict of our own).
 */
static bool
secret_is_wrong(const KsPaths *p, const char *secret, size_t secretlen, bool writing)
{
	KsKeyMismatch m;

	if (!ks_cli_secret_mismatch(secret, secretlen, p->secret_file, p->last_applied,
								p->state_file, &m))
		return false;
	ks_cli_report_mismatch(&m, writing);
	return true;
}

/* status and verify: read and judge the file. */
static int
show(const KsOptions *opt, const KsPaths *p, const char *secret, size_t secretlen)
{
	KsState		st;
	char		problem[KS_PROBLEM_LEN];
	KsVerdict	v = ks_state_read(p->state_file, secret, secretlen, p->secret_file,
								  opt->require_hmac, 50, &st, problem, sizeof(problem));

	if (v == KS_FILE_MISSING)
	{
		pg_log_error("no state file at \"%s\"", p->state_file);
		return KS_EXIT_ERROR;
	}
	if (v == KS_FILE_BAD && secret_is_wrong(p, secret, secretlen, false))
		return KS_EXIT_ERROR;
	if (opt->command == CMD_VERIFY && !opt->json)
	{
		if (v == KS_FILE_BAD)
			printf("%s: NOT trusted: %s\n", p->state_file, problem);
		else
			printf("%s: %s, mode %s\n", p->state_file,
				   v == KS_FILE_VALID ? "signature valid" : "unsigned (accepted: --no-require-hmac)",
				   ks_mode_sql_names[st.mode]);
		return v == KS_FILE_BAD ? KS_EXIT_TAMPERED : KS_EXIT_OK;
	}
	print_state(opt, &st, v, problem);
	if (v == KS_FILE_BAD)
		return KS_EXIT_TAMPERED;
	if (opt->command == CMD_VERIFY)
		return KS_EXIT_OK;
	if (ks_is_tamper_source(st.source))
		return KS_EXIT_TAMPERED;
	return st.mode == KS_DISENGAGED ? KS_EXIT_OK : KS_EXIT_ENGAGED;
}

/* Microseconds since the epoch, now (offscope.c's clock too). */
int64
ks_cli_now_usec(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (int64) tv.tv_sec * 1000000 + tv.tv_usec;
}

/*
 * The release key, which a file needs to lower the mode or a scope.  A
 * release (needed) fails without it, saying why; any other write is signed
 * with it when it can be read and goes without it otherwise (raising needs
 * only the shared secret).  file is NULL or "" when not known; lowering
 * names what is judged tampering without the key (offscope.c's too).
 */
bool
ks_cli_release_key_load(const char *file, bool needed, const char *lowering,
						char **key, size_t *len)
{
	char		problem[KS_PROBLEM_LEN];
	bool		known = file != NULL && file[0] != '\0';

	*key = NULL;
	*len = 0;
	if (known && ks_secret_load(file, false, key, len, problem, sizeof(problem)))
		return true;
	if (!needed)
		return true;
	if (!known)
		pg_log_error("a release needs the release key, and its file is not known");
	else
		pg_log_error("a release needs the release key: could not read \"%s\": %s",
					 file, problem);
	pg_log_error_hint("Give --release-key-file (default: DATADIR/pg_killswitch/release.key); "
					  "%s without it is judged tampering.", lowering);
	return false;
}

/* How long a write waits for the server to judge the previous one; an engage, less. */
#define KS_JUDGED_WAIT_MS 5000
#define KS_JUDGED_WAIT_RAISE_MS 1000

/*
 * How long an engage waits for the writers' lock before it writes without
 * it: any OS user who can write the state directory can hold the lock, and
 * a halt must not wait on them.  The replace keeps whatever it replaces
 * that it did not expect (files.c), so a writer it races loses nothing.
 */
#define KS_LOCK_RAISE_FRONTEND_MS 1000

/*
 * Is a server running on the data directory (postmaster.pid names a live
 * process)?  offscope.c asks it too.
 */
bool
ks_cli_server_running(const char *pgdata)
{
	char		path[MAXPGPATH];
	FILE	   *f;
	long		pid = 0;

	snprintf(path, sizeof(path), "%s/postmaster.pid", pgdata);
	f = fopen(path, "r");
	if (f == NULL)
		return false;
	if (fscanf(f, "%ld", &pid) != 1)
		pid = 0;
	fclose(f);
	return pid > 0 && (kill((pid_t) pid, 0) == 0 || errno == EPERM);
}

/*
 * Has the server judged the state file?  Its private copy carries the
 * generation it applied; a file ahead of it (or without a generation, as
 * the reference library writes) is still waiting.  A file that is missing
 * or untrusted is not waited for: the server's verdict on it is a halt.
 */
static bool
server_has_judged(const KsPaths *p, const char *secret, size_t secretlen)
{
	KsState		cur,
				held;
	char		problem[KS_PROBLEM_LEN];

	if (ks_state_read(p->state_file, secret, secretlen, p->secret_file, true, 0,
					  &cur, problem, sizeof(problem)) != KS_FILE_VALID)
		return true;
	if (ks_state_read(p->last_applied, secret, secretlen, p->secret_file, true, 0,
					  &held, problem, sizeof(problem)) != KS_FILE_VALID)
		return true;
	return cur.generation >= 0 && cur.generation <= held.generation;
}

/*
 * Take the writers' lock once the server (if one runs here) has judged the
 * file: otherwise two writes in quick succession would reach the watcher as
 * one.  Bounded: after KS_JUDGED_WAIT_MS the write goes ahead (an engage
 * must never wait on a watcher that is down) and says so.
 */
static int
lock_when_judged(const KsOptions *opt, const KsPaths *p, const char *secret,
				 size_t secretlen, bool raise, char *problem, size_t problemlen)
{
	bool		wait = opt->pgdata != NULL && ks_cli_server_running(opt->pgdata) && p->last_applied[0];
	int64		deadline = ks_cli_now_usec() +
		(int64) (raise ? KS_JUDGED_WAIT_RAISE_MS : KS_JUDGED_WAIT_MS) * 1000;

	for (;;)
	{
		int			lockfd;

		while (wait && !server_has_judged(p, secret, secretlen) && ks_cli_now_usec() < deadline)
			pg_usleep(10 * 1000L);
		lockfd = raise ? ks_lock_dir_within(p->state_dir, KS_LOCK_RAISE_FRONTEND_MS, problem, problemlen)
			: ks_lock_dir(p->state_dir, problem, problemlen);
		if (lockfd < 0 || !wait || server_has_judged(p, secret, secretlen))
			return lockfd;
		if (ks_cli_now_usec() >= deadline)
		{
			pg_log_warning("the server has not applied the previous change to the state file yet; writing anyway");
			pg_log_warning_detail("The two changes may be recorded as one event.");
			return lockfd;
		}
		/* another write came first: let the server judge it too */
		ks_unlock_dir(lockfd);
	}
}

/*
 * Is the data directory a standby's (or one set up for point-in-time
 * recovery)?  Its state follows its primary through the WAL; the server
 * would put back whatever this command wrote (ARCHITECTURE §11).
 */
static bool
is_standby(const KsOptions *opt)
{
	char		path[MAXPGPATH];
	struct stat sb;

	if (opt->pgdata == NULL)
		return false;
	snprintf(path, sizeof(path), "%s/standby.signal", opt->pgdata);
	if (stat(path, &sb) == 0)
		return true;
	snprintf(path, sizeof(path), "%s/recovery.signal", opt->pgdata);
	return stat(path, &sb) == 0;
}

/*
 * Read the state file once: its verdict and state, and its bytes (NULL: no
 * file) for the replace to compare with.
 */
static KsVerdict
read_current(const KsPaths *p, const char *secret, size_t secretlen, KsState *cur,
			 char **bytes, size_t *len, char *problem, size_t problemlen)
{
	struct stat sb;

	ks_state_init(cur);
	*bytes = NULL;
	*len = 0;
	if (lstat(p->state_file, &sb) != 0 && errno == ENOENT)
	{
		snprintf(problem, problemlen, "the file does not exist");
		return KS_FILE_MISSING;
	}
	if (!ks_read_file(p->state_file, KS_MAX_FILE_SIZE, bytes, len, problem, problemlen))
		return KS_FILE_BAD;
	return ks_state_from_text(*bytes, *len, secret, secretlen, p->secret_file, true,
							  cur, problem, problemlen);
}

/*
 * Write the new state over the file as read (expect, NULL: none), by the
 * replace that keeps a write it did not expect (files.c).
 */
static bool
write_state(const KsPaths *p, const KsState *next, const char *secret, size_t secretlen,
			const char *release_key, size_t release_keylen,
			const char *expect, size_t expect_len)
{
	StringInfoData text;
	char		problem[KS_PROBLEM_LEN];
	KsReplaceResult r;

	initStringInfo(&text);
	if (!ks_state_file_text(&text, next, secret, secretlen, release_key, release_keylen))
	{
		pg_log_error("could not sign the new state");
		return false;
	}
	r = ks_replace_shared_file(p->state_file, text.data, text.len, expect, expect_len,
							   problem, sizeof(problem));
	if (r == KS_REPLACE_FAILED)
	{
		pg_log_error("could not replace the state file: %s", problem);
		return false;
	}
	if (r == KS_REPLACED_RACED && expect != NULL)
	{
		pg_log_warning("another program wrote the state file while this command replaced it");
		pg_log_warning_detail("Its write is kept beside the file (%s%s*) for the server to judge.",
							  KS_STATE_FILE_NAME, KS_RACED_SUFFIX);
	}
	else if (r == KS_REPLACED_LOST)
		pg_log_warning("another program wrote the state file while this command replaced it, "
					   "and its write could not be kept: %s", problem);
	return true;
}

/*
 * What the new file names as the state it replaces (ARCHITECTURE §3): the
 * state the server holds, which is what it compares a release with — its
 * private copy when the data directory is known (the server writes the file
 * with the same bytes once it has judged it) — else the file as read.
 */
static char *
replaces_of(const KsState *cur, KsVerdict v, const KsState *held, bool held_ok)
{
	if (held_ok && held->signature)
		return held->signature;
	if (v == KS_FILE_VALID)
		return cur->signature;
	return NULL;
}

/* A standby's state follows its primary: no change is written here. */
static int
standby_refused(const KsOptions *opt)
{
	pg_log_error("\"%s\" is a standby's data directory: its state follows its primary", opt->pgdata);
	pg_log_error_hint("Change the kill switch on the primary (killswitch -d), or promote this standby.");
	return KS_EXIT_ERROR;
}

/* engage and disengage: read, check, write the new state under the lock. */
static int
change(const KsOptions *opt, const KsPaths *p, const char *secret, size_t secretlen)
{
	KsState		cur,
				held,
				next;
	KsVerdict	v;
	char		problem[KS_PROBLEM_LEN];
	char		at[40];
	char		key_hex[KS_HEX_DIGEST_LEN + 1];
	int			mode = opt->command == CMD_ENGAGE ? opt->mode : KS_DISENGAGED;
	bool		raise = opt->command == CMD_ENGAGE && !opt->force;
	int64		generation = 0;
	bool		lowers = false;
	bool		held_ok = false;
	char	   *release_key;
	size_t		release_keylen;
	char	   *bytes;
	size_t		len;
	int			lockfd;
	bool		written;

	if (is_standby(opt))
		return standby_refused(opt);
	lockfd = lock_when_judged(opt, p, secret, secretlen, raise, problem, sizeof(problem));
	if (lockfd < 0 && !raise)
	{
		pg_log_error("could not take the writers' lock: %s", problem);
		return KS_EXIT_ERROR;
	}
	if (lockfd < 0)
	{
		/* a halt does not wait on whoever holds the lock */
		pg_log_warning("writing without the writers' lock: %s", problem);
		pg_log_warning_detail("An engage does not wait on another writer; a write it races is kept for the server to judge.");
	}
	v = read_current(p, secret, secretlen, &cur, &bytes, &len, problem, sizeof(problem));
	if (v == KS_FILE_BAD && bytes != NULL)
	{
		/* a writer that rewrites in place may be caught mid-write: once more */
		pg_usleep(50 * 1000L);
		v = read_current(p, secret, secretlen, &cur, &bytes, &len, problem, sizeof(problem));
	}
	/* never --force: a file signed with another secret is tampering to the server */
	if (secret_is_wrong(p, secret, secretlen, true))
	{
		ks_unlock_dir(lockfd);
		return KS_EXIT_ERROR;
	}
	if (v == KS_FILE_BAD && !opt->force && !raise)
	{
		ks_unlock_dir(lockfd);
		pg_log_error("the current state file cannot be trusted: %s", problem);
		pg_log_error_hint("Inspect it first; --force writes over it.");
		return KS_EXIT_TAMPERED;
	}
	if (v == KS_FILE_BAD && raise)
	{
		/* nothing about the file may stop an engage: the bad file stays evidence */
		pg_log_warning("the current state file cannot be trusted: %s", problem);
		pg_log_warning_detail("The engage is written over it; the untrusted file is kept beside it (%s%s*) for the server to judge.",
							  KS_STATE_FILE_NAME, KS_RACED_SUFFIX);
		bytes = NULL;
	}
	if (v == KS_FILE_VALID)
	{
		if (opt->command == CMD_ENGAGE && mode < (int) cur.mode && !opt->force)
		{
			ks_unlock_dir(lockfd);
			pg_log_error("the mode is %s; engaging %s would lower it",
						 ks_mode_sql_names[cur.mode], ks_mode_sql_names[mode]);
			pg_log_error_hint("Lowering is a release: use \"killswitch disengage\", or --force.");
			return KS_EXIT_ERROR;
		}
		generation = Max(cur.generation, 0);
		lowers = mode < (int) cur.mode;
	}
	/* the server's own copy knows its generation, even if the file does not */
	if (p->last_applied[0] &&
		ks_state_read(p->last_applied, secret, secretlen, p->secret_file, true, 0,
					  &held, problem, sizeof(problem)) == KS_FILE_VALID)
	{
		generation = Max(generation, held.generation);
		lowers |= mode < (int) held.mode;
		held_ok = true;
	}
	if (generation >= KS_MAX_GENERATION)
	{
		ks_unlock_dir(lockfd);
		pg_log_error("the generation is at its bound (" INT64_FORMAT "): no change can follow", KS_MAX_GENERATION);
		return KS_EXIT_ERROR;
	}
	if (!ks_cli_release_key_load(p->release_key_file, lowers || opt->command == CMD_DISENGAGE,
								 "a file that lowers the mode", &release_key, &release_keylen))
	{
		ks_unlock_dir(lockfd);
		return KS_EXIT_ERROR;
	}

	ks_state_init(&next);
	ks_format_iso_utc(ks_cli_now_usec(), at, sizeof(at));
	ks_sha256_hex(secret, secretlen, key_hex);
	key_hex[16] = '\0';
	next.mode = (KsMode) mode;
	next.engaged_at = at;
	next.reason = (char *) opt->reason;
	next.triggered_by = (char *) opt->by;
	next.generation = generation + 1;
	next.previous_mode = v == KS_FILE_VALID ? (int) cur.mode : KS_NO_MODE;
	next.affected_tasks = opt->affected;
	next.source = "cli";
	next.key_id = key_hex;
	next.replaces = replaces_of(&cur, v, &held, held_ok);
	written = write_state(p, &next, secret, secretlen, release_key, release_keylen, bytes, len);
	ks_secret_forget(release_key, release_keylen);
	ks_unlock_dir(lockfd);
	if (!written)
		return KS_EXIT_ERROR;
	if (opt->json)				/* the shape "killswitch -d" prints; no event yet */
		printf("{\"event_id\":null,\"generation\":" INT64_FORMAT ",\"mode\":\"%s\",\"release_requested\":false}\n",
			   next.generation, ks_mode_sql_names[mode]);
	else
		printf("%s (generation " INT64_FORMAT ") written to %s\n",
			   ks_mode_sql_names[mode], next.generation, p->state_file);
	return KS_EXIT_OK;
}

/* The offline commands. */
int
ks_cli_offline(const KsOptions *opt)
{
	KsPaths		p;
	char	   *secret = NULL;
	size_t		secretlen = 0;
	char		problem[KS_PROBLEM_LEN];
	int			rc;

	if (opt->command == CMD_HISTORY)
	{
		pg_log_error("history needs a database connection (-d)");
		return KS_EXIT_ERROR;
	}
	resolve_paths(opt, &p);
	if (!ks_secret_load(p.secret_file, false, &secret, &secretlen, problem, sizeof(problem)))
	{
		/* without the secret nothing can be verified, nor written */
		if (opt->require_hmac || opt->command == CMD_ENGAGE || opt->command == CMD_DISENGAGE)
		{
			pg_log_error("could not read the signing secret \"%s\": %s", p.secret_file, problem);
			return KS_EXIT_ERROR;
		}
		secret = NULL;
	}
	if (opt->scope != NULL)
		rc = is_standby(opt) ? standby_refused(opt)
			: ks_cli_offline_scope(opt, p.state_dir, secret, secretlen,
								   p.release_key_file[0] ? p.release_key_file : NULL);
	else if (opt->command == CMD_STATUS || opt->command == CMD_VERIFY)
		rc = show(opt, &p, secret, secretlen);
	else
		rc = change(opt, &p, secret, secretlen);
	ks_secret_forget(secret, secretlen);
	return rc;
}
