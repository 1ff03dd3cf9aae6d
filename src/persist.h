/*
 * persist.h — writing the state file and the private copies from the server
 * (persist.c).
 */
#ifndef KS_PERSIST_H
#define KS_PERSIST_H

#include "lib/stringinfo.h"

#include "names.h"
#include "store.h"

/*
 * The single mark of a change in flight that servers before the marks by
 * transaction (marks.c) kept; removed where found.
 */
#define KS_IN_FLIGHT_FILE KS_PRIVATE_DIR "/in_flight.json"
extern void ks_state_file_path(char *buf, size_t len);
extern bool ks_backend_secret(char **secret, size_t *len, char *problem, size_t problemlen);
extern void ks_key_id(const char *secret, size_t len, char *buf);
/* A readable file against the state held. */
typedef enum KsOrder
{
	KS_OLDER,					/* a replay */
	KS_SAME,					/* what the server holds */
	KS_NEWER					/* a change to judge */
} KsOrder;
extern KsOrder ks_compare_to_held(const KsState *file, const KsState *held);
extern KsVerdict ks_read_private_copy(const char *secret, size_t secretlen, KsState *held,
									  char *problem, size_t problemlen);
extern bool ks_read_held(KsState *held, char *problem, size_t problemlen);
/* What a writer last judged the state file to hold (compare-and-swap). */
typedef struct KsExpect
{
	const KsState *judged;		/* the file as the watcher judged it, or NULL */
	bool		untrusted;		/* a verdict on a missing or untrusted file */
} KsExpect;
/* What a write before commit did, for the undo. */
typedef struct KsWritten
{
	char	   *before;			/* the state file's bytes before, or NULL */
	size_t		before_len;
	char	   *text;			/* what this change wrote */
	size_t		text_len;
	bool		file_written;
} KsWritten;
typedef enum KsWriteResult
{
	KS_WRITE_OK,
	KS_WRITE_CONFLICT,			/* an outside change nobody has judged yet */
	KS_WRITE_FAILED
} KsWriteResult;
/* Which write of the state file (ks_persist_file()). */
typedef enum KsPersistWhen
{
	KS_PERSIST_CHECK,			/* a release before its commit: the compare only */
	KS_PERSIST_RAISE,			/* a raise before its commit: never waits long, never fails it */
	KS_PERSIST_COMMITTED		/* after a commit (a release's): bounded */
} KsPersistWhen;
extern bool ks_persist_text(const KsState *state, StringInfo out, char *problem, size_t problemlen);
extern KsWriteResult ks_persist_file(const char *text, size_t len, const KsExpect *expect,
									 KsPersistWhen when, KsWritten *w,
									 char *problem, size_t problemlen);
extern bool ks_persist_copy(const char *text, size_t len, char *problem, size_t problemlen);
extern bool ks_held_signature(char **signature);
extern bool ks_persist_undo(const KsWritten *w, char *problem, size_t problemlen);
extern bool ks_am_watcher;
extern int	ks_lock_state_dir(int wait_ms, char *problem, size_t problemlen);
extern bool ks_persist_applied(const KsState *state, bool state_file,
							   char *problem, size_t problemlen);

#endif							/* KS_PERSIST_H */
