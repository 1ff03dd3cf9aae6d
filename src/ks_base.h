/*
 * ks_base.h — first include of the files compiled both into the server
 * module and into frontend programs (-DFRONTEND).
 */
#ifndef KS_BASE_H
#define KS_BASE_H

#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#endif							/* KS_BASE_H */
