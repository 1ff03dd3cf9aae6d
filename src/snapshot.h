/*
 * snapshot.h — the emergency snapshot (snapshot.c).
 */
#ifndef KS_SNAPSHOT_H
#define KS_SNAPSHOT_H

#include "nodes/pg_list.h"

extern void ks_emergency_snapshot(List *roles, int64 generation, bool database, bool history,
								  bool recorded);
extern void ks_emergency_record_snapshot(int64 generation);

#endif							/* KS_SNAPSHOT_H */
