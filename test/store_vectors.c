/*
 * store_vectors.c — check the C canonical form and signatures against the
 * vectors Python produced (test/vectors/vectors.json): for every object, our
 * canonical bytes must equal json.dumps(..., separators=(",", ":"),
 * sort_keys=True) and our HMAC-SHA256 must equal Python's.  Built with
 * -DFRONTEND from the same store.c/json.c as the server module.
 *
 * Usage: store_vectors vectors.json     (exit 0 when every vector passes)
 */
#include "postgres_fe.h"

#include "common/logging.h"
#include "store.h"

int
main(int argc, char **argv)
{
	char	   *text;
	size_t		len;
	char		problem[KS_PROBLEM_LEN];
	KsJson	   *root;
	const KsJson *secret;
	const KsJson *vectors;
	int			passed = 0,
				failed = 0;

	pg_logging_init(argv[0]);
	if (argc != 2)
	{
		fprintf(stderr, "usage: %s vectors.json\n", argv[0]);
		return 2;
	}
	if (!ks_read_file(argv[1], 16 * 1024 * 1024, &text, &len, problem, sizeof(problem)) ||
		(root = ks_json_parse(text, len, problem, sizeof(problem))) == NULL)
	{
		fprintf(stderr, "%s: %s\n", argv[1], problem);
		return 2;
	}
	secret = ks_json_get(root, "secret");
	vectors = ks_json_get(root, "vectors");
	if (secret == NULL || secret->kind != KSJ_STRING || vectors == NULL || vectors->kind != KSJ_ARRAY)
	{
		fprintf(stderr, "%s: not a vectors file\n", argv[1]);
		return 2;
	}
	for (int i = 0; i < vectors->nitems; i++)
	{
		const KsJson *v = vectors->items[i];
		const char *name = ks_json_get(v, "name")->str;
		const char *want = ks_json_get(v, "canonical")->str;
		const char *want_sig = ks_json_get(v, "signature")->str;
		StringInfoData canon;
		char		sig[KS_HEX_DIGEST_LEN + 1];

		initStringInfo(&canon);
		ks_json_canonical(&canon, ks_json_get(v, "object"), NULL);
		ks_hmac_hex(secret->str, strlen(secret->str), canon.data, canon.len, sig);
		if (strcmp(canon.data, want) != 0)
		{
			printf("not ok %d - %s: canonical differs\n#   got:  %s\n#   want: %s\n",
				   i + 1, name, canon.data, want);
			failed++;
		}
		else if (strcmp(sig, want_sig) != 0)
		{
			printf("not ok %d - %s: signature differs (%s, want %s)\n", i + 1, name, sig, want_sig);
			failed++;
		}
		else
		{
			printf("ok %d - %s\n", i + 1, name);
			passed++;
		}
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed == 0 && passed > 0 ? 0 : 1;
}
