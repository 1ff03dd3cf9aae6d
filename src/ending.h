/*
 * ending.h — the busy agent sessions ended, the agents' prepared
 * transactions rolled back (ending.c).
 */
#ifndef KS_ENDING_H
#define KS_ENDING_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

extern int	ks_end_busy_agent_sessions(List *roles, TimestampTz published_at);
extern void ks_note_agents_prepared(List *roles);
extern void ks_emergency_finish_prepared(void);

#endif							/* KS_ENDING_H */
