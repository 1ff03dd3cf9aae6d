/*
 * modetype.h — the killswitch.ks_mode enum (modetype.c).
 */
#ifndef KS_MODETYPE_H
#define KS_MODETYPE_H

#include "store.h"

extern Oid	ks_mode_type_oid(void);
extern Datum ks_mode_to_datum(KsMode mode, Oid typoid);
extern KsMode ks_mode_from_datum(Datum value);

#endif							/* KS_MODETYPE_H */
