/*
 * ks_test_funcs.c — a volatile C function that belongs to no extension and
 * that no allowlist names, for the TAP tests of deny by default
 * (test/t/090_bypass_matrix.pl loads it by its path): each call appends one
 * byte to a file, an effect outside any transaction that the test can
 * count call by call.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fmgr.h"
#include "utils/builtins.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(ks_test_mark);

/* ks_test_mark(path text) RETURNS bigint: append a byte to path, return its size. */
Datum
ks_test_mark(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	struct stat st;

	if (fd < 0 || write(fd, "x", 1) != 1 || fstat(fd, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not append to file \"%s\": %m", path)));
	close(fd);
	PG_RETURN_INT64((int64) st.st_size);
}
