/*
 * sessions.h — agent sessions and their locks, from shared memory (sessions.c).
 */
#ifndef KS_SESSIONS_H
#define KS_SESSIONS_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

extern List *ks_sessions_of_roles(List *roles, TimestampTz before);
extern char *ks_sessions_snapshot_json(List *roles, int64 generation);

#endif							/* KS_SESSIONS_H */
