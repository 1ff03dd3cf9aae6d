/*
 * wait.c — ks_wait() (ARCHITECTURE §8.1): an agent that cannot LISTEN (behind
 * a transaction pooler, on a standby) waits in one statement for the state to
 * move.  Waiters sleep on the condition variable in KsShared, which every
 * publish broadcasts (state.c); a sleeping waiter costs nothing but its
 * place on the list, so hundreds can wait.
 */
#include "postgres.h"

#include "fmgr.h"
#include "storage/condition_variable.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "scope.h"
#include "state.h"
#include "store.h"

PG_FUNCTION_INFO_V1(ks_wait);

/* pg_stat_activity shows a sleeper's wait as "KillswitchWait" from 17 on */
static uint32 wait_event_ks_wait = 0;

/*
 * How long a waiter woken by a raise still waits for that raise's
 * generation: an engage in autocommit commits within milliseconds, and
 * the caller then sees the new generation as before; one whose event
 * follows (ARCHITECTURE §5.3) or that waits at its commit returns after
 * this, with the same generation.
 */
#define KS_WAIT_RAISE_GRACE_MS 100

/*
 * SQL: wait until the generation differs from the one given, or the mode
 * in force rises above what it was at the call, and return the current
 * generation; at the timeout, return it anyway.  A raise is in force before
 * its generation moves (ARCHITECTURE §5.1): a waiter woken by one waits at
 * most KS_WAIT_RAISE_GRACE_MS more for the generation, then returns — so a
 * return equal to the argument means the timeout or a raise; the mode
 * tells which.  The timeout is an int of milliseconds like
 * statement_timeout: any value from 0 (no wait) to INT_MAX.
 */
Datum
ks_wait(PG_FUNCTION_ARGS)
{
	int64		generation = PG_GETARG_INT64(0);
	int32		timeout_ms = PG_GETARG_INT32(1);
	int64		current;
	uint64		word;
	KsMode		at_call;
	TimestampTz deadline;
	TimestampTz raised_at = 0;

	ks_require_loaded();
	if (generation < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("generation must not be negative"),
				 errhint("Pass the generation you last saw (ks_status()->'generation', or what ks_wait() returned); ks_wait(0, 0) returns the current one.")));
	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must not be negative"),
				 errhint("Give the longest wait in milliseconds, from 0 (return at once) to %d.", PG_INT32_MAX)));

	word = pg_atomic_read_u64(&ks_shared->word);
	current = ks_generation_in_force(word);
	at_call = ks_session_mode();	/* this session's: a scope's raise wakes it too */
	if (current != generation || timeout_ms == 0)
		PG_RETURN_INT64(current);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	/* a test holds a waiter here (injection_wait.spec), after its first look */
	KS_INJECTION_POINT("killswitch-wait-before-list");

	/*
	 * On the list before looking again: a publish after this look finds us
	 * on it, one before it is seen by the look.
	 */
	ConditionVariablePrepareToSleep(&ks_shared->published);
	for (;;)
	{
		long		remaining;

		word = pg_atomic_read_u64(&ks_shared->word);
		current = ks_generation_in_force(word);
		if (current != generation)
			break;
		if (ks_session_mode() > at_call && raised_at == 0)
		{
			/* a raise: in force now; its generation follows, or the grace ends */
			raised_at = GetCurrentTimestamp();
			deadline = Min(deadline, TimestampTzPlusMilliseconds(raised_at, KS_WAIT_RAISE_GRACE_MS));
		}
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		/* checks for interrupts: statement_timeout, cancel, terminate */
		(void) ConditionVariableTimedSleep(&ks_shared->published, remaining,
										   ks_wait_event(&wait_event_ks_wait, "KillswitchWait"));
	}
	ConditionVariableCancelSleep();
	PG_RETURN_INT64(current);
}
