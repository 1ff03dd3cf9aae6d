/*
 * encoding.h — the kill switch's text is UTF-8; these cross to a database
 * (encoding.c).
 */
#ifndef KS_ENCODING_H
#define KS_ENCODING_H

extern char *ks_text_to_utf8(const char *s, const char *name);
extern char *ks_utf8_to_db(const char *utf8);

#endif							/* KS_ENCODING_H */
