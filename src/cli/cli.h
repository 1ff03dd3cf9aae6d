/*
 * cli.h — the killswitch command: what its parts share.
 */
#ifndef KS_CLI_H
#define KS_CLI_H

#include "store.h"

/* Exit statuses a shell script can branch on. */
#define KS_EXIT_OK 0			/* disengaged, or the command succeeded */
#define KS_EXIT_ERROR 1			/* bad usage, unreadable files, refused */
#define KS_EXIT_ENGAGED 2		/* the mode is not disengaged */
#define KS_EXIT_TAMPERED 3		/* the state cannot be trusted */

/*
 * Seconds a connection attempt may take when neither the connection string,
 * a service file nor PGCONNECT_TIMEOUT says (libpq's own default is to wait
 * forever): a halt must not hang on one unreachable server.
 */
#define KS_CONNECT_TIMEOUT "10"

typedef enum KsCommand
{
	CMD_STATUS,
	CMD_ENGAGE,
	CMD_DISENGAGE,
	CMD_VERIFY,
	CMD_HISTORY
} KsCommand;

/* One cluster the command goes to through a connection (-d, --dbname-file). */
typedef struct KsTarget
{
	const char *conninfo;
	const char *origin;			/* where it was given: "-d #2", "FILE:LINE" */
	char	   *label;			/* how the output names it: never a password */
} KsTarget;

typedef struct KsOptions
{
	KsCommand	command;
	const char *progname;		/* for messages */
	int			mode;			/* for engage */
	const char *reason;
	const char *by;
	int			affected;
	const char *scope;			/* --scope: a role's scoped halt (offline: its OID) */
	int			limit;			/* for history; 0: all */
	const char *conninfo;		/* online when set: one cluster */
	KsTarget   *targets;		/* every -d and --dbname-file line, in order */
	int			ntargets;
	bool		fleet;			/* several clusters, or --dbname-file: fleet.c */
	const char *pgdata;
	const char *state_dir;
	const char *secret_file;
	const char *release_key_file;
	bool		json;
	bool		force;
	bool		require_hmac;
} KsOptions;

/* keycheck.c: a secret that is not the server's, as the files' key_id tell */
typedef struct KsKeyMismatch
{
	char		ours[17];		/* our secret's key_id */
	char		signer[17];		/* the key_id the file names */
	const char *told_by;		/* that file */
	const char *secret_file;
} KsKeyMismatch;

extern bool ks_cli_secret_mismatch(const char *secret, size_t secretlen, const char *secret_file,
								   const char *last_applied, const char *state_file,
								   KsKeyMismatch *m);
extern void ks_cli_report_mismatch(const KsKeyMismatch *m, bool writing);

extern int	ks_cli_offline(const KsOptions *opt);
extern int64 ks_cli_now_usec(void);
extern bool ks_cli_server_running(const char *pgdata);
extern bool ks_cli_release_key_load(const char *file, bool needed, const char *lowering,
									char **key, size_t *len);
extern int	ks_cli_offline_scope(const KsOptions *opt, const char *state_dir, const char *secret,
								 size_t secretlen, const char *release_key_file);
extern int	ks_cli_online(const KsOptions *opt);

/* fleet.c */
extern void ks_cli_add_target(KsOptions *opt, const char *conninfo, const char *origin);
extern void ks_cli_add_target_file(KsOptions *opt, const char *path);
extern int	ks_cli_fleet(const KsOptions *opt);

#endif							/* KS_CLI_H */
