/*
 * scopeformat.h — the scope file's format, kill_switch_scopes.json
 * (scopeformat.c, ARCHITECTURE §13): built for the server and, with
 * -DFRONTEND, for the killswitch command.
 */
#ifndef KS_SCOPEFORMAT_H
#define KS_SCOPEFORMAT_H

#include "store.h"

/* One scope as the file carries it: by role OID. */
typedef struct KsScopeEntry
{
	uint32		role;
	KsMode		mode;
	int64		generation;
	int64		since_usec;		/* microseconds since the Unix epoch */
	bool		unconfirmed;	/* a raise whose transaction had not committed */
} KsScopeEntry;

/* A scope file: its scopes (sorted by role, one each) and what signs it. */
typedef struct KsScopeFile
{
	KsScopeEntry *entries;
	int			n;
	int64		version;		/* rises with every write */
	/* an outside writer's change (ARCHITECTURE §13); NULL: absent */
	char	   *replaces;		/* the signature of the scope file it replaces */
	char	   *reason;
	char	   *triggered_by;
	/* as read; ignored when writing */
	char	   *signature;
	KsState		release;		/* object, release_signature, release_key_id */
} KsScopeFile;

extern bool ks_scope_file_text(StringInfo out, KsScopeFile *f,
							   const char *secret, size_t secretlen,
							   const char *release_key, size_t release_keylen);
extern bool ks_scope_file_parse(const char *text, size_t len,
								const char *secret, size_t secretlen,
								KsScopeFile *f, char *problem, size_t problemlen);
extern bool ks_scope_file_release_signed(const KsScopeFile *f,
										 const char *release_key, size_t release_keylen,
										 const char *release_key_file,
										 char *problem, size_t problemlen);
extern KsScopeEntry *ks_scope_file_find(const KsScopeFile *f, uint32 role);

#endif							/* KS_SCOPEFORMAT_H */
