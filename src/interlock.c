/*
 * interlock.c — the line no agent commit crosses (ARCHITECTURE §5.2): once
 * a raise is in force, no agent transaction's commit record follows the
 * raiser's.
 *
 * An agent transaction that holds a transaction id publishes it in its
 * PGPROC's committing slot at XACT_EVENT_PRE_COMMIT, issues a full memory
 * barrier, and only then reads the mode (enforce.c refuses the commit if
 * halted).  A raiser publishes the new word (a spinlock release, then a
 * full barrier here), then reads every committing slot and waits until
 * each agent transaction it saw has either left its slot or is marked
 * committed in the commit log: its commit record is then in the WAL before
 * anything the raiser writes afterwards, its own commit record included.
 * Either the agent sees the halt or the raiser sees the agent (Dekker's
 * pattern).  An agent's COMMIT PREPARED holds the slot the same way, with
 * KS_COMMITTING_PREPARED for the id it does not know yet.  The wait is
 * bounded: past KS_INTERLOCK_WAIT_MS the raise stands and a LOG line names
 * the agent's pid; PostgreSQL's commit work after the check (ON COMMIT
 * DROP) checks again (enforce.c), so a commit stretched past the wait is
 * refused rather than written after the raiser's.
 *
 * Agents pay one store and one barrier per writing commit; everybody else
 * nothing; an idle session holds nothing.
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "utils/timestamp.h"

#include "agents.h"
#include "compat.h"
#include "interlock.h"
#include "scope.h"
#include "state.h"
#include "store.h"

/* How long a raiser waits for the agent commits it saw. */
#define KS_INTERLOCK_WAIT_MS 1000

/*
 * What an agent's COMMIT PREPARED holds its slot with: the commit record it
 * writes is the prepared transaction's, whose id the statement does not
 * know before it runs.  Never the id of a transaction a backend runs.
 */
#define KS_COMMITTING_PREPARED BootstrapTransactionId

/* Does this transaction occupy its committing slot? */
static bool committing = false;

/* Clear this backend's slots when it exits, whatever the way (FATAL included). */
static void
clear_slots(int code, Datum arg)
{
	if (ks_shared == NULL || MyProc == NULL)
		return;
	pg_atomic_write_u32(&ks_shared->slots[ks_my_proc_number()].committing, InvalidTransactionId);
	(void) ks_raising_set(KS_NO_MODE, NULL, NULL);
}

/* Register clear_slots() once per process, before the first use of a slot. */
void
ks_slots_clear_at_exit(void)
{
	static bool registered = false;

	if (registered)
		return;
	before_shmem_exit(clear_slots, (Datum) 0);
	registered = true;
}

/*
 * The mode a commit is checked against (enforce.c, at pre-commit and
 * pre-prepare).  For an agent transaction that holds a transaction id, the
 * id is published first, then a full barrier, then the read: a raiser that
 * published before this read is seen, and one that publishes after it
 * finds the id and waits for the commit record.
 */
KsMode
ks_commit_mode(void)
{
	TransactionId xid;

	if (ks_shared == NULL)
		return KS_DISENGAGED;
	xid = GetTopTransactionIdIfAny();
	if (!TransactionIdIsValid(xid) || MyProc == NULL || !ks_session_is_agent())
		return ks_session_mode();
	ks_slots_clear_at_exit();
	pg_atomic_write_u32(&ks_shared->slots[ks_my_proc_number()].committing, xid);
	committing = true;
	pg_memory_barrier();
	return ks_session_mode();
}

/*
 * The mode an agent's COMMIT PREPARED is checked against (enforce.c).  The
 * statement writes the prepared transaction's commit record: the slot is
 * held from before the read until the statement's own transaction ends, so
 * that a raiser published after the read waits for that record as for any
 * committing agent.
 */
KsMode
ks_commit_prepared_mode(void)
{
	if (ks_shared == NULL || MyProc == NULL)
		return ks_session_mode();
	ks_slots_clear_at_exit();
	pg_atomic_write_u32(&ks_shared->slots[ks_my_proc_number()].committing,
						KS_COMMITTING_PREPARED);
	committing = true;
	pg_memory_barrier();
	return ks_session_mode();
}

/*
 * Is this an agent transaction past its last check at pre-commit, writing
 * its commit?  PostgreSQL's own commit work runs after the check (ON COMMIT
 * DROP, the NOTIFY queue); enforce.c checks again where it can.
 */
bool
ks_in_commit_tail(void)
{
	return committing;
}

/* Transaction callback: the slot empties when the commit (or abort) is done. */
static void
interlock_xact_callback(XactEvent event, void *arg)
{
	if (!committing)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			pg_atomic_write_u32(&ks_shared->slots[ks_my_proc_number()].committing,
								InvalidTransactionId);
			committing = false;
			break;
		default:
			break;
	}
}

/* From _PG_init. */
void
ks_interlock_init(void)
{
	RegisterXactCallback(interlock_xact_callback, NULL);
}

/* An agent transaction a raiser saw committing. */
typedef struct KsSeen
{
	int			procno;
	TransactionId xid;
} KsSeen;

/* Has the transaction seen in a slot left it, or reached the commit log? */
static bool
seen_done(const KsSeen *s)
{
	return pg_atomic_read_u32(&ks_shared->slots[s->procno].committing) != s->xid ||
		(TransactionIdIsNormal(s->xid) && TransactionIdDidCommit(s->xid));
}

/*
 * The raiser's side, right after a raise was published: wait for every
 * agent transaction that was committing (bounded).  Never an error.
 */
void
ks_interlock_wait(void)
{
	KsSeen	   *seen;
	int			nseen = 0;
	int			me = MyProc ? ks_my_proc_number() : -1;
	TimestampTz deadline;

	pg_memory_barrier();
	seen = palloc(sizeof(KsSeen) * ks_shared->nslots);
	for (int i = 0; i < ks_shared->nslots; i++)
	{
		TransactionId xid = pg_atomic_read_u32(&ks_shared->slots[i].committing);

		if (i != me && TransactionIdIsValid(xid))
		{
			seen[nseen].procno = i;
			seen[nseen].xid = xid;
			nseen++;
		}
	}
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KS_INTERLOCK_WAIT_MS);
	while (nseen > 0)
	{
		for (int i = nseen - 1; i >= 0; i--)
			if (seen_done(&seen[i]))
				seen[i] = seen[--nseen];
		if (nseen == 0)
			break;
		if (GetCurrentTimestamp() >= deadline)
		{
			for (int i = 0; i < nseen; i++)
				ereport(LOG,
						(errmsg("agent transaction %u (pid %d) had not committed %d ms after the halt was raised; the halt stands",
								seen[i].xid, ProcGlobal->allProcs[seen[i].procno].pid,
								KS_INTERLOCK_WAIT_MS)));
			break;
		}
		pg_usleep(100L);
	}
	pfree(seen);
}
