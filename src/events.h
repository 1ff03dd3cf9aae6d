/*
 * events.h — the governance table killswitch.events (events.c).
 */
#ifndef KS_EVENTS_H
#define KS_EVENTS_H

#include "datatype/timestamp.h"

#include "store.h"

/* Who asked for a change recorded after its commit (a raise whose event followed). */
typedef struct KsEventIdentity
{
	const char *session_role;	/* UTF-8 */
	const char *client_addr;	/* NULL for a local connection */
	int32		backend_pid;
	uint64		xid;			/* FullTransactionId */
	TimestampTz at;
} KsEventIdentity;
/* What a new event says; the rest (who, where, when, chain) is filled in. */
typedef struct KsEventInput
{
	KsMode		mode;
	int			previous;		/* KS_NO_MODE for none */
	const char *reason;			/* UTF-8 */
	const char *triggered_by;
	int32		affected_tasks;
	const char *source;
	int64		floor_generation;	/* the generation is at least this */
	bool		request;		/* a release request (approval.c) */
	KsMode		release_target; /* and the mode it asks for */
	bool		tampered;		/* the state after it keeps a tamper verdict */
	const KsEventIdentity *identity;	/* NULL: this session, now */
} KsEventInput;
extern Datum ks_record_event(const KsEventInput *in, KsState *file_state);
extern Datum ks_record_scope_event(const KsEventInput *in, Oid scope, const char *scope_name,
									int64 *generation, TimestampTz *at);
extern Datum ks_event_row_pending(const KsEventInput *in);
extern Datum ks_event_row_pending_scope(const KsEventInput *in, Oid scope, const char *scope_name);
extern bool ks_events_hold(uint64 xid, TimestampTz at);
extern char *ks_client_address(void);
extern int64 ks_events_last_generation(void);
typedef enum KsHistory
{
	KS_HISTORY_EMPTY,
	KS_HISTORY_OK,
	KS_HISTORY_BAD				/* the newest row does not verify */
} KsHistory;
extern KsHistory ks_events_newest_state(KsState *st);

#endif							/* KS_EVENTS_H */
