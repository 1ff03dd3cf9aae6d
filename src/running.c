/*
 * running.c — built-ins that run across the halt (ARCHITECTURE §8.3).
 *
 * A built-in function never consults the function manager's hook, so a
 * call of one is seen only where it is set up (functions.c).  A statement
 * that set up nextval() before the halt — a SELECT over a million rows, a
 * PL/pgSQL loop whose simple expression was prepared earlier in the
 * transaction, a cursor fetched later — would go on calling it.  So an
 * agent transaction that sets up a denied built-in while disengaged leaves
 * a note in its slot here, and:
 *
 *   - whoever publishes a raise cancels the noted transactions' running
 *     statements at once (SIGINT, as pg_cancel_backend() does: the statement
 *     ends at its next interrupt check; an idle session ignores it), and
 *     says so in the server log.  Where the agent's executor or utility
 *     hook was entered after the note (a SELECT or INSERT that calls
 *     nextval(), a cursor), the cancel is reported as what it is, KS001; a
 *     loop in a function that set the call up after its statement began
 *     ends with the cancel's 57014;
 *   - nothing more of such a transaction runs while halted (KS001 at the
 *     next statement, fetch, call setup or fast-path call): ROLLBACK;
 *   - a statement that catches the cancel (PL/pgSQL's EXCEPTION WHEN
 *     query_canceled, or WHEN OTHERS once it is KS001) is cancelled again:
 *     while halted, every subtransaction that aborts in a cancelled
 *     transaction sets the cancel pending anew, so the handler stops at
 *     its first interrupt check (PL/pgSQL checks before each statement)
 *     instead of calling the built-ins it prepared before the halt; and
 *     one that goes on into another subtransaction without an interrupt
 *     check ends its session (FATAL): otherwise it could loop on.
 *
 * The note is taken before the mode is read again and the raiser reads the
 * notes after publishing, each with a full barrier: either the agent sees
 * the halt at setup or the raiser sees the note.  Nothing on the raiser's
 * side reads a catalog or raises an error (a LOG line at most): it runs in
 * commit callbacks and in WAL redo.
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "compat.h"
#include "enforce.h"
#include "names.h"
#include "running.h"
#include "state.h"
#include "store.h"

/* One per PGPROC: a transaction that set up a denied built-in. */
typedef struct KsRunningSlot
{
	pg_atomic_uint32 noted;		/* 1 while its transaction holds a note */
	pg_atomic_uint32 cancelled; /* a raiser cancelled its statement */
	int			pid;
	char		function[NAMEDATALEN];	/* the built-in, for the log */
} KsRunningSlot;

static KsRunningSlot *slots = NULL;
static int	nslots = 0;

/* This backend's note: the built-in, while the transaction holds one. */
Oid			ks_noted_builtin = InvalidOid;

/* The statement in which a subtransaction aborted after the cancel. */
static TimestampTz aborted_after_cancel = 0;

/* The agent and the built-in, named at the note, for a refusal made without the catalog. */
static char noted_agent[NAMEDATALEN];
static char noted_function[NAMEDATALEN];

/* Reserve the slots (from the shared memory request). */
void
ks_running_shmem_request(void)
{
	RequestAddinShmemSpace(mul_size(ks_proc_slot_count(), sizeof(KsRunningSlot)));
}

/* Create the slots, or attach to them (under AddinShmemInitLock). */
void
ks_running_shmem_startup(void)
{
	bool		found;

	nslots = ks_proc_slot_count();
	slots = ShmemInitStruct("killswitch running built-ins",
							mul_size(nslots, sizeof(KsRunningSlot)), &found);
	if (!found)
	{
		for (int i = 0; i < nslots; i++)
		{
			pg_atomic_init_u32(&slots[i].noted, 0);
			pg_atomic_init_u32(&slots[i].cancelled, 0);
			slots[i].pid = 0;
			slots[i].function[0] = '\0';
		}
	}
}

/* This backend's slot, or NULL (no PGPROC). */
static KsRunningSlot *
my_slot(void)
{
	if (slots == NULL || MyProc == NULL || ks_my_proc_number() >= nslots)
		return NULL;
	return &slots[ks_my_proc_number()];
}

/* Has a raiser cancelled this transaction's statement? */
static bool
cancelled(void)
{
	KsRunningSlot *slot = my_slot();

	return OidIsValid(ks_noted_builtin) && slot != NULL &&
		pg_atomic_read_u32(&slot->cancelled) != 0;
}

/*
 * The name of a built-in, for the log and the refusals.  The last one
 * named is kept across transactions (and forgotten when pg_proc changes),
 * so that an agent that calls the same built-in in every transaction
 * reads the catalog for it once.
 */
static Oid	named_builtin = InvalidOid;
static char named_builtin_name[NAMEDATALEN];

static const char *
builtin_name(Oid fn)
{
	if (fn != named_builtin)
	{
		char	   *name = get_func_name(fn);

		strlcpy(named_builtin_name, name ? name : "?", sizeof(named_builtin_name));
		named_builtin = name ? fn : InvalidOid;
	}
	return named_builtin_name;
}

/* Syscache callback: pg_proc changed, a built-in may have another name. */
static void
builtin_name_inval(Datum arg, int cacheid, uint32 hashvalue)
{
	named_builtin = InvalidOid;
}

/*
 * An agent set up a call of a denied built-in while disengaged: note it for
 * the raiser, then a full barrier before the caller reads the mode again.
 * The barrier is what the guarantee needs: the note is a store and the
 * mode a load after it, which only a full barrier keeps in that order, and
 * the raiser's side is the mirror image (the word stored, a full barrier,
 * the notes loaded) — so either this backend sees the raise or the raiser
 * sees the note.  Once per transaction: a later setup in the same
 * transaction stores nothing, and needs no barrier — its note is there
 * since the first setup's barrier, so a raiser that does not see it was
 * seen by the first read of the mode, and no later read sees an older word.
 */
void
ks_note_running_builtin(Oid fn)
{
	KsRunningSlot *slot;

	if (OidIsValid(ks_noted_builtin))
		return;
	slot = my_slot();
	if (slot == NULL)
		return;
	strlcpy(noted_function, builtin_name(fn), sizeof(noted_function));
	strlcpy(noted_agent, ks_agent_name(), sizeof(noted_agent));
	slot->pid = MyProcPid;
	strlcpy(slot->function, noted_function, sizeof(slot->function));
	pg_atomic_write_u32(&slot->cancelled, 0);
	pg_write_barrier();
	pg_atomic_write_u32(&slot->noted, 1);
	ks_noted_builtin = fn;
	pg_memory_barrier();
}

/* Refuse anything more of a transaction that set up a denied built-in before the halt. */
void
ks_refuse_running_builtin(KsMode mode)
{
	ks_refuse_agent(mode, KS_REFUSED_AFTER_BUILTIN, noted_function);
}

/*
 * A raise was published: cancel the statements of the transactions that
 * set up a denied built-in before it.  Called by every publisher that
 * raises the mode, after the new word is written.
 */
void
ks_cancel_running_builtins(void)
{
	if (slots == NULL || !IsUnderPostmaster)
		return;
	pg_memory_barrier();
	for (int i = 0; i < nslots; i++)
	{
		KsRunningSlot *slot = &slots[i];
		int			pid;

		if (pg_atomic_read_u32(&slot->noted) == 0 ||
			pg_atomic_read_u32(&slot->cancelled) != 0)
			continue;
		pg_read_barrier();
		pid = slot->pid;
		if (pid == MyProcPid || pid <= 0)
			continue;
		pg_atomic_write_u32(&slot->cancelled, 1);
		/* like pg_cancel_backend(): the process group, children included */
#ifdef HAVE_SETSID
		if (kill(-pid, SIGINT) != 0)
#else
		if (kill(pid, SIGINT) != 0)
#endif
			continue;
		ereport(LOG,
				(errmsg("cancelled the statement of agent process %d, which called %s() before the halt",
						pid, slot->function)));
	}
}

/*
 * In the PG_CATCH of an executor or utility hook of a noted transaction
 * (the caller's memory context current): if the error is the halt's
 * cancel, throw it again as the kill switch's refusal — the statement was
 * stopped by the halt, not by a user.  Nothing here reads the catalog (the
 * transaction is failing).  Returns if the error is anything else.
 */
void
ks_rethrow_halt_cancel(void)
{
	KsMode		mode = ks_current_mode();
	ErrorData  *edata;
	char		detail[512];

	if (geterrcode() != ERRCODE_QUERY_CANCELED || !cancelled() || mode == KS_DISENGAGED)
		return;
	edata = CopyErrorData();
	FlushErrorState();
	ks_refusal_detail(detail, sizeof(detail));
	edata->sqlerrcode = ERRCODE_KILLSWITCH_ENGAGED;
	edata->message = psprintf("kill switch engaged (%s): a statement that called %s() before the halt by agent \"%s\" refused",
							  ks_mode_sql_names[mode], noted_function, noted_agent);
	edata->detail = pstrdup(detail);
	edata->hint = psprintf("The halt cancelled it. A member of %s may release the kill switch with ks_disengage().",
						   KS_ROLE_ADMIN);
	ReThrowError(edata);
}

/* The transaction ended: drop this backend's note (from enforce.c's callback). */
void
ks_running_xact_end(void)
{
	KsRunningSlot *slot;

	if (likely(!OidIsValid(ks_noted_builtin)))
		return;
	slot = my_slot();
	if (slot != NULL)
		pg_atomic_write_u32(&slot->noted, 0);
	ks_noted_builtin = InvalidOid;
	aborted_after_cancel = 0;
}

/*
 * A subtransaction of a transaction the halt cancelled aborted: whoever
 * caught the cancel is cancelled again at its next interrupt check.  One
 * SIGINT is one cancel, and PL/pgSQL's EXCEPTION WHEN OTHERS OR
 * query_canceled swallows it; its handler could then go on calling, with no
 * new setup for any hook to see, the built-ins the transaction prepared
 * before the halt (nextval, pg_terminate_backend) — so while halted no
 * handler of a cancelled transaction runs.  Released meanwhile, the
 * statement goes on.  Only flags are set here: the subtransaction is
 * aborting.
 */
static void
cancel_again(void)
{
	if (ks_current_mode() == KS_DISENGAGED)
		return;
	QueryCancelPending = true;
	InterruptPending = true;
}

/*
 * Subtransaction callback: a subtransaction that aborts after the halt's
 * cancel caught it; the cancel is set pending again (cancel_again()).  A
 * statement that then starts another subtransaction all the same went on
 * past it: it ends its session, FATAL cannot be caught.
 */
static void
running_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (likely(!OidIsValid(ks_noted_builtin)))
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB && cancelled())
	{
		aborted_after_cancel = GetCurrentStatementStartTimestamp();
		cancel_again();
	}
	else if (event == SUBXACT_EVENT_START_SUB && aborted_after_cancel != 0 &&
			 aborted_after_cancel == GetCurrentStatementStartTimestamp())
		ereport(FATAL,
				(errcode(ERRCODE_KILLSWITCH_ENGAGED),
				 errmsg("kill switch engaged (%s): agent \"%s\" went on after the halt cancelled its statement",
						ks_mode_sql_names[ks_current_mode()], noted_agent),
				 errdetail("The statement called %s() before the halt and caught the cancel.",
						   noted_function),
				 errhint("A member of %s may release the kill switch with ks_disengage().",
						 KS_ROLE_ADMIN)));
}

/* Register the subtransaction and cache callbacks; from ks_enforce_init(). */
void
ks_running_init(void)
{
	RegisterSubXactCallback(running_subxact_callback, NULL);
	CacheRegisterSyscacheCallback(PROCOID, builtin_name_inval, (Datum) 0);
}
