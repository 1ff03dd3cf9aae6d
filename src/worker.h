/*
 * worker.h — the watcher, a background worker (worker.c).
 */
#ifndef KS_WORKER_H
#define KS_WORKER_H

extern void ks_worker_register(void);
extern void ks_watcher_survive_error(MemoryContext ctx);

#endif							/* KS_WORKER_H */
