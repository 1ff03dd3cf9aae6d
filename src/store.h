/*
 * store.h — the state file kill_switch_state.json: canonical JSON,
 * HMAC-SHA256 signatures, parsing, verification and durable writes.
 *
 * The canonical form is byte for byte what Python prints for
 * json.dumps(obj, separators=(",", ":"), sort_keys=True), so files are
 * shared with the reference Python library (ARCHITECTURE §3).
 *
 * Its implementation (store.c, json.c, canonical.c, files.c, isotime.c) is
 * compiled into the server module and, with -DFRONTEND, into the
 * command-line tool and the test-vector checker: one implementation of the
 * format.  Nothing here calls ereport(); problems come back as a message in
 * a caller's buffer so that each side reports them in its own way (and the
 * postmaster never errors out while starting).
 */
#ifndef KS_STORE_H
#define KS_STORE_H

#include "lib/stringinfo.h"

/* The modes, ordered so that >= means "at least this halted" (ARCHITECTURE §1). */
typedef enum KsMode
{
	KS_DISENGAGED = 0,
	KS_HALT_NONCRITICAL = 1,
	KS_HALT_ALL = 2,
	KS_EMERGENCY = 3
} KsMode;

#define KS_MODE_COUNT 4
#define KS_NO_MODE (-1)

/* Names: lower case for SQL (enum labels), upper case for the file. */
extern const char *const ks_mode_sql_names[KS_MODE_COUNT];
extern const char *const ks_mode_file_names[KS_MODE_COUNT];

#define KS_STATE_FILE_NAME "kill_switch_state.json"
/* The scoped halts in force, beside it (ARCHITECTURE §13; scopefile.c). */
#define KS_SCOPE_FILE_NAME "kill_switch_scopes.json"
#define KS_LOCK_FILE_NAME "kill_switch_state.lock"
/*
 * A write that raced a replace of the state file is kept beside it as
 * kill_switch_state.json.raced.<n> for the watcher to judge (files.c).
 */
#define KS_RACED_SUFFIX ".raced."

/* Anything larger is not a state file (a 64 KiB reason escapes to < 400 KiB). */
#define KS_MAX_FILE_SIZE (1024 * 1024)
/* Longest reason or triggered_by we accept, in bytes. */
#define KS_MAX_TEXT_LEN (64 * 1024)
/* Deepest nesting a state file may have; ours has none. */
#define KS_MAX_JSON_DEPTH 16

#define KS_HEX_DIGEST_LEN 64	/* SHA-256 as lower-case hex */

/*
 * Generations are integers in [0, KS_MAX_GENERATION]: 2^53 - 1, exact in
 * every JSON reader (a double holds it) and far from the bits shared memory
 * packs it into, so nothing computed can wrap.  A file beyond it is bad.  An
 * outside file may move the generation at most KS_GENERATION_STEP_MAX past
 * the state held: more is a verdict (ARCHITECTURE §3).
 */
#define KS_MAX_GENERATION INT64CONST(9007199254740991)
#define KS_GENERATION_STEP_MAX 1000

/* A parsed JSON value, kept whole so that unknown keys are signed too. */
typedef enum KsJsonKind
{
	KSJ_NULL,
	KSJ_BOOL,
	KSJ_INT,
	KSJ_STRING,
	KSJ_OBJECT,
	KSJ_ARRAY
} KsJsonKind;

typedef struct KsJson
{
	KsJsonKind	kind;
	bool		bval;
	int64		ival;
	char	   *str;			/* UTF-8, for KSJ_STRING */
	int			nitems;			/* members of an object or array */
	int			maxitems;
	char	  **keys;			/* object member names, UTF-8 */
	struct KsJson **items;
} KsJson;

/*
 * The state as the file carries it.  Optional keys are "absent" as NULL
 * pointers or -1; absent keys are not written.  reason and triggered_by may
 * be JSON null (NULL here) as the Python library writes before any event.
 */
typedef struct KsState
{
	KsMode		mode;
	char	   *engaged_at;		/* ISO-8601 UTC with microseconds, or NULL */
	char	   *reason;			/* UTF-8 or NULL */
	char	   *triggered_by;	/* UTF-8 or NULL */
	int64		generation;		/* -1: absent */
	int			previous_mode;	/* KS_NO_MODE: absent */
	int64		affected_tasks; /* -1: absent */
	int64		event_id;		/* -1: absent */
	char	   *source;			/* NULL: absent */
	char	   *key_id;			/* NULL: absent */
	/* the signature of the state this one replaces (ARCHITECTURE §3); NULL: absent */
	char	   *replaces;
	bool		tampered;		/* a tamper verdict stands: "tampered": true (absent: false) */
	/* what a read found; ignored when writing (the writer signs afresh) */
	char	   *signature;		/* NULL: absent */
	char	   *release_signature;	/* NULL: absent */
	char	   *release_key_id; /* NULL: absent */
	const KsJson *object;		/* the object as read, every member */
} KsState;

/* What reading a state file found. */
typedef enum KsVerdict
{
	KS_FILE_VALID,				/* parsed; signature verified */
	KS_FILE_UNSIGNED,			/* parsed; not verified (require_hmac off) */
	KS_FILE_MISSING,			/* no file at all */
	KS_FILE_BAD					/* anything else: the halt is assumed */
} KsVerdict;

#define KS_PROBLEM_LEN 256

/* JSON */
extern KsJson *ks_json_parse(const char *text, size_t len,
							 char *problem, size_t problemlen);
extern void ks_json_canonical(StringInfo out, const KsJson *value,
							  const char *skip_key);
extern void ks_json_append_string(StringInfo out, const char *utf8);
extern KsJson *ks_json_object(void);
extern void ks_json_put_string(KsJson *object, const char *key, const char *value);
extern void ks_json_put_int(KsJson *object, const char *key, int64 value);
extern void ks_json_put_bool(KsJson *object, const char *key, bool value);
extern void ks_json_put_value(KsJson *object, const char *key, KsJson *value);
extern void ks_json_sorted_members(const KsJson *object, int *order);
extern const KsJson *ks_json_get(const KsJson *object, const char *key);

/* Digests, as lower-case hex with a terminating NUL (65 bytes). */
extern bool ks_hmac_hex(const char *key, size_t keylen,
						const char *data, size_t datalen, char *hex);
extern bool ks_sha256_hex(const char *data, size_t datalen, char *hex);
extern bool ks_hex_equal(const char *a, const char *b);
extern bool ks_key_id_of(const char *key, size_t keylen, char *id);	/* 17 bytes */

/* What ks_json_sign() computes; a signed object's members point into it. */
typedef struct KsSignatures
{
	char		release_key_id[17];
	char		release_signature[KS_HEX_DIGEST_LEN + 1];
	char		signature[KS_HEX_DIGEST_LEN + 1];
} KsSignatures;

extern bool ks_json_sign(KsJson *obj, const char *secret, size_t secretlen,
						 const char *release_key, size_t release_keylen,
						 KsSignatures *sigs);
extern bool ks_json_take_string(const KsJson *obj, const char *key, char **dst,
								bool nullable);

/* States */
extern void ks_state_init(KsState *state);
extern KsState *ks_state_copy(const KsState *st);
extern bool ks_is_tamper_source(const char *source);
extern int	ks_mode_from_file_name(const char *name);
extern int	ks_mode_from_sql_name(const char *name);
extern bool ks_state_file_text(StringInfo out, const KsState *state,
							   const char *secret, size_t secretlen,
							   const char *release_key, size_t release_keylen);
extern KsVerdict ks_state_from_text(const char *text, size_t len,
									const char *secret, size_t secretlen,
									const char *secret_file,
									bool require_hmac, KsState *state,
									char *problem, size_t problemlen);
extern KsVerdict ks_state_read(const char *path,
							   const char *secret, size_t secretlen,
							   const char *secret_file,
							   bool require_hmac, int settle_ms,
							   KsState *state,
							   char *problem, size_t problemlen);
extern bool ks_state_write(const char *path, const KsState *state,
						   const char *secret, size_t secretlen,
						   const char *release_key, size_t release_keylen,
						   char *problem, size_t problemlen);
extern bool ks_state_release_signed(const KsState *state,
									const char *release_key, size_t release_keylen,
									const char *release_key_file,
									char *problem, size_t problemlen);

/* Time stamps as the file carries them (isotime.c). */
extern void ks_format_iso_utc(int64 unix_usec, char *buf, size_t buflen);
extern bool ks_parse_iso(const char *text, int64 *unix_usec);

/* Files (files.c) */
extern bool ks_read_file(const char *path, size_t maxlen, char **contents,
						 size_t *len, char *problem, size_t problemlen);
extern bool ks_write_file_durably(const char *path, const char *data,
								  size_t len, char *problem, size_t problemlen);
extern void ks_remove_dead_temp_files(const char *dir);
extern mode_t ks_shared_file_mode(const char *path);
extern bool ks_write_shared_file_durably(const char *path, const char *data,
										 size_t len, char *problem, size_t problemlen);
/* What replacing the state file found (ks_replace_shared_file()). */
typedef enum KsReplaceResult
{
	KS_REPLACE_FAILED,			/* nothing replaced */
	KS_REPLACED,				/* replaced what the caller expected */
	KS_REPLACED_RACED,			/* replaced; a write that raced it kept as .raced.<n> */
	KS_REPLACED_LOST			/* replaced; a write that raced it could not be kept */
} KsReplaceResult;
extern KsReplaceResult ks_replace_shared_file(const char *path, const char *data, size_t len,
											  const char *expect, size_t expect_len,
											  char *problem, size_t problemlen);
extern bool ks_secret_load(const char *path, bool create, char **secret,
						   size_t *len, char *problem, size_t problemlen);
extern void ks_secret_forget(char *secret, size_t len);
extern bool ks_retired_secret(const char *secret_file, const char *key_id,
							  char **secret, size_t *len);
extern int	ks_lock_dir(const char *dir, char *problem, size_t problemlen);
/* How long a raise waits for the writers' lock before the file follows later. */
#define KS_LOCK_RAISE_WAIT_MS 50
/* WAL redo waits at most this long for it, per record (persist.c) */
#define KS_LOCK_REDO_WAIT_MS 10
extern int	ks_lock_dir_within(const char *dir, int wait_ms, char *problem, size_t problemlen);
extern void ks_unlock_dir(int fd);

#endif							/* KS_STORE_H */
