/*
 * lists.c — the lists every session reads from shared memory, of any
 * length: the critical tasks (each with the roles an administrator granted
 * it to) and, while in emergency, the agent roles whose logins are refused.
 *
 * Each list is one immutable, sorted block in a DSA area that lives in the
 * main shared memory segment (created in place by the postmaster, growing
 * into DSM segments as needed, as the cumulative statistics do), so neither
 * the number of names nor their length has a bound but memory.  A writer
 * builds the new block outside any lock and swaps the pointer in under the
 * exclusive LWLock of the "killswitch" tranche; readers look a name up under
 * the shared lock.  (The spinlock in KsShared guards only copies of the
 * state's plain, fixed-size descriptive fields: nothing that can allocate
 * or fail runs under it.)
 *
 * Keeping the critical list current (tasks.c decides when to build):
 *   - a committing change of killswitch.critical_tasks or task_grants
 *     builds the list before commit and swaps it in at commit, so the next
 *     statement of any session sees it;
 *   - a PREPAREd change registers its transaction id here; from the moment
 *     that transaction is committed (COMMIT PREPARED, from any session)
 *     until the list is rebuilt, readers find the list stale and fail
 *     closed (no exemption), and the watcher rebuilds it;
 *   - the watcher loads it at start and after a crash restart.
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/twophase.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/dsa.h"
#include "utils/memutils.h"

#include "lists.h"

#define KS_LISTS_TRANCHE "killswitch"
/* The in-place part of the area: the default lists fit without a DSM segment. */
#define KS_LISTS_DSA_SIZE (256 * 1024)

/* One name of a list block, and the roles that go with it. */
typedef struct KsListEntry
{
	uint32		name_off;		/* from the block's start, NUL-terminated */
	uint32		nroles;
	uint32		roles_off;		/* Oid[nroles], from the block's start */
} KsListEntry;

/* A list block: entries sorted by name (strcmp), then names and role arrays. */
typedef struct KsListBlock
{
	uint32		n;
	KsListEntry entries[FLEXIBLE_ARRAY_MEMBER];
} KsListBlock;

/* The lists' control in the main shared memory segment. */
typedef struct KsLists
{
	LWLock	   *lock;			/* guards everything below */
	int			dsa_tranche;
	dsa_pointer list[KS_NLISTS];	/* InvalidDsaPointer: empty */
	bool		loaded[KS_NLISTS];	/* false: never built since start */
	uint64		version[KS_NLISTS]; /* +1 at every swap */
	pg_atomic_uint64 refused_claims;	/* ungranted task claims refused */
	int			nprepared;		/* prepared changes of the critical list */
	TransactionId prepared[FLEXIBLE_ARRAY_MEMBER];	/* max_prepared_xacts */
} KsLists;

static KsLists *ks_lists = NULL;
static dsa_area *lists_area = NULL;

/* Size of the control and the area's in-place part. */
static Size
lists_shmem_size(void)
{
	return add_size(MAXALIGN(add_size(offsetof(KsLists, prepared),
									  mul_size(sizeof(TransactionId), Max(max_prepared_xacts, 1)))),
					KS_LISTS_DSA_SIZE);
}

/* Reserve the lists' shared memory and their LWLock (with ks_shmem_request). */
void
ks_lists_shmem_request(void)
{
	RequestAddinShmemSpace(lists_shmem_size());
	RequestNamedLWLockTranche(KS_LISTS_TRANCHE, 1);
}

/* Where the area's in-place part starts. */
static void *
lists_dsa_place(void)
{
	return (char *) ks_lists + MAXALIGN(add_size(offsetof(KsLists, prepared),
												 mul_size(sizeof(TransactionId), Max(max_prepared_xacts, 1))));
}

/*
 * Create the lists' control and area (the postmaster, at start and after a
 * crash restart: every list then starts not loaded), or find them.  Called
 * with AddinShmemInitLock held.  Nothing here can fail in a way that ends
 * the postmaster but running out of shared memory, which PostgreSQL itself
 * reports while starting.
 */
void
ks_lists_shmem_startup(void)
{
	bool		found;

	ks_lists = ShmemInitStruct("killswitch lists", lists_shmem_size(), &found);
	if (!found)
	{
		dsa_area   *area;

		memset(ks_lists, 0, offsetof(KsLists, prepared));
		ks_lists->lock = &(GetNamedLWLockTranche(KS_LISTS_TRANCHE))->lock;
		ks_lists->dsa_tranche = LWLockNewTrancheId();
		for (int i = 0; i < KS_NLISTS; i++)
			ks_lists->list[i] = InvalidDsaPointer;
		pg_atomic_init_u64(&ks_lists->refused_claims, 0);
		area = dsa_create_in_place(lists_dsa_place(), KS_LISTS_DSA_SIZE,
								   ks_lists->dsa_tranche, NULL);
		dsa_pin(area);
		dsa_detach(area);
	}
	LWLockRegisterTranche(ks_lists->dsa_tranche, "killswitch_lists_area");
}

/* This process's view of the area, attached on first use for its lifetime. */
static dsa_area *
lists_dsa(void)
{
	if (lists_area == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		lists_area = dsa_attach_in_place(lists_dsa_place(), NULL);
		dsa_pin_mapping(lists_area);
		MemoryContextSwitchTo(old);
		on_shmem_exit(dsa_on_shmem_exit_release_in_place, PointerGetDatum(lists_dsa_place()));
	}
	return lists_area;
}

/* qsort comparator: items by name. */
static int
item_cmp(const void *a, const void *b)
{
	return strcmp(((const KsListItem *) a)->name, ((const KsListItem *) b)->name);
}

/*
 * Build a list block from items (sorted here; names must be distinct) in
 * the shared area, outside any lock.  When shared memory is exhausted, a
 * clear message at elevel; below ERROR, InvalidDsaPointer is returned (the
 * caller keeps the list it has).  Nothing is published until ks_list_swap().
 */
dsa_pointer
ks_list_build(KsListItem *items, int n, int elevel)
{
	dsa_area   *area = lists_dsa();
	Size		size = offsetof(KsListBlock, entries) + mul_size(sizeof(KsListEntry), n);
	Size		off;
	dsa_pointer dp;
	KsListBlock *block;

	if (n > 1)
		qsort(items, n, sizeof(KsListItem), item_cmp);
	for (int i = 0; i < n; i++)
	{
		size = MAXALIGN(add_size(size, strlen(items[i].name) + 1));
		size = add_size(size, mul_size(sizeof(Oid), items[i].nroles));
	}
	if (size > PG_UINT32_MAX)
	{
		ereport(elevel,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a shared kill switch list of %d names needs %zu bytes, more than 4 GB", n, size)));
		return InvalidDsaPointer;
	}
	dp = dsa_allocate_extended(area, size, DSA_ALLOC_NO_OOM | DSA_ALLOC_HUGE);
	if (!DsaPointerIsValid(dp))
	{
		ereport(elevel,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of shared memory for a kill switch list of %d names (%zu bytes)", n, size),
				 errhint("Free shared memory (dynamic_shared_memory_type, the operating system's limits) and try again.")));
		return InvalidDsaPointer;
	}
	block = dsa_get_address(area, dp);
	block->n = n;
	off = offsetof(KsListBlock, entries) + sizeof(KsListEntry) * n;
	for (int i = 0; i < n; i++)
	{
		size_t		len = strlen(items[i].name) + 1;

		block->entries[i].name_off = (uint32) off;
		memcpy((char *) block + off, items[i].name, len);
		off = MAXALIGN(off + len);
		block->entries[i].nroles = items[i].nroles;
		block->entries[i].roles_off = (uint32) off;
		if (items[i].nroles > 0)
			memcpy((char *) block + off, items[i].roles, sizeof(Oid) * items[i].nroles);
		off += sizeof(Oid) * items[i].nroles;
	}
	return dp;
}

/* Free a block that was built but will not be published. */
void
ks_list_discard(dsa_pointer block)
{
	if (DsaPointerIsValid(block))
		dsa_free(lists_dsa(), block);
}

/* The version of a list, to publish a build only if nobody swapped since. */
uint64
ks_list_version(KsListId which)
{
	uint64		v;

	LWLockAcquire(ks_lists->lock, LW_SHARED);
	v = ks_lists->version[which];
	LWLockRelease(ks_lists->lock);
	return v;
}

/*
 * Put block in place of the list's block, as loaded or not, and return
 * the one it replaces, for the caller to free once it has released the
 * lock (caller holds it exclusively; readers hold it shared, so nobody is
 * reading the old block then).  A new version either way.
 */
static dsa_pointer
replace_block_locked(KsListId which, dsa_pointer block, bool loaded)
{
	dsa_pointer old = ks_lists->list[which];

	ks_lists->list[which] = block;
	ks_lists->loaded[which] = loaded;
	ks_lists->version[which]++;
	return old;
}

/* Where xid is among the registered prepared changes, or -1 (caller holds the lock). */
static int
prepared_index_locked(TransactionId xid)
{
	for (int i = 0; i < ks_lists->nprepared; i++)
		if (TransactionIdEquals(ks_lists->prepared[i], xid))
			return i;
	return -1;
}

/*
 * Publish a built block (InvalidDsaPointer: the empty list) and free the
 * one it replaces.  With expect_version, only if the list is still at that
 * version (else the block is freed and false returned: someone published a
 * newer one meanwhile).  resolved[] are prepared transactions known to be
 * over before the block's snapshot: it includes what they did.
 */
bool
ks_list_swap(KsListId which, dsa_pointer block, const uint64 *expect_version,
			 const TransactionId *resolved, int nresolved)
{
	dsa_pointer old;

	LWLockAcquire(ks_lists->lock, LW_EXCLUSIVE);
	if (expect_version && ks_lists->version[which] != *expect_version)
	{
		LWLockRelease(ks_lists->lock);
		ks_list_discard(block);
		return false;
	}
	old = replace_block_locked(which, block, true);
	for (int r = 0; r < nresolved; r++)
	{
		int			i = prepared_index_locked(resolved[r]);

		if (i >= 0)
			ks_lists->prepared[i] = ks_lists->prepared[--ks_lists->nprepared];
	}
	LWLockRelease(ks_lists->lock);
	ks_list_discard(old);
	return true;
}

/* Forget a list: not loaded again (the extension was dropped). */
void
ks_list_unload(KsListId which)
{
	dsa_pointer old;

	LWLockAcquire(ks_lists->lock, LW_EXCLUSIVE);
	old = replace_block_locked(which, InvalidDsaPointer, false);
	LWLockRelease(ks_lists->lock);
	ks_list_discard(old);
}

/* Is the critical list stale: a prepared change of it committed since it was built? */
static bool
critical_stale_locked(void)
{
	for (int i = 0; i < ks_lists->nprepared; i++)
		if (TransactionIdDidCommit(ks_lists->prepared[i]))
			return true;
	return false;
}

/*
 * Look a name up.  Returns KS_LIST_ABSENT or KS_LIST_PRESENT (and, if
 * roles is given, a palloc'd copy of its roles), or KS_LIST_UNKNOWN when
 * the list cannot be trusted (not loaded since start, or stale): callers
 * fail closed.  Shared lock only; no catalog access (the login check).
 */
KsListAnswer
ks_list_lookup(KsListId which, const char *name, Oid **roles, int *nroles)
{
	KsListAnswer answer = KS_LIST_ABSENT;
	dsa_area   *area = lists_dsa();

	if (roles)
	{
		*roles = NULL;
		*nroles = 0;
	}
	LWLockAcquire(ks_lists->lock, LW_SHARED);
	if (!ks_lists->loaded[which] ||
		(which == KS_LIST_CRITICAL && critical_stale_locked()))
		answer = KS_LIST_UNKNOWN;
	else if (DsaPointerIsValid(ks_lists->list[which]))
	{
		KsListBlock *block = dsa_get_address(area, ks_lists->list[which]);
		int			lo = 0,
					hi = (int) block->n - 1;

		while (lo <= hi)
		{
			int			mid = lo + (hi - lo) / 2;
			KsListEntry *e = &block->entries[mid];
			int			c = strcmp(name, (char *) block + e->name_off);

			if (c == 0)
			{
				answer = KS_LIST_PRESENT;
				if (roles && e->nroles > 0)
				{
					/* an error here releases the LWLock at abort */
					*roles = palloc(sizeof(Oid) * e->nroles);
					memcpy(*roles, (char *) block + e->roles_off, sizeof(Oid) * e->nroles);
					*nroles = (int) e->nroles;
				}
				break;
			}
			if (c < 0)
				hi = mid - 1;
			else
				lo = mid + 1;
		}
	}
	LWLockRelease(ks_lists->lock);
	return answer;
}

/* Has the list been built since start? */
bool
ks_list_loaded(KsListId which)
{
	bool		loaded;

	LWLockAcquire(ks_lists->lock, LW_SHARED);
	loaded = ks_lists->loaded[which];
	LWLockRelease(ks_lists->lock);
	return loaded;
}

/*
 * Register a transaction that PREPAREs a change of the critical list (in
 * its PRE_PREPARE callback, so that failing refuses the PREPARE).  Bounded
 * by max_prepared_transactions, which bounds prepared transactions too;
 * only a watcher that is not running can let it fill.
 */
void
ks_list_register_prepared(TransactionId xid)
{
	bool		full;

	LWLockAcquire(ks_lists->lock, LW_EXCLUSIVE);
	if (prepared_index_locked(xid) >= 0)
	{
		LWLockRelease(ks_lists->lock);
		return;
	}
	full = ks_lists->nprepared >= Max(max_prepared_xacts, 1);
	if (!full)
		ks_lists->prepared[ks_lists->nprepared++] = xid;
	LWLockRelease(ks_lists->lock);
	if (full)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("cannot PREPARE a change of the critical tasks: %d prepared changes wait to be applied",
						max_prepared_xacts),
				 errhint("Is the killswitch watcher running?  Commit or roll back the prepared transactions first.")));
}

/*
 * The prepared changes that are over (committed or rolled back): a list
 * built from a snapshot taken after this call includes them.  Returns a
 * palloc'd array; *nover its length.
 */
TransactionId *
ks_list_prepared_over(int *nover)
{
	TransactionId *over;
	int			n = 0;

	LWLockAcquire(ks_lists->lock, LW_SHARED);
	over = palloc(sizeof(TransactionId) * Max(ks_lists->nprepared, 1));
	for (int i = 0; i < ks_lists->nprepared; i++)
	{
		TransactionId xid = ks_lists->prepared[i];

		if (!TransactionIdIsInProgress(xid))
			over[n++] = xid;
	}
	LWLockRelease(ks_lists->lock);
	*nover = n;
	return over;
}

/* Count a refused claim to a critical task (ks_status() shows it). */
void
ks_count_refused_claim(void)
{
	pg_atomic_fetch_add_u64(&ks_lists->refused_claims, 1);
}

/* How many claims were refused since the server started. */
uint64
ks_refused_claims(void)
{
	return pg_atomic_read_u64(&ks_lists->refused_claims);
}
