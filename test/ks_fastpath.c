/*
 * ks_fastpath — call one function through the fast-path protocol (PQfn),
 * as libpq's client-side large-object functions do, for the TAP tests:
 *
 *   ks_fastpath CONNINFO FUNCTION_OID [INT4_ARGUMENT ...]
 *
 * Prints "ok" and exits 0, or prints "SQLSTATE: message" and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>

#include "libpq-fe.h"

int
main(int argc, char **argv)
{
	PGconn	   *conn;
	PGresult   *res;
	PQArgBlock	args[8];
	int			nargs = argc - 3;
	int			buf[64];
	int			len = 0;
	int			rc;

	if (argc < 3 || nargs > 8)
	{
		fprintf(stderr, "usage: %s CONNINFO FUNCTION_OID [INT4_ARGUMENT ...]\n", argv[0]);
		return 2;
	}
	conn = PQconnectdb(argv[1]);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "%s", PQerrorMessage(conn));
		return 2;
	}
	for (int i = 0; i < nargs; i++)
	{
		args[i].len = 4;
		args[i].isint = 1;
		args[i].u.integer = atoi(argv[i + 3]);
	}
	res = PQfn(conn, atoi(argv[2]), buf, &len, 0, args, nargs);
	if (PQresultStatus(res) == PGRES_COMMAND_OK)
	{
		printf("ok\n");
		rc = 0;
	}
	else
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		printf("%s: %s", state ? state : "?????", PQerrorMessage(conn));
		rc = 1;
	}
	PQclear(res);
	PQfinish(conn);
	return rc;
}
