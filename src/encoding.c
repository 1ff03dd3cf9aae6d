/*
 * encoding.c — the kill switch keeps its text (reason, triggered_by) in
 * UTF-8 everywhere: the state file, shared memory, the hash chain's
 * canonical form.  A database sees it in its own encoding, and only where
 * it shows it: the history table, ks_status(), refusals, NOTIFY.  These
 * are the two crossings.
 *
 *   ks_text_to_utf8()   SQL text (database encoding) -> UTF-8; a clear
 *                       error for bytes that are no text
 *   ks_utf8_to_db()     UTF-8 -> this database; a character it cannot
 *                       hold is shown escaped, never an error
 *
 * A SQL_ASCII database has no encoding to convert to or from: it holds the
 * UTF-8 bytes themselves (as PostgreSQL's own conversions to SQL_ASCII do),
 * and text arriving from it must be valid UTF-8.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "mb/pg_wchar.h"

#include "compat.h"
#include "encoding.h"

/*
 * Text of the database encoding as UTF-8.  name says which argument, for
 * the error.  In a SQL_ASCII database the bytes are taken as UTF-8, so they
 * must be UTF-8: anything else is refused and nothing is changed.
 */
char *
ks_text_to_utf8(const char *s, const char *name)
{
	int			len = strlen(s);

	if (GetDatabaseEncoding() == PG_SQL_ASCII)
	{
		if (pg_encoding_verifymbstr(PG_UTF8, s, len) != len)
			ereport(ERROR,
					(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
					 errmsg("%s is not valid UTF-8", name),
					 errdetail("In a SQL_ASCII database the kill switch takes text as UTF-8 bytes."),
					 errhint("Send the text in UTF-8 (client_encoding does not convert in a SQL_ASCII database).")));
		return (char *) s;
	}
	return pg_server_to_any(s, len, PG_UTF8);
}

/* Append one character that the database cannot hold, escaped. */
static void
append_escaped(StringInfo out, pg_wchar cp)
{
	if (cp <= 0xFFFF)
		appendStringInfo(out, "\\u%04X", (unsigned int) cp);
	else
		appendStringInfo(out, "\\U%08X", (unsigned int) cp);
}

/*
 * The conversion from UTF-8 to this database's encoding, looked up once
 * (the encoding of a backend never changes); InvalidOid where none can be
 * looked up now (outside a transaction) or used without erroring (before
 * PostgreSQL 14), and then only ASCII is shown as it is.
 */
static Oid
utf8_to_db_proc(void)
{
#ifdef KS_HAVE_CONVERSION_NOERROR
	static Oid	proc = InvalidOid;
	static bool looked_up = false;

	if (!looked_up && IsTransactionState())
	{
		proc = FindDefaultConversionProc(PG_UTF8, GetDatabaseEncoding());
		looked_up = true;
	}
	return proc;
#else
	return InvalidOid;
#endif
}

/*
 * Append valid UTF-8 in the database encoding, escaping each character
 * that the conversion refuses.  The conversion runs with noError, so it
 * stops before such a character instead of raising 22P05.
 */
static void
append_converted(StringInfo out, const char *s, int len)
{
	int			enc = GetDatabaseEncoding();
	Oid			proc;
	char	   *buf = NULL;

	if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
	{
		appendBinaryStringInfo(out, s, len);
		return;
	}
	proc = utf8_to_db_proc();
	if (OidIsValid(proc))
		buf = palloc((size_t) len * MAX_CONVERSION_GROWTH + 1);
	while (len > 0)
	{
		int			done = 0;
		int			n;

#ifdef KS_HAVE_CONVERSION_NOERROR
		if (OidIsValid(proc))
		{
			done = pg_do_encoding_conversion_buf(proc, PG_UTF8, enc,
												 (unsigned char *) s, len,
												 (unsigned char *) buf,
												 len * MAX_CONVERSION_GROWTH + 1,
												 true);
			appendStringInfoString(out, buf);
			s += done;
			len -= done;
		}
		else
#endif
		{
			/* ASCII is the same in every server encoding */
			while (done < len && !IS_HIGHBIT_SET(s[done]))
				done++;
			appendBinaryStringInfo(out, s, done);
			s += done;
			len -= done;
		}
		if (len == 0)
			break;
		n = pg_utf_mblen((const unsigned char *) s);
		append_escaped(out, utf8_to_unicode((const unsigned char *) s));
		s += n;
		len -= n;
	}
	if (buf)
		pfree(buf);
}

/*
 * UTF-8 text as this database shows it (palloc'd; NULL for NULL).  Never
 * raises an error: a character the database encoding cannot hold is shown
 * as \uXXXX (\UXXXXXXXX beyond the BMP), the form E'' strings read back;
 * a byte that is not UTF-8 at all (which the kill switch never stores) as
 * \xNN.
 */
char *
ks_utf8_to_db(const char *utf8)
{
	StringInfoData out;
	int			len;

	if (utf8 == NULL)
		return NULL;
	len = strlen(utf8);
	initStringInfo(&out);
	while (len > 0)
	{
		int			valid = pg_encoding_verifymbstr(PG_UTF8, utf8, len);

		append_converted(&out, utf8, valid);
		utf8 += valid;
		len -= valid;
		if (len > 0)
		{
			appendStringInfo(&out, "\\x%02X", (unsigned char) *utf8);
			utf8++;
			len--;
		}
	}
	return out.data;
}
