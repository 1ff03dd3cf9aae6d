/*
 * agentlist.h — the agent roles of an emergency, published for logins (agentlist.c).
 */
#ifndef KS_AGENTLIST_H
#define KS_AGENTLIST_H

#include "nodes/pg_list.h"

extern List *ks_agent_roles(void);
extern void ks_agent_roles_forget(void);
extern bool ks_emergency_lists_role(const char *name);
extern Datum ks_oid_array(List *oids);

#endif							/* KS_AGENTLIST_H */
