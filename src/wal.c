/*
 * wal.c — the committed state in the WAL (ARCHITECTURE §11): a custom
 * resource manager whose records carry the state file's bytes to every
 * standby, through cascading, failover and point-in-time recovery.
 *
 * One record kind, KS_XLOG_STATE, written by a primary after a change has
 * committed (change.c), after the watcher applied a change without its
 * history (watch.c), once when the watcher starts (a crash may have come
 * between a commit and its record), and when a promoted server adopts its
 * history (standby.c).  The record is a notice, not the truth: the truth is
 * killswitch.events, replicated like any table, and a standby's watcher
 * also follows the history if a record was never written.  Redo (in the
 * startup process) applies the record on a standby and during archive
 * recovery; crash recovery of a primary skips it, because the primary's
 * own files are newer than any record it replays.
 *
 * The resource manager id is KS_RMGR_ID, in the range PostgreSQL leaves to
 * extensions (128-255).  A server that replays such a record without the
 * library in shared_preload_libraries stops recovery with PostgreSQL's own
 * error, "resource manager with ID 177 not registered", and the hint to
 * load the module: never silently.  Before PostgreSQL 15 there are no
 * custom resource managers; standbys then follow the history only.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "utils/memutils.h"

#include "compat.h"
#include "standby.h"
#include "state.h"
#include "store.h"
#include "wal.h"

#ifdef KS_HAVE_CUSTOM_RMGR

#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"

/* The record's fixed part; the state file's bytes follow. */
typedef struct KsXlogState
{
	uint8		version;		/* KS_XLOG_VERSION */
	uint8		mode;			/* KsMode, for rm_desc */
	int64		generation;		/* for rm_desc */
} KsXlogState;

#define KS_XLOG_VERSION 1
#define KS_XLOG_STATE 0x00

static void ks_redo(XLogReaderState *record);
static void ks_desc(StringInfo buf, XLogReaderState *record);
static const char *ks_identify(uint8 info);
static void ks_decode(struct LogicalDecodingContext *ctx, struct XLogRecordBuffer *buf);

static RmgrData ks_rmgr = {
	.rm_name = "killswitch",
	.rm_redo = ks_redo,
	.rm_desc = ks_desc,
	.rm_identify = ks_identify,
	.rm_decode = ks_decode,
};

/* Register the resource manager (from _PG_init, while preloading). */
void
ks_wal_register(void)
{
	RegisterCustomRmgr(KS_RMGR_ID, &ks_rmgr);
}

/*
 * Write a state file's bytes to the WAL and flush it, so that the WAL
 * sender streams it now rather than at the WAL writer's next round.  Only
 * on a server that writes WAL; never an error worth more than the change
 * (the caller may be past its commit): a failure to flush is PANIC anyway.
 */
void
ks_wal_log_state(const char *text, size_t len, KsMode mode, int64 generation)
{
	KsXlogState xlrec;
	XLogRecPtr	lsn;

	if (text == NULL || len == 0 || RecoveryInProgress() || !XLogInsertAllowed())
		return;
	memset(&xlrec, 0, sizeof(xlrec));
	xlrec.version = KS_XLOG_VERSION;
	xlrec.mode = (uint8) mode;
	xlrec.generation = generation;
	XLogBeginInsert();
	XLogRegisterData((char *) &xlrec, sizeof(xlrec));
	XLogRegisterData((char *) text, (uint32) len);
	lsn = XLogInsert(KS_RMGR_ID, KS_XLOG_STATE);
	XLogFlush(lsn);
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->state_lsn = lsn;
	SpinLockRelease(&ks_shared->mutex);
}

/*
 * Redo: on a standby, during archive recovery, and in the crash recovery
 * that starts a base backup (from_recovery, standby.c), the record's
 * state is applied.  Crash recovery of a primary replays its own older
 * records: its files already hold what they said, or newer.
 */
static void
ks_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	char	   *data = XLogRecGetData(record);
	size_t		len = XLogRecGetDataLen(record);
	KsXlogState xlrec;

	if (info != KS_XLOG_STATE || len < sizeof(KsXlogState))
		elog(PANIC, "killswitch redo: unknown record (info 0x%02X, %zu bytes)", info, len);
	memcpy(&xlrec, data, sizeof(xlrec));
	if (xlrec.version != KS_XLOG_VERSION)
		elog(PANIC, "killswitch redo: record version %d, this library reads version %d",
			 xlrec.version, KS_XLOG_VERSION);
	if (!ArchiveRecoveryRequested && !ks_shared->from_recovery)
		return;
	ks_standby_apply(data + sizeof(xlrec), len - sizeof(xlrec), record->EndRecPtr);
}

/*
 * rm_desc: what the server shows of a record in error contexts (and
 * pg_walinspect).  Not pg_waldump: PostgreSQL 15's pg_waldump is a
 * frontend program that cannot load an extension's resource manager, and
 * prints our records as "custom177 ... desc: UNKNOWN".
 */
static void
ks_desc(StringInfo buf, XLogReaderState *record)
{
	KsXlogState xlrec;

	if (XLogRecGetDataLen(record) < sizeof(xlrec))
		return;
	memcpy(&xlrec, XLogRecGetData(record), sizeof(xlrec));
	appendStringInfo(buf, "generation " INT64_FORMAT " mode %s", xlrec.generation,
					 xlrec.mode < KS_MODE_COUNT ? ks_mode_sql_names[xlrec.mode] : "?");
}

/*
 * rm_decode: logical decoding has nothing to send.  Without it, decoding
 * would treat the record's xid — a transaction already committed, since
 * the record follows its commit — as one starting again.
 */
static void
ks_decode(struct LogicalDecodingContext *ctx, struct XLogRecordBuffer *buf)
{
}

/* rm_identify: the record kind's name. */
static const char *
ks_identify(uint8 info)
{
	return (info & ~XLR_INFO_MASK) == KS_XLOG_STATE ? "STATE" : NULL;
}

#else							/* !KS_HAVE_CUSTOM_RMGR */

/* Before PostgreSQL 15: nothing to register; standbys follow the history. */
void
ks_wal_register(void)
{
}

/* Before PostgreSQL 15: no record (see the file's header). */
void
ks_wal_log_state(const char *text, size_t len, KsMode mode, int64 generation)
{
}

#endif							/* KS_HAVE_CUSTOM_RMGR */

/*
 * Log the bytes of one of our files (the private copy) as the state, in a
 * memory context of its own (the watcher calls it outside a transaction).
 */
void
ks_wal_log_file(const char *path)
{
	MemoryContext ctx;
	MemoryContext old;
	char	   *text;
	size_t		len;
	char		problem[KS_PROBLEM_LEN];
	KsState		st;

	if (RecoveryInProgress())
		return;
	ctx = AllocSetContextCreate(CurrentMemoryContext, "killswitch announce", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(ctx);
	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &text, &len, problem, sizeof(problem)) ||
		ks_state_from_text(text, len, NULL, 0, NULL, false, &st,
						   problem, sizeof(problem)) == KS_FILE_BAD)
		ereport(LOG,
				(errmsg("could not announce the kill switch state to standbys: %s", problem),
				 errdetail("Standbys follow the history instead.")));
	else
		ks_wal_log_state(text, len, st.mode, st.generation);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(ctx);
}
