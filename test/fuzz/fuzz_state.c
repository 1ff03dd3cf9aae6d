/*
 * fuzz_state.c — libFuzzer harness for the state-file reader: JSON parsing,
 * canonicalization and signature verification (src/json.c, canonical.c,
 * store.c and the files.c/isotime.c under them, built for frontend programs).
 * Properties checked on every input:
 *   - nothing crashes, whatever the bytes;
 *   - an input accepted as a state has a generation within its bound
 *     (2^53 - 1) and re-serializes to a file that is accepted again with the
 *     same mode, generation, texts and "replaces" (round trip);
 *   - canonicalization is idempotent: canonical(parse(canonical(x))) ==
 *     canonical(x).
 * Frontend palloc() never frees, so the link wraps the allocator (see
 * alloc_wrap.c) and every input's memory is released after it.
 *
 * Build and run: make fuzz-run (short), see README for the long run.
 */
#include "postgres_fe.h"

#include "store.h"

extern void ks_fuzz_arena_reset(void);

#define SECRET "fuzzing-secret"
#define RELEASE_KEY "fuzzing-release-key"

/* Abort (so libFuzzer reports the input) when a property fails. */
#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "property failed: %s\n", #cond); abort(); } } while (0)

/* Does a nullable string equal another? */
static bool
same_text(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char		problem[KS_PROBLEM_LEN];
	KsState		st;
	KsJson	   *tree;

	/* a verifying reader and a lax one must both survive anything */
	(void) ks_state_from_text((const char *) data, size, SECRET, strlen(SECRET), NULL,
							  true, &st, problem, sizeof(problem));
	if (ks_state_from_text((const char *) data, size, NULL, 0, NULL,
						   false, &st, problem, sizeof(problem)) == KS_FILE_UNSIGNED)
	{
		/* round trip: what we would write is read back the same */
		StringInfoData text;
		KsState		back;

		initStringInfo(&text);
		CHECK(ks_state_file_text(&text, &st, SECRET, strlen(SECRET), NULL, 0));
		CHECK(ks_state_from_text(text.data, text.len, SECRET, strlen(SECRET), NULL,
								 true, &back, problem, sizeof(problem)) == KS_FILE_VALID);
		CHECK(st.generation <= KS_MAX_GENERATION);	/* beyond the bound is never a state */
		CHECK(back.mode == st.mode && back.generation == st.generation);
		CHECK(same_text(back.replaces, st.replaces));
		CHECK(same_text(back.reason, st.reason) && same_text(back.triggered_by, st.triggered_by));
		CHECK(same_text(back.engaged_at, st.engaged_at));
		/* without a release key no release_signature; with one, it verifies */
		CHECK(!ks_state_release_signed(&back, RELEASE_KEY, strlen(RELEASE_KEY), NULL,
									   problem, sizeof(problem)));
		resetStringInfo(&text);
		CHECK(ks_state_file_text(&text, &st, SECRET, strlen(SECRET),
								 RELEASE_KEY, strlen(RELEASE_KEY)));
		CHECK(ks_state_from_text(text.data, text.len, SECRET, strlen(SECRET), NULL,
								 true, &back, problem, sizeof(problem)) == KS_FILE_VALID);
		CHECK(ks_state_release_signed(&back, RELEASE_KEY, strlen(RELEASE_KEY), NULL,
									  problem, sizeof(problem)));
		CHECK(!ks_state_release_signed(&back, SECRET, strlen(SECRET), NULL,
									   problem, sizeof(problem)));
	}

	tree = ks_json_parse((const char *) data, size, problem, sizeof(problem));
	if (tree != NULL)
	{
		StringInfoData once,
					twice;
		KsJson	   *again;

		initStringInfo(&once);
		ks_json_canonical(&once, tree, NULL);
		again = ks_json_parse(once.data, once.len, problem, sizeof(problem));
		CHECK(again != NULL);
		initStringInfo(&twice);
		ks_json_canonical(&twice, again, NULL);
		CHECK(once.len == twice.len && memcmp(once.data, twice.data, once.len) == 0);
	}
	ks_fuzz_arena_reset();
	return 0;
}
