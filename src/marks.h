/*
 * marks.h — changes in flight, one mark per transaction (marks.c,
 * ARCHITECTURE §5.3-5.5).
 */
#ifndef KS_MARKS_H
#define KS_MARKS_H

#include "nodes/pg_list.h"

#include "store.h"

typedef struct KsMark
{
	bool		deferred;		/* a raise whose event follows, else a recorded change */
	uint64		xid;			/* the transaction's FullTransactionId */
	KsMode		mode;
	int			previous;		/* KsMode or KS_NO_MODE */
	bool		tampered;		/* the change keeps a tamper verdict */
	int64		generation;		/* recorded: the change's generation */
	char	   *state;			/* recorded: the state file's text */
	size_t		state_len;
	/* deferred: the change whole, and who asked (UTF-8) */
	char	   *reason;
	char	   *triggered_by;
	char	   *source;
	int32		affected_tasks;
	char	   *session_role;
	char	   *client_addr;	/* NULL for a local connection */
	int32		backend_pid;
	int64		at_usec;		/* microseconds since 1970 */
	/* a scope's raise whose event follows (ARCHITECTURE §13): one mark per scope */
	Oid			scope;			/* InvalidOid: the fleet's */
	char	   *scope_name;
} KsMark;
extern bool ks_mark_write(const KsMark *m, char *problem, size_t problemlen);
extern bool ks_mark_remove(uint64 xid);
extern bool ks_scope_mark_remove(uint64 xid, Oid scope);
extern List *ks_marks_read(bool *bad, char *problem, size_t problemlen);
extern List *ks_scope_marks_read(bool *bad, char *problem, size_t problemlen);
extern void ks_marks_clear(void);
extern void ks_marks_remove_leftovers(void);

#endif							/* KS_MARKS_H */
