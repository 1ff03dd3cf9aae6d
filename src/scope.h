/*
 * scope.h — the scoped halts in force and a session's effective mode
 * (scope.c, ARCHITECTURE §13).
 */
#ifndef KS_SCOPE_H
#define KS_SCOPE_H

#include "datatype/timestamp.h"

#include "state.h"
#include "store.h"

/* How many scopes may be active at once (committed; raises in flight come beside them). */
#define KS_MAX_SCOPES 10000
/* Raises of scopes in flight (not yet committed), over every backend. */
#define KS_MAX_SCOPE_RAISES 1000

/*
 * Whose an entry is: a raise in flight's owner is its raiser's proc number
 * (>= 0); a committed scope's is KS_SCOPE_COMMITTED; a committed raise
 * whose event follows (its mark) KS_SCOPE_MARKED; on a standby, a scope
 * heard from its upstream ahead of replay is KS_SCOPE_HEARD (§13 "Standbys").
 */
#define KS_SCOPE_COMMITTED (-1)
#define KS_SCOPE_HEARD (-2)
#define KS_SCOPE_MARKED (-3)

/* One scope: committed, heard, a committed raise whose event follows, or a raise in flight of backend owner. */
typedef struct KsScope
{
	Oid			role;			/* the scope: this role and every member of it */
	KsMode		mode;
	int			owner;			/* KS_SCOPE_COMMITTED, _HEARD, _MARKED, else the raiser's proc number */
	uint64		xid;			/* marked: the raise's transaction (its mark's name) */
	int			in_place;		/* committed: raises in flight made in this entry (no slot was free) */
	bool		fresh;			/* in flight: raised while its role had no committed entry */
	int64		generation;		/* committed: the scope's own generation line */
	TimestampTz since;			/* committed: when its mode was set */
	TimestampTz emergency_at;	/* in emergency: since when (its busy agent sessions began before) */
} KsScope;

extern void ks_scopes_shmem_request(void);
extern void ks_scopes_shmem_startup(void);
extern bool ks_scope_raise_in_flight(Oid role, KsMode mode);
extern void ks_scope_end_in_place(Oid role, bool committed);
extern bool ks_scope_settle_due(void);
extern void ks_scope_set_in_flight(Oid role, KsMode mode);
extern void ks_scope_drop_in_flight(Oid role);
extern void ks_scope_set_committed(Oid role, KsMode mode, int64 generation, TimestampTz since);
extern void ks_scope_mark_in_flight(Oid role, uint64 xid);
extern void ks_scope_drop_marked(Oid role, uint64 xid);
extern void ks_scope_settle_marked(Oid role, uint64 xid, KsMode mode, int64 generation,
								   TimestampTz since);
extern void ks_scope_marks_written(void);
extern bool ks_scope_marks_due(uint64 *seen);
extern void ks_scope_marks_settled(uint64 seen);
extern bool ks_scope_replace_committed(const KsScope *list, int n);
extern KsScope *ks_scope_list_all(int *count);
extern bool ks_scope_take_heard(const KsScope *list, int n);
extern bool ks_scope_end_heard(const KsScope *chain, int n, bool all);
extern int	ks_scope_heard_count(void);
extern void ks_scope_file_version_written(int64 version);
extern int64 ks_scope_file_version_told(void);
extern int64 ks_scope_file_version_next(void);
extern void ks_scope_file_version_set(int64 version);
extern bool ks_scope_lookup(Oid role, KsScope *committed, KsMode *in_force);
extern KsScope *ks_scope_list(int *count);
extern int	ks_scope_count(void);
extern bool ks_scope_overflowed(void);
extern KsScope *ks_scopes_in_emergency(int *count);
extern uint64 ks_scope_version(void);
extern KsMode ks_scope_session_mode(KsMode fleet);
extern bool ks_scope_refusal_detail(KsMode mode, char *buf, size_t len);

/*
 * The mode in force for this session (ARCHITECTURE §13): the fleet's, and
 * while some scope is active, the highest of it and every scope that
 * holds one of the session's roles.  While no scope is active, one atomic
 * read, as ks_current_mode().
 */
static inline KsMode
ks_session_mode(void)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);

	if (likely((word & KS_WORD_SCOPES) == 0) || KS_WORD_MODE(word) == KS_EMERGENCY)
		return KS_WORD_MODE(word);
	return ks_scope_session_mode(KS_WORD_MODE(word));
}

#endif							/* KS_SCOPE_H */
