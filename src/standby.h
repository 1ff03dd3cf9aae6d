/*
 * standby.h — a server in recovery follows its primary (standby.c).
 */
#ifndef KS_STANDBY_H
#define KS_STANDBY_H

#include "access/xlogdefs.h"

#include "names.h"
#include "state.h"
#include "store.h"

/* marks a start from another server's WAL until the history is adopted */
#define KS_RECOVERED_FILE KS_PRIVATE_DIR "/from_recovery"
extern bool ks_recovery_requested(void);
extern bool ks_publish_state(const KsState *st, int flags, bool only_newer);
extern void ks_standby_apply(const char *text, size_t len, XLogRecPtr lsn);
extern void ks_adopt_history_after_recovery(void);
extern void ks_standby_follow_history(void);
extern bool ks_standby_put_back(void);
/* the bytes of the state a standby heard and holds ahead of replay (the heard overlay) */
#define KS_HEARD_FILE KS_PRIVATE_DIR "/heard.json"
extern KsHeard ks_standby_take_heard(const KsState *st, TimeLineID timeline);
extern bool ks_standby_write_files(const char *text, size_t len, int64 generation);
extern bool ks_standby_write_heard(const char *text, size_t len, int64 generation);
extern bool ks_standby_heard_dropped(void);
extern void ks_standby_load_heard(const char *secret, size_t secretlen);

#endif							/* KS_STANDBY_H */
