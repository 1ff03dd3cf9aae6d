/*
 * scopefile.h — the scope file, kill_switch_scopes.json, and the server's
 * copy of it (scopefile.c, ARCHITECTURE §13).
 */
#ifndef KS_SCOPEFILE_H
#define KS_SCOPEFILE_H

#include <stddef.h>

/* 10,000 scopes of about 110 bytes each, with room */
#define KS_MAX_SCOPE_FILE_SIZE (4 * 1024 * 1024)

extern bool ks_scope_file_load(const char *secret, size_t secretlen,
							   char *problem, size_t problemlen);
extern void ks_scope_file_write(void);
extern bool ks_scope_file_is_ours(char *problem, size_t problemlen);
extern bool ks_scope_file_pending(void);
extern bool ks_scope_file_record_outside(char *problem, size_t problemlen);
extern struct KsScope *ks_scope_file_heard(const char *text, size_t len,
										   const char *secret, size_t secretlen,
										   int64 *version, int *count,
										   char *problem, size_t problemlen);
extern void ks_scope_file_load_heard(const char *secret, size_t secretlen);

#endif							/* KS_SCOPEFILE_H */
