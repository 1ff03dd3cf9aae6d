/*
 * rights.h — roles and rights (rights.c).
 */
#ifndef KS_RIGHTS_H
#define KS_RIGHTS_H

extern Oid	ks_role_oid(const char *name);
extern bool ks_role_is_agent(Oid roleid);
extern void ks_check_engage_right(void);
extern void ks_check_release_right(void);

#endif							/* KS_RIGHTS_H */
