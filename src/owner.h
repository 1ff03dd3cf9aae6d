/*
 * owner.h — SPI as the extension's owner with a safe search_path (owner.c).
 */
#ifndef KS_OWNER_H
#define KS_OWNER_H

typedef struct KsOwnerContext
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	TransactionId next_xid;		/* the next id to be assigned when the region began */
} KsOwnerContext;
extern Oid	ks_events_relid(void);
extern void ks_owner_begin(KsOwnerContext *ctx);
extern void ks_owner_end(KsOwnerContext *ctx);
extern bool ks_in_owner_region(void);
extern bool ks_commit_is_own_work(void);
struct QueryDesc;				/* executor/execdesc.h */
extern void ks_agent_writing_began(const struct QueryDesc *queryDesc);
extern void ks_agent_writing_ended(const struct QueryDesc *queryDesc);
extern void ks_owner_xact_end(void);
extern void ks_owner_init(void);

#endif							/* KS_OWNER_H */
