/*
 * lists.h — shared lists of any length, under an LWLock (lists.c).
 */
#ifndef KS_LISTS_H
#define KS_LISTS_H

#include "utils/dsa.h"

typedef enum KsListId
{
	KS_LIST_CRITICAL,			/* critical tasks, each with its granted roles */
	KS_LIST_AGENTS,				/* agent role names, while in emergency */
	KS_NLISTS
} KsListId;
typedef enum KsListAnswer
{
	KS_LIST_ABSENT,
	KS_LIST_PRESENT,
	KS_LIST_UNKNOWN				/* not loaded or stale: fail closed */
} KsListAnswer;
typedef struct KsListItem
{
	char	   *name;
	int			nroles;
	Oid		   *roles;
} KsListItem;
extern void ks_lists_shmem_request(void);
extern void ks_lists_shmem_startup(void);
extern dsa_pointer ks_list_build(KsListItem *items, int n, int elevel);
extern void ks_list_discard(dsa_pointer block);
extern uint64 ks_list_version(KsListId which);
extern bool ks_list_swap(KsListId which, dsa_pointer block, const uint64 *expect_version,
						 const TransactionId *resolved, int nresolved);
extern void ks_list_unload(KsListId which);
extern KsListAnswer ks_list_lookup(KsListId which, const char *name, Oid **roles, int *nroles);
extern bool ks_list_loaded(KsListId which);
extern void ks_list_register_prepared(TransactionId xid);
extern TransactionId *ks_list_prepared_over(int *nover);
extern void ks_count_refused_claim(void);
extern uint64 ks_refused_claims(void);

#endif							/* KS_LISTS_H */
