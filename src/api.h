/*
 * api.h — the SQL functions that read the state (api.c).
 */
#ifndef KS_API_H
#define KS_API_H

#include "compat.h"

pg_noreturn extern void ks_refuse(const char *message);

#endif							/* KS_API_H */
