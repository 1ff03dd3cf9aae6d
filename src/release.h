/*
 * release.h — the release credential (release.c).
 */
#ifndef KS_RELEASE_H
#define KS_RELEASE_H

#include "store.h"

extern char *ks_release_key_file;
extern void ks_release_key_prepare(void);
extern void ks_release_key_for_writing(char **key, size_t *len);
extern bool ks_release_authorized(const KsState *file, const KsState *held,
								  bool held_tampered, char *problem, size_t problemlen);
extern bool ks_generation_step_ok(const KsState *file, const KsState *held,
								  char *problem, size_t problemlen);

#endif							/* KS_RELEASE_H */
