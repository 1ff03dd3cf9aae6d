/*
 * claim.h — one state directory, one server (claim.c).
 */
#ifndef KS_CLAIM_H
#define KS_CLAIM_H

extern bool ks_claim_state_dir(char *problem, size_t problemlen);
extern bool ks_state_dir_ours(char *problem, size_t problemlen);

#endif							/* KS_CLAIM_H */
