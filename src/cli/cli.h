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

typedef enum KsCommand
{
	CMD_STATUS,
	CMD_ENGAGE,
	CMD_DISENGAGE,
	CMD_VERIFY,
	CMD_HISTORY
} KsCommand;

typedef struct KsOptions
{
	KsCommand	command;
	int			mode;			/* for engage */
	const char *reason;
	const char *by;
	int			affected;
	int			limit;			/* for history; 0: all */
	const char *conninfo;		/* online when set */
	const char *pgdata;
	const char *state_dir;
	const char *secret_file;
	const char *release_key_file;
	bool		json;
	bool		force;
	bool		require_hmac;
} KsOptions;

extern int	ks_cli_offline(const KsOptions *opt);
extern int	ks_cli_online(const KsOptions *opt);

#endif							/* KS_CLI_H */
