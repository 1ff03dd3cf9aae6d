/*
 * alloc_wrap.c — an arena behind frontend palloc() for the fuzzer: the link
 * uses -Wl,--wrap for each allocation function, every chunk is kept on a
 * list, and ks_fuzz_arena_reset() frees them all after each input.
 */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <stddef.h>

typedef struct Chunk
{
	struct Chunk *next;
	struct Chunk *prev;
	size_t		size;
	/* 16-byte alignment of what follows, as malloc gives */
	long double align[];
} Chunk;

static Chunk arena = {&arena, &arena, 0};

void	   *__wrap_palloc(size_t size);
void	   *__wrap_palloc0(size_t size);
void	   *__wrap_palloc_extended(size_t size, int flags);
void	   *__wrap_repalloc(void *ptr, size_t size);
void		__wrap_pfree(void *ptr);
char	   *__wrap_pstrdup(const char *s);
char	   *__wrap_pnstrdup(const char *s, size_t n);
void	   *__wrap_pg_malloc(size_t size);
void	   *__wrap_pg_malloc0(size_t size);
void	   *__wrap_pg_realloc(void *ptr, size_t size);
void		__wrap_pg_free(void *ptr);
char	   *__wrap_pg_strdup(const char *s);
void		ks_fuzz_arena_reset(void);

/* Put a chunk at the head of the arena list; return its usable memory. */
static void *
link_chunk(Chunk *c, size_t size)
{
	if (c == NULL)
	{
		fprintf(stderr, "out of memory\n");
		abort();
	}
	c->size = size;
	c->next = arena.next;
	c->prev = &arena;
	arena.next->prev = c;
	arena.next = c;
	return c->align;
}

/* Allocate a chunk on the arena list. */
static void *
chunk_alloc(size_t size, int zero)
{
	return link_chunk(zero ? calloc(1, sizeof(Chunk) + size) : malloc(sizeof(Chunk) + size), size);
}

/* The chunk of a pointer handed out. */
static Chunk *
chunk_of(void *ptr)
{
	return (Chunk *) ((char *) ptr - offsetof(Chunk, align));
}

/* Grow or shrink a chunk, keeping it on the list. */
static void *
chunk_realloc(void *ptr, size_t size)
{
	Chunk	   *c;

	if (ptr == NULL)
		return chunk_alloc(size, 0);
	c = chunk_of(ptr);
	c->prev->next = c->next;
	c->next->prev = c->prev;
	return link_chunk(realloc(c, sizeof(Chunk) + size), size);
}

/* Free one chunk now. */
static void
chunk_free(void *ptr)
{
	Chunk	   *c;

	if (ptr == NULL)
		return;
	c = chunk_of(ptr);
	c->prev->next = c->next;
	c->next->prev = c->prev;
	free(c);
}

void *__wrap_palloc(size_t size) { return chunk_alloc(size, 0); }
void *__wrap_palloc0(size_t size) { return chunk_alloc(size, 1); }
void *__wrap_palloc_extended(size_t size, int flags) { return chunk_alloc(size, 1); }
void *__wrap_repalloc(void *ptr, size_t size) { return chunk_realloc(ptr, size); }
void __wrap_pfree(void *ptr) { chunk_free(ptr); }
void *__wrap_pg_malloc(size_t size) { return chunk_alloc(size, 0); }
void *__wrap_pg_malloc0(size_t size) { return chunk_alloc(size, 1); }
void *__wrap_pg_realloc(void *ptr, size_t size) { return chunk_realloc(ptr, size); }
void __wrap_pg_free(void *ptr) { chunk_free(ptr); }

char *
__wrap_pstrdup(const char *s)
{
	size_t		n = strlen(s);
	char	   *d = chunk_alloc(n + 1, 0);

	memcpy(d, s, n + 1);
	return d;
}

char *__wrap_pg_strdup(const char *s) { return __wrap_pstrdup(s); }

char *
__wrap_pnstrdup(const char *s, size_t n)
{
	size_t		len = strnlen(s, n);
	char	   *d = chunk_alloc(len + 1, 0);

	memcpy(d, s, len);
	d[len] = '\0';
	return d;
}

/* Free everything allocated since the last reset. */
void
ks_fuzz_arena_reset(void)
{
	while (arena.next != &arena)
		chunk_free(arena.next->align);
}
