/*
 * allowlist.c — the volatile functions a halted agent may still call
 * (ARCHITECTURE §8.3, deny by default).  Immutable and stable functions and
 * SQL and PL/pgSQL functions need no entry (functions.c); everything else
 * volatile is refused unless it is named here: a short list of built-ins,
 * reviewed one by one for changing nothing outside the session, the
 * switch's own C functions, and what an administrator adds with
 * killswitch.allowed_functions.
 *
 * The built-ins are named by their OIDs, which are fixed for a PostgreSQL
 * release: a volatile built-in a later release adds is refused until
 * someone reviews it.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "lib/stringinfo.h"
#include "parser/scansup.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

#include "allowlist.h"
#include "compat.h"
#include "functions.h"

/* killswitch.allowed_functions: schema-qualified function names, comma-separated. */
char	   *ks_allowed_functions = NULL;

/*
 * The setting, parsed by the check hook into one block the GUC machinery
 * frees (ks_guc_malloc(), compat.h): n pairs of offsets into the text that
 * follows.
 */
typedef struct AllowedNames
{
	int			n;
	struct
	{
		int			schema;
		int			name;
	}			names[FLEXIBLE_ARRAY_MEMBER];
} AllowedNames;

static const AllowedNames *allowed = NULL;

#define ALLOWED_TEXT(list) ((const char *) &(list)->names[(list)->n])

/*
 * The reviewed built-ins.  Each group changes nothing another session or a
 * later transaction can see; the README lists them with the reason.
 */
static bool
builtin_allowed(Oid fn)
{
	switch (fn)
	{
			/* clocks, randomness and sleeping: the session's own */
		case F_CLOCK_TIMESTAMP:
		case F_TIMEOFDAY:
		case KS_F_RANDOM:
#ifdef F_RANDOM_INT4_INT4
		case F_RANDOM_INT4_INT4:
		case F_RANDOM_INT8_INT8:
		case F_RANDOM_NUMERIC_NUMERIC:
#endif
#ifdef F_RANDOM_NORMAL
		case F_RANDOM_NORMAL:
#endif
		case F_SETSEED:
		case F_GEN_RANDOM_UUID:
		case F_PG_SLEEP:
			/* reading sequences (nextval and setval are refused) */
		case F_CURRVAL:
		case F_LASTVAL:
		case F_PG_SEQUENCE_LAST_VALUE:
			/* advisory locks: no data, and they end with the session */
		case F_PG_ADVISORY_LOCK_INT8:
		case F_PG_ADVISORY_LOCK_INT4_INT4:
		case F_PG_ADVISORY_LOCK_SHARED_INT8:
		case F_PG_ADVISORY_LOCK_SHARED_INT4_INT4:
		case F_PG_ADVISORY_UNLOCK_INT8:
		case F_PG_ADVISORY_UNLOCK_INT4_INT4:
		case F_PG_ADVISORY_UNLOCK_SHARED_INT8:
		case F_PG_ADVISORY_UNLOCK_SHARED_INT4_INT4:
		case F_PG_ADVISORY_UNLOCK_ALL:
		case F_PG_ADVISORY_XACT_LOCK_INT8:
		case F_PG_ADVISORY_XACT_LOCK_INT4_INT4:
		case F_PG_ADVISORY_XACT_LOCK_SHARED_INT8:
		case F_PG_ADVISORY_XACT_LOCK_SHARED_INT4_INT4:
		case F_PG_TRY_ADVISORY_LOCK_INT8:
		case F_PG_TRY_ADVISORY_LOCK_INT4_INT4:
		case F_PG_TRY_ADVISORY_LOCK_SHARED_INT8:
		case F_PG_TRY_ADVISORY_LOCK_SHARED_INT4_INT4:
		case F_PG_TRY_ADVISORY_XACT_LOCK_INT8:
		case F_PG_TRY_ADVISORY_XACT_LOCK_INT4_INT4:
		case F_PG_TRY_ADVISORY_XACT_LOCK_SHARED_INT8:
		case F_PG_TRY_ADVISORY_XACT_LOCK_SHARED_INT4_INT4:
			/* set_config(): what SET does */
		case F_SET_CONFIG:
			/* reading large objects (opening one for writing is harmless: writing is refused) */
		case F_LO_OPEN:
		case F_LOREAD:
		case F_LO_LSEEK:
		case F_LO_LSEEK64:
		case F_LO_TELL:
		case F_LO_TELL64:
		case F_LO_CLOSE:
		case F_LO_GET_OID:
		case F_LO_GET_OID_INT8_INT4:
			/* the server's state, as the system views and monitoring read it */
		case F_PG_LOCK_STATUS:
		case F_PG_BLOCKING_PIDS:
		case F_PG_PREPARED_XACT:
		case F_PG_STAT_GET_XACT_BLOCKS_FETCHED:
		case F_PG_STAT_GET_XACT_BLOCKS_HIT:
		case F_PG_STAT_GET_XACT_FUNCTION_CALLS:
		case F_PG_STAT_GET_XACT_FUNCTION_SELF_TIME:
		case F_PG_STAT_GET_XACT_FUNCTION_TOTAL_TIME:
		case F_PG_STAT_GET_XACT_NUMSCANS:
		case F_PG_STAT_GET_XACT_TUPLES_DELETED:
		case F_PG_STAT_GET_XACT_TUPLES_FETCHED:
		case F_PG_STAT_GET_XACT_TUPLES_HOT_UPDATED:
		case F_PG_STAT_GET_XACT_TUPLES_INSERTED:
		case F_PG_STAT_GET_XACT_TUPLES_RETURNED:
		case F_PG_STAT_GET_XACT_TUPLES_UPDATED:
		case F_PG_NOTIFICATION_QUEUE_USAGE:
		case F_PG_IS_IN_RECOVERY:
		case F_PG_CURRENT_WAL_LSN:
		case F_PG_CURRENT_WAL_INSERT_LSN:
		case F_PG_CURRENT_WAL_FLUSH_LSN:
		case F_PG_LAST_WAL_RECEIVE_LSN:
		case F_PG_LAST_WAL_REPLAY_LSN:
		case F_PG_LAST_XACT_REPLAY_TIMESTAMP:
		case F_PG_XACT_STATUS:
		case F_TXID_STATUS:
		case F_PG_DATABASE_SIZE_OID:
		case F_PG_DATABASE_SIZE_NAME:
		case F_PG_RELATION_SIZE_REGCLASS_TEXT:
		case F_PG_TABLE_SIZE:
		case F_PG_INDEXES_SIZE:
		case F_PG_TOTAL_RELATION_SIZE:
			return true;
		default:
			return false;
	}
}

/*
 * One of the switch's own C functions (its read functions, ks_wait,
 * ks_guard, ks_engage: escalating is free), whichever schema the extension
 * was created in.
 */
static bool
switch_function(HeapTuple proc)
{
	Form_pg_proc form = (Form_pg_proc) GETSTRUCT(proc);
	Datum		bin;
	bool		isnull;
	char	   *path;
	bool		ours;

	if (form->prolang != ClanguageId)
		return false;
	bin = SysCacheGetAttr(PROCOID, proc, Anum_pg_proc_probin, &isnull);
	if (isnull)
		return false;
	path = TextDatumGetCString(bin);
	ours = strcmp(path, "$libdir/killswitch") == 0;
	pfree(path);
	return ours;
}

/* Named in killswitch.allowed_functions? */
static bool
setting_names(HeapTuple proc)
{
	Form_pg_proc form = (Form_pg_proc) GETSTRUCT(proc);
	const char *text;
	char	   *schema;
	bool		named = false;

	if (allowed == NULL || allowed->n == 0)
		return false;
	text = ALLOWED_TEXT(allowed);
	schema = get_namespace_name(form->pronamespace);
	for (int i = 0; i < allowed->n && !named && schema != NULL; i++)
		named = strcmp(text + allowed->names[i].schema, schema) == 0 &&
			strcmp(text + allowed->names[i].name, NameStr(form->proname)) == 0;
	return named;
}

/*
 * Is this volatile function (its pg_proc row) on the allowlist: a reviewed
 * built-in, one of the switch's own, or named by the administrator?
 */
bool
ks_allowlisted(Oid fn, HeapTuple proc)
{
	return builtin_allowed(fn) || switch_function(proc) || setting_names(proc);
}

/* Split at the commas outside double quotes; each item trimmed of spaces. */
static List *
split_items(const char *value)
{
	List	   *items = NIL;
	StringInfoData item;
	bool		quoted = false;

	initStringInfo(&item);
	for (const char *p = value;; p++)
	{
		if (*p == '\0' || (*p == ',' && !quoted))
		{
			char	   *s = item.data;
			int			len = item.len;

			while (len > 0 && scanner_isspace(s[len - 1]))
				s[--len] = '\0';
			while (scanner_isspace(*s))
				s++;
			if (*s != '\0' || *p == ',')
				items = lappend(items, pstrdup(s));
			resetStringInfo(&item);
			if (*p == '\0')
				break;
			continue;
		}
		if (*p == '"')
			quoted = !quoted;
		appendStringInfoChar(&item, *p);
	}
	return items;
}

/*
 * GUC check hook: every entry a schema-qualified function name.  An
 * unqualified one would be looked up on each session's search_path, which
 * agents may control.  The parsed list goes to the assign hook as extra.
 */
bool
ks_check_allowed_functions(char **newval, void **extra, GucSource source)
{
	List	   *items = split_items(*newval);
	StringInfoData text;
	AllowedNames *list;
	int			i = 0;
	ListCell   *lc;

	initStringInfo(&text);
	list = palloc0(offsetof(AllowedNames, names) +
				   sizeof(list->names[0]) * list_length(items));
	foreach(lc, items)
	{
		char	   *item = lfirst(lc);
		List	   *parts;

		if (!SplitIdentifierString(pstrdup(item), '.', &parts) || list_length(parts) != 2)
		{
			GUC_check_errdetail("\"%s\" is not a schema-qualified function name.", item);
			GUC_check_errhint("Write each function as schema.name, for example public.pg_prewarm.");
			return false;
		}
		list->names[i].schema = text.len;
		appendBinaryStringInfo(&text, linitial(parts), strlen(linitial(parts)) + 1);
		list->names[i].name = text.len;
		appendBinaryStringInfo(&text, lsecond(parts), strlen(lsecond(parts)) + 1);
		i++;
	}
	list->n = i;
	{
		Size		head = offsetof(AllowedNames, names) + sizeof(list->names[0]) * i;
		char	   *block = ks_guc_malloc(head + text.len);

		if (block == NULL)
		{
			GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
			GUC_check_errmsg("out of memory");
			return false;
		}
		memcpy(block, list, head);
		memcpy(block + head, text.data, text.len);
		*extra = block;
	}
	return true;
}

/* GUC assign hook: take the new list; every function is judged again. */
void
ks_assign_allowed_functions(const char *newval, void *extra)
{
	allowed = extra;
	ks_forget_function_verdicts();
}
