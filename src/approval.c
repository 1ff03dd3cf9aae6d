/*
 * approval.c — two-person release (killswitch.release_approvals = 2).
 *
 * A release asked for by one administrator is recorded as a request: an
 * event with source "release_request", the mode unchanged and
 * release_target set.  It takes effect when a different administrator (a
 * different session_user) asks for the same release within
 * killswitch.approval_timeout, with no change in between: the release is
 * then the event right after its request.  Both are in the chain, signed.
 *
 * The pending request is read from killswitch.events itself, under the
 * lock that orders changes, so it is transactional (a rolled-back request
 * never happened) and survives a restart without any state of its own.
 */
#include "postgres.h"

#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "approval.h"
#include "change.h"
#include "guc.h"
#include "modetype.h"
#include "names.h"
#include "owner.h"
#include "store.h"

/* The newest event, as far as a release request goes. */
typedef struct KsRequest
{
	bool		is_request;		/* the newest event is a release request */
	int64		id;
	TimestampTz at;
	KsMode		target;
	char	   *session_role;
} KsRequest;

/* Read the newest event with a fresh snapshot (the caller holds the lock). */
static void
newest_event(KsRequest *req)
{
	KsOwnerContext owner;
	SPIPlanPtr	plan;
	MemoryContext callercxt = CurrentMemoryContext;

	memset(req, 0, sizeof(*req));
	ks_owner_begin(&owner);
	plan = SPI_prepare("SELECT id, at, release_target, session_role FROM killswitch.events "
					   "WHERE source = 'release_request' AND id = "
					   "(SELECT max(id) FROM killswitch.events WHERE scope IS NULL)", 0, NULL);
	/* a REPEATABLE READ snapshot could be older than the newest commit */
	if (SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.events");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext spicxt = MemoryContextSwitchTo(callercxt);

		req->is_request = true;
		req->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		req->at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
		req->target = ks_mode_from_datum(SPI_getbinval(tup, desc, 3, &isnull));
		req->session_role = TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull));
		MemoryContextSwitchTo(spicxt);
	}
	ks_owner_end(&owner);
}

/* Has the request waited longer than killswitch.approval_timeout? */
static bool
expired(const KsRequest *req)
{
	return TimestampDifferenceExceeds(req->at, GetCurrentTimestamp(),
									  ks_approval_timeout * 1000);
}

/*
 * A release (or lowering) when two administrators are needed: confirm the
 * pending request for the same mode, or record a new request.  The caller
 * has checked the release right and holds the lock that orders changes.
 */
Datum
ks_release_with_approval(const KsChange *release, KsMode current)
{
	KsRequest	req;
	KsChange	request;
	Datum		row;
	const char *me = GetUserNameFromId(GetSessionUserId(), false);

	newest_event(&req);
	if (req.is_request && req.target == release->mode && !expired(&req))
	{
		if (strcmp(req.session_role, me) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("a release must be confirmed by a second administrator"),
					 errdetail("You requested this release in event " INT64_FORMAT
							   "; killswitch.release_approvals is %d.",
							   req.id, ks_release_approvals),
					 errhint("Another member of \"%s\" must make the same release within %d seconds of the request.",
							 KS_ROLE_ADMIN, ks_approval_timeout)));
		ereport(NOTICE,
				(errmsg("release to %s confirmed: requested by \"%s\" in event " INT64_FORMAT,
						ks_mode_sql_names[release->mode], req.session_role, req.id)));
		return ks_apply_change(release);
	}

	/* record the request: the mode stays, the chain says who asked for what */
	request = *release;
	request.mode = current;
	request.source = "release_request";
	request.request = true;
	request.clears_verdict = false;	/* a request changes nothing yet */
	request.release_target = release->mode;
	row = ks_apply_change(&request);
	ereport(NOTICE,
			(errmsg("release to %s requested; the mode stays %s until a second administrator confirms",
					ks_mode_sql_names[release->mode], ks_mode_sql_names[current]),
			 errdetail("killswitch.release_approvals is %d.", ks_release_approvals),
			 errhint("Another member of \"%s\" must make the same release within %d seconds.",
					 KS_ROLE_ADMIN, ks_approval_timeout)));
	return row;
}
