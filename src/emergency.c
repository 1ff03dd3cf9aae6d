/*
 * emergency.c — entering emergency (ARCHITECTURE §9): the watcher's duty at
 * each tick, whether emergency came from SQL, the file or the CLI, and
 * again at start if the server comes up in it.  This file decides when;
 * what is done is in the files named:
 *
 *   1. the snapshot of the agents' sessions, locks and prepared
 *      transactions (snapshot.c), before anything is ended;
 *   2. the agent sessions that are doing something ended and the agents'
 *      prepared transactions in this database rolled back (ending.c),
 *      from the agent roles of agentlist.c — which also publishes them
 *      for the login check while the emergency lasts;
 *   3. the alert: NOTIFY, WARNING and killswitch.alert_command (alert.c).
 *
 * The snapshot and the alert come once per emergency episode; ending the
 * busy sessions comes at every tick while the emergency lasts, for agent
 * sessions still doing something that began before it was published.
 *
 * A watcher connected to no database (killswitch.database unusable, or a
 * standby) does what needs no table: the snapshot file, the sessions
 * ended, the WARNING and the alert command; the snapshot row, the NOTIFY
 * and the prepared transactions wait for a database.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "agentlist.h"
#include "alert.h"
#include "emergency.h"
#include "ending.h"
#include "scope.h"
#include "snapshot.h"
#include "state.h"
#include "store.h"

/* How long an emergency in force waits for its event before the alert goes without it. */
#define KS_ALERT_WAIT_MS 1000

/* The emergency episode in force, as this tick sees it. */
typedef struct Episode
{
	uint64		id;				/* KsShared.emergency_episode */
	int64		generation;
	TimestampTz published_at;	/* transactions begun before are "before" it */
	bool		first;			/* its actions have not run yet */
} Episode;

/* Agent sessions ended in the episode so far, for the alert to count. */
static int	ended_in_episode = 0;

/*
 * Is the mode in force emergency?  If so, which episode (state.c counts
 * one each time the mode in force enters emergency).  Keyed on the
 * episode, not the generation: a raise to emergency is in force before its
 * generation moves, and a release request repeats the mode with a new one
 * — the actions run once for each, never twice and never not at all.
 * Outside emergency the agent list logins are checked against is dropped.
 */
static bool
in_emergency(Episode *e)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);

	if (KS_WORD_MODE(word) != KS_EMERGENCY)
	{
		ks_agent_roles_forget();
		return false;
	}
	e->generation = ks_generation_in_force(word);	/* a heard state's, above replay's */
	SpinLockAcquire(&ks_shared->mutex);
	e->id = ks_shared->emergency_episode;
	e->published_at = ks_shared->published_at;
	SpinLockRelease(&ks_shared->mutex);
	e->first = ks_shared->emergency_handled != e->id;
	return true;
}

/*
 * Does the chain hold the emergency (its event committed)?  If so, the
 * episode's generation is the chain's: read with the chain's mode under
 * the mutex, as the commit publishes both — a generation read before (in
 * in_emergency()) may be the one before the emergency's event.
 */
static bool
chain_holds_emergency(Episode *e)
{
	bool		holds;
	uint64		word;

	SpinLockAcquire(&ks_shared->mutex);
	holds = ks_shared->chain_mode == KS_EMERGENCY;
	word = pg_atomic_read_u64(&ks_shared->word);
	SpinLockRelease(&ks_shared->mutex);
	if (holds)
		e->generation = ks_generation_in_force(word);
	return holds;
}

/*
 * Is the alert of this episode due?  When the chain holds the emergency
 * (its event committed, so the alert names it), or once it has been in
 * force for KS_ALERT_WAIT_MS without (a raise whose event follows, held
 * up): an alert never waits long for a history that may not come.
 */
static bool
alert_due(const Episode *e, bool chain_holds)
{
	if (ks_shared->emergency_alerted == e->id)
		return false;
	return chain_holds ||
		TimestampDifferenceExceeds(e->published_at, GetCurrentTimestamp(), KS_ALERT_WAIT_MS);
}

/*
 * The scope emergencies whose first tick has run (the watcher's memory):
 * each scope's role and when it entered emergency.
 */
typedef struct ScopeEpisode
{
	Oid			role;
	TimestampTz since;
	int			ended;			/* agent sessions ended so far, for the alert to count */
	bool		alerted;
} ScopeEpisode;
static List *scope_episodes = NIL;

/*
 * The watcher's memory of the scope's emergency (*first: its first tick).
 * The episodes no longer in force go.
 */
static ScopeEpisode *
scope_episode(const KsScope *scopes, int n, int i, bool *first)
{
	ListCell   *lc;
	MemoryContext old;
	ScopeEpisode *e;

	foreach(lc, scope_episodes)
	{
		ScopeEpisode *known = lfirst(lc);
		bool		in_force = false;

		for (int j = 0; j < n && !in_force; j++)
			in_force = scopes[j].role == known->role && scopes[j].emergency_at == known->since;
		if (!in_force)
			scope_episodes = foreach_delete_current(scope_episodes, lc);
		else if (known->role == scopes[i].role)
		{
			*first = false;
			return known;
		}
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	e = palloc0(sizeof(ScopeEpisode));
	e->role = scopes[i].role;
	e->since = scopes[i].emergency_at;
	scope_episodes = lappend(scope_episodes, e);
	MemoryContextSwitchTo(old);
	*first = true;
	return e;
}

/*
 * Is the alert of this scope's emergency due, and with which generation?
 * As the fleet's (alert_due()): once the scope's committed state is
 * emergency (its event recorded: *generation), or once the raise has been
 * in force KS_ALERT_WAIT_MS without (*generation 0).
 */
static bool
scope_alert_due(const KsScope *scope, int64 *generation)
{
	KsScope		committed;

	if (ks_scope_lookup(scope->role, &committed, NULL) && committed.mode == KS_EMERGENCY)
	{
		*generation = committed.generation;
		return true;
	}
	*generation = 0;
	return TimestampDifferenceExceeds(scope->emergency_at, GetCurrentTimestamp(), KS_ALERT_WAIT_MS);
}

/*
 * A tick of a scope's emergency with a database, after its busy agent
 * sessions (ended of them now) were ended: at its first, its agents'
 * prepared transactions rolled back and a WARNING; then, once due, its
 * alert (once per episode).
 */
static void
scope_episode_tick(const KsScope *scopes, int n, int i, List *held, int ended)
{
	bool		first;
	ScopeEpisode *episode = scope_episode(scopes, n, i, &first);
	char	   *name = GetUserNameFromId(scopes[i].role, true);
	int64		generation;

	episode->ended += ended;
	if (first)
	{
		ks_note_agents_prepared(held);
		ereport(WARNING,
				(errmsg("scope \"%s\" is in emergency: %d busy agent sessions ended, its agents' prepared transactions rolled back",
						name ? name : "?", ended),
				 errdetail("The rest of the fleet keeps working; see ks_scopes().")));
	}
	else if (ended > 0)
		ereport(LOG,
				(errmsg("ended %d busy agent sessions of scope \"%s\" in emergency",
						ended, name ? name : "?")));
	if (!episode->alerted && scope_alert_due(&scopes[i], &generation))
	{
		episode->alerted = true;
		ks_alert_scope_emergency(scopes[i].role, generation, episode->ended);
	}
}

/*
 * The scopes in emergency (ARCHITECTURE §13), at every tick: the busy
 * sessions of the agent roles each holds, whose transaction began before
 * the scope entered emergency, are ended — the rest of the fleet keeps
 * working; at its first tick with a database, their prepared transactions
 * are rolled back (after the tick, ending.c) and a WARNING says so; then
 * the alert, the scope named (alert.c).  (Their idle sessions stay, each
 * statement refused; the snapshot is the fleet's only.)  Nothing to do
 * while the fleet itself is in emergency: it ends them all.
 */
static void
scope_emergency_tick(bool history)
{
	KsScope    *scopes;
	List	   *roles;
	int			n;

	if (!(pg_atomic_read_u64(&ks_shared->word) & KS_WORD_SCOPES) || ks_current_mode() == KS_EMERGENCY)
	{
		list_free_deep(scope_episodes);
		scope_episodes = NIL;
		return;
	}
	scopes = ks_scopes_in_emergency(&n);
	if (n == 0)
	{
		list_free_deep(scope_episodes);
		scope_episodes = NIL;
		return;
	}
	roles = ks_agent_roles();
	for (int i = 0; i < n; i++)
	{
		List	   *held = NIL;
		ListCell   *lc;
		int			ended;

		foreach(lc, roles)
			if (is_member_of_role_nosuper(lfirst_oid(lc), scopes[i].role))
				held = lappend_oid(held, lfirst_oid(lc));
		if (held == NIL)
			continue;
		ended = ks_end_busy_agent_sessions(held, scopes[i].emergency_at);
		if (history)
			scope_episode_tick(scopes, n, i, held, ended);
		else if (ended > 0)
		{
			char	   *name = GetUserNameFromId(scopes[i].role, true);

			ereport(LOG,
					(errmsg("ended %d busy agent sessions of scope \"%s\" in emergency",
							ended, name ? name : "?")));
		}
	}
}


/*
 * The watcher's emergency duty, inside its transaction in its database
 * (history: the database has the extension's tables): the first time it
 * sees an emergency episode — in force, maybe before its commit — the
 * snapshot and the busy agent sessions ended; then, at once or as soon as
 * its event is recorded, the alert; afterwards, agent sessions that
 * appear are ended.
 */
void
ks_emergency_tick(bool history)
{
	Episode		e;
	List	   *roles;
	int64		event_id = 0;
	bool		in_force;
	bool		chain_holds;
	bool		alert;
	int			ended;

	scope_emergency_tick(history);
	in_force = in_emergency(&e);
	/* a snapshot left waiting by an episode released before its event came */
	if (history && (!in_force || e.first))
		ks_emergency_record_snapshot(-1);
	if (!in_force)
		return;
	chain_holds = chain_holds_emergency(&e);
	alert = alert_due(&e, chain_holds);
	if (alert && history)
		event_id = ks_alert_event_id(e.generation);
	roles = ks_agent_roles();
	/* the snapshot at once; its row once the chain gives the emergency its generation */
	if (e.first)
		ks_emergency_snapshot(roles, e.generation, true, history, chain_holds);
	else if (history && chain_holds)
		ks_emergency_record_snapshot(e.generation);
	ended = ks_end_busy_agent_sessions(roles, e.published_at);
	if (e.first)
	{
		ks_note_agents_prepared(roles);
		ks_shared->emergency_handled = e.id;
		ended_in_episode = 0;
	}
	ended_in_episode += ended;
	if (!alert)
		return;
	ks_shared->emergency_alerted = e.id;
	ks_alert_emergency(e.generation, event_id, ended_in_episode, true);
}

/*
 * ks_emergency_tick() for a watcher connected to no database, inside its
 * transaction: the first time it sees an emergency episode, the snapshot
 * file, the sessions ended, the WARNING and the alert command at once
 * (there is no event to wait for); afterwards, agent sessions that appear
 * are ended.  Nothing is recorded: the history learns of the change when
 * the watcher has its database again.
 */
void
ks_emergency_tick_without_database(void)
{
	Episode		e;
	List	   *roles;
	int			ended;

	scope_emergency_tick(false);
	if (!in_emergency(&e))
		return;
	roles = ks_agent_roles();
	if (e.first)
		ks_emergency_snapshot(roles, e.generation, false, false, false);
	ended = ks_end_busy_agent_sessions(roles, e.published_at);
	if (!e.first)
		return;
	ks_shared->emergency_handled = e.id;
	ks_shared->emergency_alerted = e.id;
	ks_alert_emergency(e.generation, 0, ended, false);
}
