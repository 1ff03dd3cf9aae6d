/*
 * json.c — parse JSON into a small tree that keeps every member, so that
 * unknown keys are signed too.  Parsing is PostgreSQL's own
 * (common/jsonapi.h); only the tree is ours.  canonical.c prints it back.
 * Frontend-safe.
 */
#ifndef FRONTEND
#include "postgres.h"
#else
#include "postgres_fe.h"
#endif

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#include "compat.h"
#include "store.h"

/* Parser state handed to the jsonapi callbacks. */
typedef struct KsJsonBuild
{
	KsJson	   *root;
	KsJson	   *stack[KS_MAX_JSON_DEPTH + 1];
	int			depth;
	char	   *pending_key;	/* member name waiting for its value */
	char	   *problem;		/* first problem seen, or NULL */
} KsJsonBuild;

/* Make an empty node of the given kind. */
static KsJson *
json_node(KsJsonKind kind)
{
	KsJson	   *node = palloc0(sizeof(KsJson));

	node->kind = kind;
	return node;
}

/* Append a member (key may be NULL for arrays) to a container. */
static void
json_push(KsJson *container, char *key, KsJson *value)
{
	if (container->nitems == container->maxitems)
	{
		int			newmax = container->maxitems ? container->maxitems * 2 : 8;

		if (container->maxitems == 0)
		{
			container->keys = palloc(sizeof(char *) * newmax);
			container->items = palloc(sizeof(KsJson *) * newmax);
		}
		else
		{
			container->keys = repalloc(container->keys, sizeof(char *) * newmax);
			container->items = repalloc(container->items, sizeof(KsJson *) * newmax);
		}
		container->maxitems = newmax;
	}
	container->keys[container->nitems] = key;
	container->items[container->nitems] = value;
	container->nitems++;
}

/* Record the first problem; later ones would only repeat its cause. */
static void
build_problem(KsJsonBuild *b, const char *msg)
{
	if (b->problem == NULL)
		b->problem = pstrdup(msg);
}

/*
 * Is this NUL-terminated string valid UTF-8?  The lexer passes a string's
 * raw bytes through unjudged, so a member name or value is checked here.
 */
static bool
utf8_valid(const char *s)
{
	int			len = strlen(s);

	return pg_encoding_verifymbstr(PG_UTF8, s, len) == len;
}

/* Attach a finished value where the parser is: root, member or element. */
static void
build_attach(KsJsonBuild *b, KsJson *value)
{
	KsJson	   *parent = b->depth > 0 ? b->stack[b->depth - 1] : NULL;

	if (parent == NULL)
	{
		b->root = value;
		return;
	}
	if (parent->kind == KSJ_OBJECT)
	{
		char	   *key = b->pending_key;

		b->pending_key = NULL;
		if (key == NULL)
		{
			build_problem(b, "object member without a name");
			return;
		}
		if (!utf8_valid(key))
			build_problem(b, "member name is not valid UTF-8");
		for (int i = 0; i < parent->nitems; i++)
			if (strcmp(parent->keys[i], key) == 0)
				build_problem(b, "duplicate member name");
		json_push(parent, key, value);
	}
	else
		json_push(parent, NULL, value);
}

/* Open an object or array. */
static void
build_open(KsJsonBuild *b, KsJsonKind kind)
{
	KsJson	   *node = json_node(kind);

	build_attach(b, node);
	if (b->depth >= KS_MAX_JSON_DEPTH)
	{
		build_problem(b, "nested too deeply");
		return;
	}
	b->stack[b->depth++] = node;
}

static KS_JSON_CB_RETURN_TYPE
cb_object_start(void *state)
{
	build_open((KsJsonBuild *) state, KSJ_OBJECT);
	KS_JSON_CB_OK;
}

static KS_JSON_CB_RETURN_TYPE
cb_array_start(void *state)
{
	build_open((KsJsonBuild *) state, KSJ_ARRAY);
	KS_JSON_CB_OK;
}

static KS_JSON_CB_RETURN_TYPE
cb_close(void *state)
{
	KsJsonBuild *b = (KsJsonBuild *) state;

	if (b->depth > 0)
		b->depth--;
	KS_JSON_CB_OK;
}

static KS_JSON_CB_RETURN_TYPE
cb_field_start(void *state, char *fname, bool isnull)
{
	((KsJsonBuild *) state)->pending_key = fname;
	KS_JSON_CB_OK;
}

/* Is this number token a plain integer, the only kind the format has? */
static bool
integer_token(const char *token, int64 *value)
{
	const char *p = token;
	int64		v = 0;
	bool		neg = false;

	if (*p == '-')
		neg = true, p++;
	if (*p == '\0')
		return false;
	for (; *p; p++)
	{
		if (*p < '0' || *p > '9')
			return false;
		/* accumulate negatively so that INT64_MIN fits */
		if (v < (PG_INT64_MIN + (*p - '0')) / 10)
			return false;
		v = v * 10 - (*p - '0');
	}
	if (!neg)
	{
		if (v == PG_INT64_MIN)
			return false;
		v = -v;
	}
	*value = v;
	return true;
}

static KS_JSON_CB_RETURN_TYPE
cb_scalar(void *state, char *token, JsonTokenType tokentype)
{
	KsJsonBuild *b = (KsJsonBuild *) state;
	KsJson	   *node;

	switch (tokentype)
	{
		case JSON_TOKEN_STRING:
			node = json_node(KSJ_STRING);
			node->str = token;
			if (!utf8_valid(token))
				build_problem(b, "string is not valid UTF-8");
			break;
		case JSON_TOKEN_NUMBER:
			node = json_node(KSJ_INT);
			if (!integer_token(token, &node->ival))
				build_problem(b, "number is not an integer in the 64-bit range");
			break;
		case JSON_TOKEN_TRUE:
		case JSON_TOKEN_FALSE:
			node = json_node(KSJ_BOOL);
			node->bval = (tokentype == JSON_TOKEN_TRUE);
			break;
		default:
			node = json_node(KSJ_NULL);
			break;
	}
	build_attach(b, node);
	KS_JSON_CB_OK;
}

/*
 * Deepest bracket nesting outside strings.  Checked before parsing because
 * the recursive-descent parser has no depth limit in frontend code.
 */
static int
nesting_depth(const char *text, size_t len)
{
	int			depth = 0,
				max = 0;
	bool		in_string = false;

	for (size_t i = 0; i < len; i++)
	{
		char		c = text[i];

		if (in_string)
		{
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if (c == '{' || c == '[')
		{
			depth++;
			max = Max(max, depth);
		}
		else if (c == '}' || c == ']')
			depth--;
	}
	return max;
}

/* The value of four hex digits, or -1 when they are not four hex digits. */
static int
hex4(const char *p, const char *end)
{
	int			v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++)
	{
		char		c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/*
 * Turn every \uXXXX escape of a character beyond ASCII (a surrogate pair
 * as one character) into its UTF-8 bytes, in place, before jsonapi sees
 * the text.  Returns the new length, or -1 with a problem.
 *
 * Why ourselves: jsonapi's backend build decodes such an escape with
 * pg_unicode_to_server(), into the *database* encoding.  The postmaster's
 * is SQL_ASCII, where that conversion ERRORs (a FATAL: a server that does
 * not start after ks_engage(..., 'café')), and a LATIN1 database would get
 * LATIN1 bytes where the tree must hold UTF-8.  Reporting the database
 * encoding as UTF-8 around pg_parse_json would also work, but would bend a
 * global that error reporting and the client conversion read; decoding
 * here costs one pass, gives the same UTF-8 in the backend, the postmaster
 * and FRONTEND builds of every version, and can never ERROR.  jsonapi then
 * sees only ASCII escapes, which it decodes alike in every encoding.
 *
 * Only bytes inside strings change (and only shrink: 6 or 12 bytes of
 * escape become at most 4).  A JSON string cannot hide a quote, so this walk
 * sees the strings the lexer sees, up to the lexer's first syntax error,
 * where it stops anyway; escapes it does not understand are left for the
 * lexer to reject.  \u0000 (which text cannot hold) and a lone surrogate
 * are problems, like any other invalid JSON.
 */
static int
decode_unicode_escapes(char *text, int len, char *problem, size_t problemlen)
{
	const char *end = text + len;
	const char *in = text;
	char	   *out = text;
	bool		in_string = false;

	while (in < end)
	{
		char		c = *in;

		if (!in_string)
		{
			if (c == '"')
				in_string = true;
			*out++ = *in++;
			continue;
		}
		if (c == '"')
		{
			in_string = false;
			*out++ = *in++;
			continue;
		}
		if (c != '\\' || in + 1 >= end)
		{
			*out++ = *in++;
			continue;
		}
		if (in[1] == 'u')
		{
			int			unit = hex4(in + 2, end);
			pg_wchar	cp = (pg_wchar) unit;
			int			used = 6;

			if (unit == 0)
			{
				snprintf(problem, problemlen, "string contains \\u0000");
				return -1;
			}
			if (unit >= 0 && is_utf16_surrogate_first(cp))
			{
				int			second = (end - in >= 12 && in[6] == '\\' && in[7] == 'u')
				? hex4(in + 8, end) : -1;

				if (second < 0 || !is_utf16_surrogate_second((pg_wchar) second))
				{
					snprintf(problem, problemlen,
							 "string contains a lone UTF-16 surrogate \\u%04x", unit);
					return -1;
				}
				cp = surrogate_pair_to_codepoint(cp, (pg_wchar) second);
				used = 12;
			}
			else if (unit >= 0 && is_utf16_surrogate_second(cp))
			{
				snprintf(problem, problemlen,
						 "string contains a lone UTF-16 surrogate \\u%04x", unit);
				return -1;
			}
			if (unit >= 0x80)
			{
				unicode_to_utf8(cp, (unsigned char *) out);
				out += pg_utf_mblen((unsigned char *) out);
				in += used;
				continue;
			}
		}
		/* any other escape (ASCII \uXXXX too) is the lexer's: copy it whole */
		*out++ = *in++;
		*out++ = *in++;
	}
	return (int) (out - text);
}

/*
 * Problems are logged by the postmaster and stored as text in any database
 * encoding: keep them ASCII (a syntax error quotes the file's bytes).
 */
static void
ascii_only(char *s)
{
	for (; *s; s++)
		if ((unsigned char) *s >= 0x80 || (unsigned char) *s < 0x20)
			*s = '?';
}

/*
 * Describe a syntax error.  Frontend builds of libpgcommon in some
 * distributions lack json_errdetail(), so there we name the position only.
 */
static const char *
json_problem(JsonParseErrorType err, JsonLexContext *lex)
{
#ifdef FRONTEND
	return psprintf("syntax error (code %d) at byte %d", (int) err,
					(int) (lex->token_start ? lex->token_start - lex->input : 0));
#else
	return json_errdetail(err, lex);
#endif
}

/*
 * Parse text into a tree.  Returns NULL and a message on any problem: bad
 * syntax, invalid UTF-8, duplicate names, non-integer numbers, deep nesting.
 */
KsJson *
ks_json_parse(const char *text, size_t len, char *problem, size_t problemlen)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	KsJsonBuild b;
	JsonParseErrorType err;
	char	   *copy;
	int			newlen;

	if (memchr(text, '\0', len) != NULL)
	{
		snprintf(problem, problemlen, "contains a NUL byte");
		return NULL;
	}
	if (nesting_depth(text, len) > KS_MAX_JSON_DEPTH)
	{
		snprintf(problem, problemlen, "nested more than %d levels deep",
				 KS_MAX_JSON_DEPTH);
		return NULL;
	}

	copy = palloc(len + 1);
	memcpy(copy, text, len);
	copy[len] = '\0';
	newlen = decode_unicode_escapes(copy, (int) len, problem, problemlen);
	if (newlen < 0)
		return NULL;
	copy[newlen] = '\0';

	memset(&b, 0, sizeof(b));
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &b;
	sem.object_start = cb_object_start;
	sem.object_end = cb_close;
	sem.array_start = cb_array_start;
	sem.array_end = cb_close;
	sem.object_field_start = cb_field_start;
	sem.scalar = cb_scalar;

	lex = ks_make_json_lex(copy, newlen);
	err = pg_parse_json(lex, &sem);
	if (err != JSON_SUCCESS)
	{
		snprintf(problem, problemlen, "not valid JSON: %s", json_problem(err, lex));
		ascii_only(problem);
		return NULL;
	}
	if (b.problem != NULL)
	{
		snprintf(problem, problemlen, "%s", b.problem);
		return NULL;
	}
	return b.root;
}

/* A new empty object, to fill with ks_json_put_*(). */
KsJson *
ks_json_object(void)
{
	return json_node(KSJ_OBJECT);
}

/* Add a string member (NULL gives JSON null); the strings are not copied. */
void
ks_json_put_string(KsJson *object, const char *key, const char *value)
{
	KsJson	   *node = json_node(value ? KSJ_STRING : KSJ_NULL);

	node->str = (char *) value;
	json_push(object, (char *) key, node);
}

/* Add an integer member. */
void
ks_json_put_int(KsJson *object, const char *key, int64 value)
{
	KsJson	   *node = json_node(KSJ_INT);

	node->ival = value;
	json_push(object, (char *) key, node);
}

/* Add a boolean member. */
void
ks_json_put_bool(KsJson *object, const char *key, bool value)
{
	KsJson	   *node = json_node(KSJ_BOOL);

	node->bval = value;
	json_push(object, (char *) key, node);
}

/* Add a member that is itself an object (or array); it is not copied. */
void
ks_json_put_value(KsJson *object, const char *key, KsJson *value)
{
	json_push(object, (char *) key, value);
}

/* The member named key of an object, or NULL. */
const KsJson *
ks_json_get(const KsJson *object, const char *key)
{
	if (object == NULL || object->kind != KSJ_OBJECT)
		return NULL;
	for (int i = 0; i < object->nitems; i++)
		if (strcmp(object->keys[i], key) == 0)
			return object->items[i];
	return NULL;
}
