/*
 * approval.h — two-person release (approval.c).
 */
#ifndef KS_APPROVAL_H
#define KS_APPROVAL_H

#include "change.h"
#include "store.h"

extern Datum ks_release_with_approval(const KsChange *release, KsMode current);

#endif							/* KS_APPROVAL_H */
