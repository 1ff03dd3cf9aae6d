/*
 * isotime.c — the state file's time stamps: what Python's
 * datetime.isoformat() prints, formatted and parsed.  Frontend-safe.
 */
#ifndef FRONTEND
#include "postgres.h"
#else
#include "postgres_fe.h"
#endif

#include <time.h>

#include "store.h"

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64
days_from_civil(int y, int m, int d)
{
	int			era;
	int			yoe,
				doy,
				doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return (int64) era * 146097 + doe - 719468;
}

/* Days in a month of the proleptic Gregorian calendar. */
static int
days_in_month(int y, int m)
{
	static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	bool		leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : days[m - 1];
}

/*
 * Does s begin with text of the shape of pattern, where 'd' stands for a
 * digit and every other character for itself?  sscanf's %d alone would take
 * signs and spaces ("2026-+2-01").
 */
static bool
shaped(const char *s, const char *pattern)
{
	for (; *pattern; s++, pattern++)
	{
		if (*pattern == 'd' ? !(*s >= '0' && *s <= '9') : *s != *pattern)
			return false;
	}
	return true;
}

/* Format microseconds since the Unix epoch as the file's time stamps. */
void
ks_format_iso_utc(int64 unix_usec, char *buf, size_t buflen)
{
	time_t		secs = (time_t) (unix_usec / 1000000);
	int			usec = (int) (unix_usec % 1000000);
	struct tm	tm;

	if (usec < 0)
		usec += 1000000, secs--;
	gmtime_r(&secs, &tm);
	snprintf(buf, buflen, "%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec, usec);
}

/*
 * Parse what Python's datetime.isoformat() prints for an aware time:
 * YYYY-MM-DDTHH:MM:SS[.ffffff](+HH:MM|-HH:MM|Z).
 */
bool
ks_parse_iso(const char *s, int64 *unix_usec)
{
	int			y,
				mo,
				d,
				h,
				mi,
				se,
				n = 0;
	int64		frac = 0;
	int			offset_min = 0;
	const char *p;

	if (!shaped(s, "dddd-dd-ddTdd:dd:dd") ||
		sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &se, &n) != 6 ||
		n != 19)
		return false;
	if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) ||
		h > 23 || mi > 59 || se > 59 || h < 0 || mi < 0 || se < 0)
		return false;
	p = s + 19;
	if (*p == '.')
	{
		int			digits = 0;

		for (p++; *p >= '0' && *p <= '9'; p++, digits++)
		{
			if (digits >= 6)
				return false;
			frac = frac * 10 + (*p - '0');
		}
		if (digits == 0)
			return false;
		for (; digits < 6; digits++)
			frac *= 10;
	}
	if (*p == 'Z')
		p++;
	else if ((*p == '+' || *p == '-') && strlen(p) == 6 && shaped(p + 1, "dd:dd"))
	{
		int			oh,
					om;

		if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2 || oh > 23 || om > 59)
			return false;
		offset_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
		p += 6;
	}
	else
		return false;
	if (*p != '\0')
		return false;
	*unix_usec = ((days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se) -
				  (int64) offset_min * 60) * 1000000 + frac;
	return true;
}
