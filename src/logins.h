/*
 * logins.h — the operators' reserve, agent logins in emergency (logins.c).
 */
#ifndef KS_LOGINS_H
#define KS_LOGINS_H

extern int	ks_reserved_connections;
extern void ks_logins_init(void);

#endif							/* KS_LOGINS_H */
