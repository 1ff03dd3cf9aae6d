/*
 * agents.h — is this session an agent (agents.c).
 */
#ifndef KS_AGENTS_H
#define KS_AGENTS_H

extern uint64 ks_agent_roles_epoch;
extern void ks_agents_init(void);
extern bool ks_session_is_agent(void);

#endif							/* KS_AGENTS_H */
