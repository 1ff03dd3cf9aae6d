/*
 * canonical.c — print a JSON tree in Python's canonical form:
 * json.dumps(obj, separators=(",", ":"), sort_keys=True) with ensure_ascii
 * on, byte for byte, since that is what signatures cover (ARCHITECTURE §3).
 * Frontend-safe.
 */
#ifndef FRONTEND
#include "postgres.h"
#else
#include "postgres_fe.h"
#endif

#include "mb/pg_wchar.h"

#include "store.h"

/*
 * Decode one UTF-8 sequence of a NUL-terminated string; return its length,
 * or 0 when it is not valid UTF-8 (overlong forms, surrogates, values past
 * U+10FFFF, a sequence cut short by the end of the string).
 */
static int
utf8_decode(const unsigned char *s, pg_wchar *cp)
{
	int			len = pg_utf_mblen(s);

	if (strnlen((const char *) s, len) < (size_t) len || !pg_utf8_islegal(s, len))
		return 0;
	*cp = utf8_to_unicode(s);
	return len;
}

/* Append one \uXXXX escape with lower-case hex, as Python prints it. */
static void
append_u_escape(StringInfo out, unsigned int unit)
{
	appendStringInfo(out, "\\u%04x", unit);
}

/*
 * Append a UTF-8 string as a quoted JSON string with Python's ensure_ascii
 * escaping.  The input must be valid UTF-8 (the parser and the server's
 * text type guarantee it); an invalid byte is escaped as U+FFFD.
 */
void
ks_json_append_string(StringInfo out, const char *utf8)
{
	const unsigned char *p = (const unsigned char *) utf8;

	appendStringInfoChar(out, '"');
	while (*p)
	{
		pg_wchar	cp;
		int			n = utf8_decode(p, &cp);

		if (n == 0)
			cp = 0xFFFD, n = 1;
		p += n;
		switch (cp)
		{
			case '"':
				appendStringInfoString(out, "\\\"");
				break;
			case '\\':
				appendStringInfoString(out, "\\\\");
				break;
			case '\n':
				appendStringInfoString(out, "\\n");
				break;
			case '\r':
				appendStringInfoString(out, "\\r");
				break;
			case '\t':
				appendStringInfoString(out, "\\t");
				break;
			case '\b':
				appendStringInfoString(out, "\\b");
				break;
			case '\f':
				appendStringInfoString(out, "\\f");
				break;
			default:
				/*
				 * Python escapes everything outside ' '..'~', so DEL (0x7F)
				 * too, whatever ARCHITECTURE §3 said; the test vectors hold us to it.
				 */
				if (cp < 0x20 || cp == 0x7F)
					append_u_escape(out, cp);
				else if (cp < 0x80)
					appendStringInfoChar(out, (char) cp);
				else if (cp < 0x10000)
					append_u_escape(out, cp);
				else
				{
					/* astral: a UTF-16 surrogate pair */
					cp -= 0x10000;
					append_u_escape(out, 0xD800 + (cp >> 10));
					append_u_escape(out, 0xDC00 + (cp & 0x3FF));
				}
				break;
		}
	}
	appendStringInfoChar(out, '"');
}

/* qsort comparator over member indexes: code point order is byte order. */
static const KsJson *sort_object;

static int
member_cmp(const void *a, const void *b)
{
	return strcmp(sort_object->keys[*(const int *) a],
				  sort_object->keys[*(const int *) b]);
}

/* Fill order[] with an object's member indexes in canonical order. */
void
ks_json_sorted_members(const KsJson *object, int *order)
{
	for (int i = 0; i < object->nitems; i++)
		order[i] = i;
	sort_object = object;
	qsort(order, object->nitems, sizeof(int), member_cmp);
}

/* Append a value in canonical form; skip_key drops one top-level member. */
void
ks_json_canonical(StringInfo out, const KsJson *value, const char *skip_key)
{
	switch (value->kind)
	{
		case KSJ_NULL:
			appendStringInfoString(out, "null");
			break;
		case KSJ_BOOL:
			appendStringInfoString(out, value->bval ? "true" : "false");
			break;
		case KSJ_INT:
			appendStringInfo(out, INT64_FORMAT, value->ival);
			break;
		case KSJ_STRING:
			ks_json_append_string(out, value->str);
			break;
		case KSJ_ARRAY:
			appendStringInfoChar(out, '[');
			for (int i = 0; i < value->nitems; i++)
			{
				if (i > 0)
					appendStringInfoChar(out, ',');
				ks_json_canonical(out, value->items[i], NULL);
			}
			appendStringInfoChar(out, ']');
			break;
		case KSJ_OBJECT:
			{
				int		   *order = palloc(sizeof(int) * Max(value->nitems, 1));
				bool		first = true;

				ks_json_sorted_members(value, order);
				appendStringInfoChar(out, '{');
				for (int i = 0; i < value->nitems; i++)
				{
					int			k = order[i];

					if (skip_key && strcmp(value->keys[k], skip_key) == 0)
						continue;
					if (!first)
						appendStringInfoChar(out, ',');
					first = false;
					ks_json_append_string(out, value->keys[k]);
					appendStringInfoChar(out, ':');
					ks_json_canonical(out, value->items[k], NULL);
				}
				appendStringInfoChar(out, '}');
				pfree(order);
			}
			break;
	}
}
