/*
 * upstream.h — a standby hears its upstream, whatever replay does (upstream.c).
 */
#ifndef KS_UPSTREAM_H
#define KS_UPSTREAM_H

extern char *ks_upstream_conninfo;
extern int	ks_standby_max_silence;
extern void ks_upstream_define_settings(void);
extern void ks_upstream_start(void);
extern void ks_upstream_stop(void);
extern pgsocket ks_upstream_socket(int *events, uint64 *epoch);
extern void ks_upstream_work(bool socket_ready);
extern long ks_upstream_timeout(long timeout);
extern int64 ks_upstream_generation(void);
extern void ks_upstream_write_files(void);

#endif							/* KS_UPSTREAM_H */
