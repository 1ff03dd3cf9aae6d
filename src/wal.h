/*
 * wal.h — the state in the WAL (wal.c).
 */
#ifndef KS_WAL_H
#define KS_WAL_H

#include "store.h"

#define KS_RMGR_ID 177			/* in the range left to extensions, 128-255 */
extern void ks_wal_register(void);
extern void ks_wal_log_state(const char *text, size_t len, KsMode mode, int64 generation);
extern void ks_wal_log_file(const char *path);

#endif							/* KS_WAL_H */
