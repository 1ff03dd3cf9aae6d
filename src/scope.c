/*
 * scope.c — the scoped halts in force (ARCHITECTURE §13): the set of active
 * scopes in shared memory, and the mode in force for a session, which is
 * the fleet's raised by every scope that holds one of its roles.
 *
 * A scope is a role, by OID: it holds that role and every role that is a
 * member of it, directly or through other roles, INHERIT or not
 * (is_member_of_role_nosuper()).  The set is a fixed array under an
 * LWLock of its own tranche: the committed scopes (owner -1) and, beside
 * them, the raises in flight (owner: the raiser's proc number), which are
 * in force at once and go when their transaction ends (scopechange.c), and
 * the committed raises whose event follows (owner -2, by transaction id:
 * raised while the lock ordering changes was busy), which stay in force
 * beside the committed scope until their event is recorded — a release
 * recorded before that event never lowers them.
 * Every change of the set bumps version, and the word's KS_WORD_SCOPES bit
 * says whether the set holds anything, so that while no scope is active a
 * check reads the word and nothing more.
 *
 * A session keeps the scopes' mode for its roles, computed against the
 * set's version, its three roles (current, session, logged in: the roles
 * ks_session_is_agent() counts, so that SET ROLE escapes no scope) and the
 * counter agents.c bumps whenever a role or a membership changes.  Only a
 * change of one of those recomputes it — with catalog access, so only
 * inside a transaction; outside one, a stale answer is replaced by the
 * highest mode of any scope (fail closed).
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "agents.h"
#include "compat.h"
#include "scope.h"
#include "state.h"

#define KS_SCOPES_TRANCHE "killswitch_scopes"
#define KS_SCOPE_SLOTS (KS_MAX_SCOPES + KS_MAX_SCOPE_RAISES)

typedef struct KsScopeSet
{
	LWLock	   *lock;			/* guards everything below but version */
	pg_atomic_uint64 version;	/* +1 at every change of the set, after it */
	int			count;			/* entries in use, committed or in flight */
	int			committed;		/* of which committed */
	int			heard;			/* of which heard ahead of replay (a standby) */
	int			fresh;			/* in flight and fresh: each may become a committed scope */
	bool		overflowed;		/* a committed scope found no slot: every agent at the highest mode */
	uint64		marks_written;	/* +1 at every write of a mark of a scope's raise */
	uint64		marks_settled;	/* marks_written as of the last look that found none left */
	bool		settle_due;		/* a raise made in a committed entry ended uncommitted */
	int64		file_version;	/* the scope file's, as last written or loaded (the writers' lock) */
	pg_atomic_uint64 told;		/* the version of the copy on disk, which the feed tells */
	KsScope		entries[KS_SCOPE_SLOTS];
} KsScopeSet;

static KsScopeSet *ks_scopes = NULL;

/* This session's answer, and what it was computed against. */
static bool cache_valid = false;
static uint64 cached_version;
static uint64 cached_epoch;
static Oid	cached_roles[3];
static KsMode cached_mode;

/* Reserve the set's shared memory and its LWLock (with the shmem request hook). */
void
ks_scopes_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(KsScopeSet)));
	RequestNamedLWLockTranche(KS_SCOPES_TRANCHE, 1);
}

/* Create the set, empty (the postmaster, at start and after a crash restart), or find it. */
void
ks_scopes_shmem_startup(void)
{
	bool		found;

	ks_scopes = ShmemInitStruct("killswitch scopes", sizeof(KsScopeSet), &found);
	if (!found)
	{
		memset(ks_scopes, 0, offsetof(KsScopeSet, entries));
		ks_scopes->lock = &(GetNamedLWLockTranche(KS_SCOPES_TRANCHE))->lock;
		pg_atomic_init_u64(&ks_scopes->version, 0);
		pg_atomic_init_u64(&ks_scopes->told, 0);
	}
}

/*
 * The set's lock — but in the postmaster at start, which has no PGPROC to
 * wait with and nobody to wait for (the scope file's load, scopefile.c).
 */
static void
set_lock(LWLockMode mode)
{
	if (IsUnderPostmaster)
		LWLockAcquire(ks_scopes->lock, mode);
}

static void
set_unlock(void)
{
	if (IsUnderPostmaster)
		LWLockRelease(ks_scopes->lock);
}

/* The entry of role with this owner, or -1.  Lock held. */
static int
find_entry(Oid role, int owner)
{
	for (int i = 0; i < ks_scopes->count; i++)
		if (ks_scopes->entries[i].role == role && ks_scopes->entries[i].owner == owner)
			return i;
	return -1;
}

/* Remove entry i (order does not matter).  Lock held exclusively. */
static void
remove_entry(int i)
{
	if (ks_scopes->entries[i].owner == KS_SCOPE_COMMITTED)
		ks_scopes->committed--;
	else if (ks_scopes->entries[i].owner == KS_SCOPE_HEARD)
		ks_scopes->heard--;
	else if (ks_scopes->entries[i].fresh)
		ks_scopes->fresh--;
	ks_scopes->entries[i] = ks_scopes->entries[--ks_scopes->count];
}

/*
 * After a change of the set, lock still held: the version moves, then the
 * word's bit follows the set (a full barrier between: a committing agent
 * that publishes its transaction id and then reads the version sees this
 * change, or the raiser's interlock that follows sees the agent).
 */
static void
published(void)
{
	bool		active = ks_scopes->count > 0;

	pg_atomic_fetch_add_u64(&ks_scopes->version, 1);
	pg_memory_barrier();
	ks_set_scopes_active(active);
}

/*
 * At this backend's exit (a FATAL error, or a transaction the exit cut
 * short before its callbacks ran): every raise in flight it still owns
 * goes, so that none outlives its transaction and holds a slot for good.
 */
static void
drop_mine_at_exit(int code, Datum arg)
{
	int			me = ks_my_proc_number();
	bool		changed = false;

	LWLockReleaseAll();			/* an error may have left ours held */
	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	for (int i = ks_scopes->count - 1; i >= 0; i--)
	{
		if (ks_scopes->entries[i].owner == me)
		{
			remove_entry(i);
			changed = true;
		}
	}
	if (changed)
		published();
	LWLockRelease(ks_scopes->lock);
}

/*
 * Refuse (the lock released, nothing changed) a new raise in flight beyond
 * the limits.  A fresh one (its role has no committed scope) only while
 * fewer than KS_MAX_SCOPE_RAISES raises are in flight and the committed
 * scopes and the fresh raises in flight, each of which its commit may turn
 * into a scope, stay within KS_MAX_SCOPES; so a commit always keeps its
 * raise in flight's slot.  A raise of an active scope is never refused:
 * with every slot in use it is made in the committed entry
 * (raise_in_place()).  Lock held exclusively.
 */
static void
refuse_beyond_limits(bool fresh)
{
	if ((fresh && ks_scopes->count - ks_scopes->committed >= KS_MAX_SCOPE_RAISES) ||
		ks_scopes->count >= KS_SCOPE_SLOTS)
	{
		LWLockRelease(ks_scopes->lock);
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many raises of scopes in flight"),
				 errdetail("At most %d raises of scopes may be in flight (not yet committed) at once.",
						   KS_MAX_SCOPE_RAISES),
				 errhint("Raise fewer scopes in one transaction, or halt the whole fleet with a scope of NULL.")));
	}
	if (fresh && ks_scopes->committed + ks_scopes->fresh >= KS_MAX_SCOPES)
	{
		LWLockRelease(ks_scopes->lock);
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many active scopes"),
				 errdetail("At most %d scopes may be active, counting the new scopes whose raise is in flight.",
						   KS_MAX_SCOPES),
				 errhint("Release scopes no longer needed, or halt the whole fleet with a scope of NULL.")));
	}
}

/*
 * No slot for a committed scope (a history or scope file with more than
 * fit): never skipped silently — the set is marked overflowed, and while it
 * is every agent session is held at the highest mode of any scope (fail
 * closed: the scopes kept are the highest modes, so that mode is at least
 * the lost scope's).  Lock held exclusively.
 */
static void
overflow(int lost)
{
	ks_scopes->overflowed = true;
	ereport(IsUnderPostmaster ? WARNING : LOG,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg_plural("%d committed scope does not fit in shared memory",
						   "%d committed scopes do not fit in shared memory", lost, lost),
			 errdetail("At most %d scopes may be active.", KS_MAX_SCOPES),
			 errhint("Every agent is held at the highest mode of any scope until the scopes fit; release scopes no longer needed.")));
}

/*
 * A raise of an active scope with no slot free for a raise in flight (every
 * one in use, or KS_MAX_SCOPE_RAISES in flight): made in the committed
 * entry itself, never refused.  An abort cannot take it back there (other
 * raises may share the entry), so its end without a commit leaves the
 * entry to be settled by the chain at the watcher's next look
 * (ks_scope_settle_due()): an extra halt until then, never lower than
 * committed.  Lock held exclusively.
 */
static void
raise_in_place(int i, KsMode mode)
{
	if (mode == KS_EMERGENCY && ks_scopes->entries[i].mode != KS_EMERGENCY)
		ks_scopes->entries[i].emergency_at = GetCurrentTimestamp();
	ks_scopes->entries[i].mode = Max(ks_scopes->entries[i].mode, mode);
	ks_scopes->entries[i].in_place++;
	published();
}

/*
 * Put this backend's raise of a scope in force at once (a raise in
 * flight), at mode or its own higher one.  The caller then waits at the
 * interlock.  An error, with nothing changed, if the set is full for a new
 * scope; true if an active scope's raise was made in its committed entry
 * (raise_in_place(): the caller ends it, ks_scope_end_in_place()).
 */
bool
ks_scope_raise_in_flight(Oid role, KsMode mode)
{
	static bool exit_callback = false;
	int			me = ks_my_proc_number();
	int			i;

	if (!exit_callback)
	{
		before_shmem_exit(drop_mine_at_exit, (Datum) 0);
		exit_callback = true;
	}
	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	i = find_entry(role, me);
	if (i < 0)
	{
		int			committed = find_entry(role, KS_SCOPE_COMMITTED);
		bool		fresh = committed < 0;

		if (!fresh && ks_scopes->count >= KS_SCOPE_SLOTS)
		{
			raise_in_place(committed, mode);
			LWLockRelease(ks_scopes->lock);
			return true;
		}
		refuse_beyond_limits(fresh);
		i = ks_scopes->count++;
		memset(&ks_scopes->entries[i], 0, sizeof(KsScope));
		ks_scopes->entries[i].role = role;
		ks_scopes->entries[i].owner = me;
		ks_scopes->entries[i].mode = KS_DISENGAGED;
		ks_scopes->entries[i].fresh = fresh;
		if (fresh)
			ks_scopes->fresh++;
	}
	if (mode == KS_EMERGENCY && ks_scopes->entries[i].mode != KS_EMERGENCY)
		ks_scopes->entries[i].emergency_at = GetCurrentTimestamp();
	ks_scopes->entries[i].mode = Max(ks_scopes->entries[i].mode, mode);
	published();
	LWLockRelease(ks_scopes->lock);
	return false;
}

/*
 * A raise made in role's committed entry ends: committed (its commit has
 * set the entry from its event, or its event follows), or not — then the
 * entry is to be settled by the chain once no such raise is in flight.
 */
void
ks_scope_end_in_place(Oid role, bool committed)
{
	int			i;

	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	i = find_entry(role, KS_SCOPE_COMMITTED);
	if (i >= 0 && ks_scopes->entries[i].in_place > 0)
		ks_scopes->entries[i].in_place--;
	if (!committed)
		ks_scopes->settle_due = true;
	LWLockRelease(ks_scopes->lock);
}

/*
 * Is the set to be settled by the chain (a raise made in a committed entry
 * ended uncommitted), and none such still in flight?  Cleared: the caller,
 * holding the ordering lock, settles it (ks_scopes_from_history()).
 */
bool
ks_scope_settle_due(void)
{
	bool		due;

	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	due = ks_scopes->settle_due;
	for (int i = 0; i < ks_scopes->count && due; i++)
		due = ks_scopes->entries[i].in_place == 0;
	if (due)
		ks_scopes->settle_due = false;
	LWLockRelease(ks_scopes->lock);
	return due;
}

/*
 * This backend's raise of a scope, set to exactly mode (a savepoint's abort
 * took back a higher one; the rest of the transaction still asks mode).
 */
void
ks_scope_set_in_flight(Oid role, KsMode mode)
{
	int			i;

	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	i = find_entry(role, ks_my_proc_number());
	if (i >= 0 && ks_scopes->entries[i].mode != mode)
	{
		ks_scopes->entries[i].mode = mode;
		published();
	}
	LWLockRelease(ks_scopes->lock);
}

/* This backend's raise of a scope ends (its transaction ended); nothing if none. */
void
ks_scope_drop_in_flight(Oid role)
{
	int			i;

	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	i = find_entry(role, ks_my_proc_number());
	if (i >= 0)
	{
		remove_entry(i);
		published();
	}
	LWLockRelease(ks_scopes->lock);
}

/* The marked entry (a committed raise whose event follows) of role and xid, or -1.  Lock held. */
static int
find_marked(Oid role, uint64 xid)
{
	for (int i = 0; i < ks_scopes->count; i++)
		if (ks_scopes->entries[i].owner == KS_SCOPE_MARKED && ks_scopes->entries[i].xid == xid &&
			(ks_scopes->entries[i].role == role || !OidIsValid(role)))
			return i;
	return -1;
}

/*
 * The slot of a new committed scope of role, or -1: this backend's raise in
 * flight of it, or the marked raise of transaction xid whose event is
 * recorded now, becomes the committed entry (so a commit needs no new
 * slot), else a free slot within KS_MAX_SCOPES (at start, loading the scope
 * file).  Lock held exclusively.
 */
static int
committed_slot(Oid role, uint64 xid)
{
	int			i = IsUnderPostmaster ? find_entry(role, ks_my_proc_number()) : -1;

	if (i < 0 && xid != 0)
		i = find_marked(role, xid);

	if (i >= 0)
	{
		if (ks_scopes->entries[i].fresh)
			ks_scopes->fresh--;
		ks_scopes->entries[i].fresh = false;
	}
	else if (ks_scopes->count < KS_SCOPE_SLOTS)
	{
		i = ks_scopes->count++;
		memset(&ks_scopes->entries[i], 0, sizeof(KsScope));
		ks_scopes->entries[i].role = role;
	}
	else
		return -1;
	ks_scopes->entries[i].owner = KS_SCOPE_COMMITTED;
	ks_scopes->entries[i].xid = 0;
	ks_scopes->committed++;
	return i;
}

/*
 * A scope's committed state: mode and generation of its newest event
 * (disengaged: the scope ends).  Never fails: at commit, and at start.
 * A new scope takes over the raise in flight that preceded it; one that
 * finds no slot (at start) overflows the set, fail closed.
 */
void
ks_scope_set_committed(Oid role, KsMode mode, int64 generation, TimestampTz since)
{
	ks_scope_settle_marked(role, 0, mode, generation, since);
}

/*
 * The event of transaction xid's committed raise of role is recorded
 * (committed): the scope's committed state becomes that of its newest event,
 * and the marked entry goes, in one step — never lower meanwhile.  (xid 0:
 * no marked entry; ks_scope_set_committed().)
 */
void
ks_scope_settle_marked(Oid role, uint64 xid, KsMode mode, int64 generation, TimestampTz since)
{
	int			i;
	int			marked;
	TimestampTz emergency_at = 0;

	set_lock(LW_EXCLUSIVE);
	i = find_entry(role, -1);
	if (mode == KS_EMERGENCY && (i < 0 || ks_scopes->entries[i].mode != KS_EMERGENCY))
	{
		/* in emergency since its raise in flight was, or from now */
		int			mine = IsUnderPostmaster ? find_entry(role, ks_my_proc_number()) : -1;

		emergency_at = mine >= 0 && ks_scopes->entries[mine].mode == KS_EMERGENCY
			? ks_scopes->entries[mine].emergency_at : GetCurrentTimestamp();
	}
	else if (i >= 0)
		emergency_at = ks_scopes->entries[i].emergency_at;
	if (mode == KS_DISENGAGED && i >= 0 && ks_scopes->entries[i].in_place > 0)
		ks_scopes->settle_due = true;	/* raised in place meanwhile: kept, settled once they end */
	else if (mode == KS_DISENGAGED)
	{
		if (i >= 0)
			remove_entry(i);
	}
	else
	{
		if (i < 0)
			i = committed_slot(role, xid);
		if (i < 0)
			overflow(1);
		else
		{
			/* raises made in it and still in flight keep their mode */
			ks_scopes->entries[i].mode = ks_scopes->entries[i].in_place > 0
				? Max(ks_scopes->entries[i].mode, mode) : mode;
			ks_scopes->entries[i].generation = generation;
			ks_scopes->entries[i].since = since;
			ks_scopes->entries[i].emergency_at = emergency_at;
		}
	}
	if (xid != 0 && (marked = find_marked(role, xid)) >= 0)
		remove_entry(marked);
	published();
	set_unlock();
}

/*
 * This backend's raise in flight of role becomes transaction xid's marked
 * raise (before its commit record: its mark is written): it stays in force
 * after the commit until its event is recorded, and goes at an abort
 * (ks_scope_drop_marked()).  It keeps its slot and counts as in flight.
 */
void
ks_scope_mark_in_flight(Oid role, uint64 xid)
{
	int			i;

	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	i = find_entry(role, ks_my_proc_number());
	if (i >= 0)
	{
		ks_scopes->entries[i].owner = KS_SCOPE_MARKED;
		ks_scopes->entries[i].xid = xid;
		published();
	}
	LWLockRelease(ks_scopes->lock);
}

/* Transaction xid's marked raise of role (InvalidOid: every one) goes: it never committed. */
void
ks_scope_drop_marked(Oid role, uint64 xid)
{
	int			i;
	bool		changed = false;

	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	while ((i = find_marked(role, xid)) >= 0)
	{
		remove_entry(i);
		changed = true;
	}
	if (changed)
		published();
	LWLockRelease(ks_scopes->lock);
}

/* A mark of a scope's raise was written (its event may follow its commit). */
void
ks_scope_marks_written(void)
{
	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	ks_scopes->marks_written++;
	LWLockRelease(ks_scopes->lock);
}

/*
 * May a mark of a scope's raise wait to be recorded?  *seen: what to pass
 * to ks_scope_marks_settled() if the look that follows leaves none.
 */
bool
ks_scope_marks_due(uint64 *seen)
{
	bool		due;

	LWLockAcquire(ks_scopes->lock, LW_SHARED);
	*seen = ks_scopes->marks_written;
	due = ks_scopes->marks_written != ks_scopes->marks_settled;
	LWLockRelease(ks_scopes->lock);
	return due;
}

/*
 * A look found no mark left to record (every one written up to seen): none
 * is due until the next write.  A look that fails half-way never gets here.
 */
void
ks_scope_marks_settled(uint64 seen)
{
	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	ks_scopes->marks_settled = Max(ks_scopes->marks_settled, seen);
	LWLockRelease(ks_scopes->lock);
}

/* Which entries a copy of the set takes. */
typedef enum ScopeCopy
{
	SCOPE_COPY_ALL,				/* raises in flight included */
	SCOPE_COPY_COMMITTED,		/* owner KS_SCOPE_COMMITTED */
	SCOPE_COPY_IN_FORCE,		/* committed or heard */
	SCOPE_COPY_EMERGENCY		/* committed or raised */
} ScopeCopy;

/* Copy the entries of the set that which takes into out (room for all); returns how many.  Lock held. */
static int
copy_entries_locked(ScopeCopy which, KsScope *out)
{
	int			n = 0;

	for (int i = 0; i < ks_scopes->count; i++)
	{
		const KsScope *e = &ks_scopes->entries[i];

		if (which == SCOPE_COPY_ALL ||
			(which == SCOPE_COPY_COMMITTED && e->owner == KS_SCOPE_COMMITTED) ||
			(which == SCOPE_COPY_IN_FORCE &&
			 (e->owner == KS_SCOPE_COMMITTED || e->owner == KS_SCOPE_HEARD)) ||
			(which == SCOPE_COPY_EMERGENCY && e->mode == KS_EMERGENCY))
			out[n++] = *e;
	}
	return n;
}

/* A copy (palloc'd) of the entries that which takes, made under the shared lock; *count its length. */
static KsScope *
copy_entries(ScopeCopy which, int *count)
{
	KsScope    *out;

	LWLockAcquire(ks_scopes->lock, LW_SHARED);
	out = palloc(sizeof(KsScope) * Max(ks_scopes->count, 1));
	*count = copy_entries_locked(which, out);
	LWLockRelease(ks_scopes->lock);
	return out;
}

static int
by_role(const void *a, const void *b)
{
	Oid			ra = ((const KsScope *) a)->role;
	Oid			rb = ((const KsScope *) b)->role;

	return ra < rb ? -1 : ra > rb ? 1 : 0;
}

static int
by_mode_down(const void *a, const void *b)
{
	KsMode		ma = ((const KsScope *) a)->mode;
	KsMode		mb = ((const KsScope *) b)->mode;

	return ma > mb ? -1 : ma < mb ? 1 : 0;
}

/* Do the committed scopes hold exactly these (sorted by role, none disengaged)?  Lock held. */
static bool
committed_are(const KsScope *list, int n)
{
	KsScope    *mine;
	int			k;
	bool		same;

	if (n != ks_scopes->committed)
		return false;
	for (int i = 0; i < ks_scopes->count; i++)
		if (ks_scopes->entries[i].in_place > 0)
			return false;		/* its mode is not the chain's: replaced, and kept */
	mine = palloc(sizeof(KsScope) * Max(ks_scopes->count, 1));
	k = copy_entries_locked(SCOPE_COPY_COMMITTED, mine);
	qsort(mine, k, sizeof(KsScope), by_role);
	same = true;
	for (int i = 0; i < n && same; i++)
		same = mine[i].role == list[i].role && mine[i].mode == list[i].mode &&
			mine[i].generation == list[i].generation;
	pfree(mine);
	return same;
}

/*
 * After the committed scopes were replaced: the raises made in committed
 * entries and still in flight stay in force, at least at their mode, in the
 * scope's new entry (or its old one, if the chain has none).  Lock held
 * exclusively.
 */
static void
keep_in_place(const KsScope *raised, int n)
{
	for (int r = 0; r < n; r++)
	{
		int			i = find_entry(raised[r].role, KS_SCOPE_COMMITTED);

		if (i < 0 && ks_scopes->count < KS_SCOPE_SLOTS)
		{
			i = ks_scopes->count++;
			ks_scopes->entries[i] = raised[r];
			ks_scopes->committed++;
			continue;
		}
		if (i < 0)
		{
			overflow(1);
			continue;
		}
		ks_scopes->entries[i].mode = Max(ks_scopes->entries[i].mode, raised[r].mode);
		ks_scopes->entries[i].in_place = raised[r].in_place;
	}
}

/*
 * The committed scopes become exactly these (the chain's: scopechange.c),
 * the raises in flight staying; false if they already were.
 */
bool
ks_scope_replace_committed(const KsScope *list, int n)
{
	KsScope    *active = palloc(sizeof(KsScope) * Max(n, 1));
	KsScope    *raised;
	int			nraised = 0;
	int			k = 0;
	int			room;

	for (int i = 0; i < n; i++)
		if (list[i].mode != KS_DISENGAGED)
			active[k++] = list[i];
	qsort(active, k, sizeof(KsScope), by_role);
	list = active;
	n = k;
	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	if (committed_are(list, n))
	{
		LWLockRelease(ks_scopes->lock);
		return false;
	}
	raised = palloc(sizeof(KsScope) * Max(ks_scopes->count, 1));
	for (int i = ks_scopes->count - 1; i >= 0; i--)
	{
		if (ks_scopes->entries[i].owner != KS_SCOPE_COMMITTED)
			continue;
		if (ks_scopes->entries[i].in_place > 0)
			raised[nraised++] = ks_scopes->entries[i];
		remove_entry(i);
	}
	/*
	 * More than fit: the highest modes are kept, and the set overflows (fail
	 * closed).  What fits is KS_MAX_SCOPES, less what a standby's heard scopes
	 * hold of the slots.
	 */
	room = Min(KS_MAX_SCOPES, KS_SCOPE_SLOTS - ks_scopes->count);
	if (n > room)
		qsort(active, n, sizeof(KsScope), by_mode_down);
	ks_scopes->overflowed = false;
	for (int i = 0; i < Min(n, room); i++)
	{
		ks_scopes->entries[ks_scopes->count] = list[i];
		ks_scopes->entries[ks_scopes->count].owner = KS_SCOPE_COMMITTED;
		ks_scopes->entries[ks_scopes->count].xid = 0;
		ks_scopes->entries[ks_scopes->count].fresh = false;
		ks_scopes->entries[ks_scopes->count].emergency_at = list[i].since;
		ks_scopes->count++;
		ks_scopes->committed++;
	}
	if (n > room)
		overflow(n - room);
	keep_in_place(raised, nraised);
	published();
	LWLockRelease(ks_scopes->lock);
	return true;
}

/* Every scope in force, raises in flight and marked ones included, for the scope file. */
KsScope *
ks_scope_list_all(int *count)
{
	return copy_entries(SCOPE_COPY_ALL, count);
}

/* The next version of the scope file (its writer holds the writers' lock). */
int64
ks_scope_file_version_next(void)
{
	int64		v;

	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	v = ++ks_scopes->file_version;
	LWLockRelease(ks_scopes->lock);
	return v;
}

/* The version loaded at start (the postmaster): the copy on disk holds it. */
void
ks_scope_file_version_set(int64 version)
{
	ks_scopes->file_version = version;
	pg_atomic_write_u64(&ks_scopes->told, (uint64) version);
}

/*
 * The copy on disk now holds this version (its writer, under the writers'
 * lock): what the feed tells, and waits past (feed.c).
 */
void
ks_scope_file_version_written(int64 version)
{
	pg_atomic_write_u64(&ks_scopes->told, (uint64) version);
}

/* The version of the copy on disk. */
int64
ks_scope_file_version_told(void)
{
	return (int64) pg_atomic_read_u64(&ks_scopes->told);
}

/*
 * The committed state of a scope (false: not active), and the mode in
 * force for it counting every raise in flight.
 */
bool
ks_scope_lookup(Oid role, KsScope *committed, KsMode *in_force)
{
	int			i;
	KsMode		mode = KS_DISENGAGED;

	LWLockAcquire(ks_scopes->lock, LW_SHARED);
	i = find_entry(role, -1);
	if (i >= 0 && committed)
		*committed = ks_scopes->entries[i];
	for (int j = 0; j < ks_scopes->count; j++)
		if (ks_scopes->entries[j].role == role)
			mode = Max(mode, ks_scopes->entries[j].mode);
	LWLockRelease(ks_scopes->lock);
	if (in_force)
		*in_force = mode;
	return i >= 0;
}

/*
 * The scopes in force, one per role (palloc'd), for ks_scopes(): the
 * committed ones and, on a standby, those heard ahead of replay — a role's
 * highest.
 */
KsScope *
ks_scope_list(int *count)
{
	KsScope    *list = copy_entries(SCOPE_COPY_IN_FORCE, count);
	int			n = 0;

	qsort(list, *count, sizeof(KsScope), by_role);
	for (int i = 0; i < *count; i++)
	{
		if (n > 0 && list[n - 1].role == list[i].role)
		{
			if (list[i].mode > list[n - 1].mode)
				list[n - 1] = list[i];
			continue;
		}
		list[n++] = list[i];
	}
	*count = n;
	return list;
}

/* The set's version: it moves at every change (for the watcher's NOTIFY, notify.c). */
uint64
ks_scope_version(void)
{
	return pg_atomic_read_u64(&ks_scopes->version);
}

/* The scopes in emergency, committed or raised (palloc'd), for the watcher (emergency.c). */
KsScope *
ks_scopes_in_emergency(int *count)
{
	return copy_entries(SCOPE_COPY_EMERGENCY, count);
}

/* Is the set overflowed: a committed scope found no slot (every agent at the highest mode)? */
bool
ks_scope_overflowed(void)
{
	bool		overflowed;

	LWLockAcquire(ks_scopes->lock, LW_SHARED);
	overflowed = ks_scopes->overflowed;
	LWLockRelease(ks_scopes->lock);
	return overflowed;
}

/* How many scopes are active (committed). */
int
ks_scope_count(void)
{
	int			n;

	LWLockAcquire(ks_scopes->lock, LW_SHARED);
	n = ks_scopes->committed;
	LWLockRelease(ks_scopes->lock);
	return n;
}

/*
 * The highest mode of the scopes that hold one of roles (n of them,
 * distinct), from a copy of the set made under the shared lock: the
 * catalog lookups run without it.  For each role in turn, so that
 * is_member_of_role_nosuper()'s cache of that role's memberships serves
 * every scope.
 */
static KsMode
scopes_mode_for(const Oid *roles, int n)
{
	static KsScope *copy = NULL;
	int			count;
	bool		overflowed;
	KsMode		mode = KS_DISENGAGED;

	if (copy == NULL)
		copy = MemoryContextAlloc(TopMemoryContext, sizeof(KsScope) * KS_SCOPE_SLOTS);
	LWLockAcquire(ks_scopes->lock, LW_SHARED);
	count = ks_scopes->count;
	memcpy(copy, ks_scopes->entries, sizeof(KsScope) * count);
	overflowed = ks_scopes->overflowed;
	LWLockRelease(ks_scopes->lock);
	if (overflowed)				/* a scope is missing: whatever holds the session, fail closed */
		for (int i = 0; i < count; i++)
			mode = Max(mode, copy[i].mode);
	for (int r = 0; r < n; r++)
		for (int i = 0; i < count; i++)
			if (copy[i].mode > mode && is_member_of_role_nosuper(roles[r], copy[i].role))
				mode = copy[i].mode;
	return mode;
}

/*
 * The detail of a refusal at a mode above the fleet's: a scope holds the
 * session (false: the fleet's mode is the refusal's, its own detail says it).
 */
bool
ks_scope_refusal_detail(KsMode mode, char *buf, size_t len)
{
	if (mode <= ks_current_mode())
		return false;
	strlcpy(buf, "A scoped halt holds this session's role (see ks_scopes()).", len);
	return true;
}

/* The highest mode of any scope: the answer when the session's cannot be computed. */
static KsMode
scopes_highest(void)
{
	KsMode		mode = KS_DISENGAGED;

	LWLockAcquire(ks_scopes->lock, LW_SHARED);
	for (int i = 0; i < ks_scopes->count; i++)
		mode = Max(mode, ks_scopes->entries[i].mode);
	LWLockRelease(ks_scopes->lock);
	return mode;
}

/*
 * The session's mode while some scope is active (ks_session_mode()): the
 * fleet's, raised by the scopes that hold the session's roles.  O(1) while
 * nothing it depends on changed.
 */
KsMode
ks_scope_session_mode(KsMode fleet)
{
	Oid			roles[3];
	int			n = 0;
	uint64		version;
	uint64		epoch;
	Oid			user;
	Oid			session;
	Oid			login;
	int			sec_context;

	/*
	 * A process with no user (the autovacuum launcher commits transactions
	 * of its own) has no role a scope could hold; GetUserId() would assert.
	 */
	GetUserIdAndSecContext(&user, &sec_context);
	if (!OidIsValid(user))
		return fleet;
	session = GetSessionUserId();
	login = GetAuthenticatedUserId();

	/* read before the lookups: a change during them makes the next call look again */
	version = pg_atomic_read_u64(&ks_scopes->version);
	pg_read_barrier();
	epoch = ks_agent_roles_epoch;
	if (cache_valid && version == cached_version && epoch == cached_epoch &&
		user == cached_roles[0] && session == cached_roles[1] && login == cached_roles[2])
		return Max(fleet, cached_mode);
	if (!IsTransactionState())
		return Max(fleet, scopes_highest());	/* no catalog here: fail closed */

	roles[n++] = user;
	if (session != user)
		roles[n++] = session;
	if (OidIsValid(login) && login != user && login != session)
		roles[n++] = login;
	cached_mode = scopes_mode_for(roles, n);
	cached_version = version;
	cached_epoch = epoch;
	cached_roles[0] = user;
	cached_roles[1] = session;
	cached_roles[2] = login;
	cache_valid = true;
	return Max(fleet, cached_mode);
}

/*
 * A standby takes the scopes its upstream tells (committed there, verified:
 * upstream.c) into its heard overlay, beside what replay brought
 * (ARCHITECTURE §13 "Standbys"): each scope told at a generation past the
 * one replayed for it — raising is unconditional.  A heard entry keeps the
 * highest mode heard and the newest generation; a scope the upstream no
 * longer tells (released there) stays: only replay lowers.  A generation
 * below the one heard for a scope is another history (a failover): that
 * scope's heard entry ends, and what is told is weighed against replay
 * alone.  True if the set changed.  Never an error: a scope that finds no
 * slot overflows the set (fail closed).  O((n + the set) log n), under the
 * lock once: 10,000 scopes told cost no 10,000 searches of the set.
 */
bool
ks_scope_take_heard(const KsScope *list, int n)
{
	KsScope    *told = palloc(sizeof(KsScope) * Max(n, 1));
	int64	   *replayed = palloc0(sizeof(int64) * Max(n, 1));
	int		   *heard = palloc(sizeof(int) * Max(n, 1));
	bool		changed = false;

	/* sorted, so that each entry of the set finds its scope told in O(log n) */
	if (n > 0)
		memcpy(told, list, sizeof(KsScope) * n);
	qsort(told, n, sizeof(KsScope), by_role);
	for (int k = 0; k < n; k++)
		heard[k] = -1;
	set_lock(LW_EXCLUSIVE);		/* the postmaster too, loading the copy at start */
	for (int i = 0; i < ks_scopes->count; i++)
	{
		const KsScope *e = &ks_scopes->entries[i];
		const KsScope *t;

		if (e->owner != KS_SCOPE_COMMITTED && e->owner != KS_SCOPE_HEARD)
			continue;
		t = bsearch(e, told, n, sizeof(KsScope), by_role);
		if (t == NULL)
			continue;
		if (e->owner == KS_SCOPE_COMMITTED)
			replayed[t - told] = e->generation;
		else
			heard[t - told] = i;
	}
	/* entries are only appended below: the indices found stay good */
	for (int k = 0; k < n; k++)
	{
		int			h = heard[k];
		KsScope    *e;

		if (told[k].mode == KS_DISENGAGED)
			continue;
		if (h >= 0 && told[k].generation < ks_scopes->entries[h].generation)
		{
			/* another history: this heard entry ends (removed below), replay decides */
			ks_scopes->entries[h].mode = KS_DISENGAGED;
			ks_scopes->entries[h].generation = 0;
			changed = true;
		}
		if (told[k].generation <= replayed[k])
			continue;			/* replay brought it, or newer */
		if (h < 0)
		{
			if (ks_scopes->count >= KS_SCOPE_SLOTS)
			{
				overflow(1);
				changed = true;
				continue;
			}
			h = ks_scopes->count++;
			memset(&ks_scopes->entries[h], 0, sizeof(KsScope));
			ks_scopes->entries[h].role = told[k].role;
			ks_scopes->entries[h].owner = KS_SCOPE_HEARD;
			ks_scopes->entries[h].mode = KS_DISENGAGED;
			ks_scopes->heard++;
		}
		e = &ks_scopes->entries[h];
		if (told[k].mode <= e->mode && told[k].generation <= e->generation)
			continue;
		if (told[k].mode == KS_EMERGENCY && e->mode != KS_EMERGENCY)
			e->emergency_at = GetCurrentTimestamp();
		if (told[k].mode > e->mode)
		{
			e->mode = told[k].mode;
			e->since = told[k].since;
		}
		e->generation = Max(e->generation, told[k].generation);
		changed = true;
	}
	for (int i = ks_scopes->count - 1; i >= 0; i--)
		if (ks_scopes->entries[i].owner == KS_SCOPE_HEARD &&
			ks_scopes->entries[i].mode == KS_DISENGAGED)
			remove_entry(i);
	if (changed)
		published();
	set_unlock();
	pfree(told);
	pfree(replayed);
	pfree(heard);
	return changed;
}

/* The chain's entry of role in chain (sorted by role), or NULL. */
static const KsScope *
chain_entry(const KsScope *chain, int n, Oid role)
{
	KsScope		key;

	key.role = role;
	return bsearch(&key, chain, n, sizeof(KsScope), by_role);
}

/*
 * The heard scopes end that the history settles (ARCHITECTURE §13
 * "Standbys"): each one whose scope's newest event in the chain (chain: n
 * of them, in any order, releases included) is at or past its heard
 * generation — or every one (all: recovery has ended, or the upstream is on
 * another timeline), the history deciding.  The caller has set the
 * committed scopes to the chain's first, so nothing shows less than either.
 * True if the set changed.
 */
bool
ks_scope_end_heard(const KsScope *chain, int n, bool all)
{
	bool		changed = false;
	KsScope    *sorted = palloc(sizeof(KsScope) * Max(n, 1));

	if (n > 0)
		memcpy(sorted, chain, sizeof(KsScope) * n);
	qsort(sorted, n, sizeof(KsScope), by_role);
	chain = sorted;
	LWLockAcquire(ks_scopes->lock, LW_EXCLUSIVE);
	for (int i = ks_scopes->count - 1; i >= 0; i--)
	{
		const KsScope *e = &ks_scopes->entries[i];
		const KsScope *c;

		if (e->owner != KS_SCOPE_HEARD)
			continue;
		c = all ? NULL : chain_entry(chain, n, e->role);
		if (all || (c != NULL && c->generation >= e->generation))
		{
			remove_entry(i);
			changed = true;
		}
	}
	if (changed)
		published();
	LWLockRelease(ks_scopes->lock);
	pfree(sorted);
	return changed;
}

/* How many scopes are heard ahead of replay (a standby). */
int
ks_scope_heard_count(void)
{
	int			n;

	LWLockAcquire(ks_scopes->lock, LW_SHARED);
	n = ks_scopes->heard;
	LWLockRelease(ks_scopes->lock);
	return n;
}
