/*
 * follow.h — the state file follows the state in force (follow.c).
 */
#ifndef KS_FOLLOW_H
#define KS_FOLLOW_H

#define KS_FILE_MISSING_HASH "-"	/* file_hash of a file judged missing */
extern void ks_file_hash_of(const char *data, size_t len, char *hash);
extern void ks_file_written(const char *data, size_t len);
extern void ks_file_unknown(void);
extern void ks_file_behind(const char *problem);
extern bool ks_file_known(const char *hash, bool *behind);
extern void ks_file_hash(char *hash);
extern bool ks_file_judged(const char *hash, const char *before);
extern void ks_file_unjudged(const char *hash, const char *before);
extern bool ks_write_behind_file(bool history);

#endif							/* KS_FOLLOW_H */
