/*
 * functions.h — deny by default: which functions a halted agent may call
 * (functions.c).
 */
#ifndef KS_FUNCTIONS_H
#define KS_FUNCTIONS_H

extern bool ks_function_denied(Oid fn);
extern void ks_forget_function_verdicts(void);
extern void ks_functions_init(void);

#endif							/* KS_FUNCTIONS_H */
