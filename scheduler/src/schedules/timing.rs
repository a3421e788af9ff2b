//! When a schedule fires: its cron expression (seconds optional) read in its time zone,
//! and the two rules every schedule keeps: it fires at all, and never more often than the
//! scheduler's minimum interval.

use std::time::Duration;

use chrono::{DateTime, Datelike, Days, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::{Cron, Weekday};

use crate::spec::Invalid;

/// Firings whose spacing is checked when a schedule is created: enough to meet every gap
/// of a list like `0,59 * * * *` whatever the hour it is created at.
const GAPS_CHECKED: usize = 16;

/// A schedule fires within this many years or never. The calendar repeats every 28 years
/// (between century years), so every month starts on every weekday, leap year or not,
/// within that time: a date that exists is met, and one that does not (`0 0 30 2 *`) is
/// known after some 10,000 day checks, where the cron library's own search walks on to
/// the year 5000.
const HORIZON_YEARS: u64 = 28;

/// A cron expression parsed, in its time zone.
pub(super) struct Timing {
    cron: Cron,
    tz: Tz,
}

impl Timing {
    /// Parses both; a refusal names `cron` or `time_zone`.
    pub(super) fn parse(cron: &str, time_zone: &str) -> Result<Self, Invalid> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(cron)
            .map_err(|e| Invalid::new("cron", e.to_string()))?;
        let tz = time_zone.parse::<Tz>().map_err(|_| {
            Invalid::new(
                "time_zone",
                format!("{time_zone:?} is not an IANA time zone"),
            )
        })?;
        Ok(Self { cron, tz })
    }

    /// The first occurrence after `from` (or at it, when `inclusive`); none when the
    /// expression never fires again (`0 0 30 2 *`).
    fn next(&self, from: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        if !self.has_a_day_from(from) {
            return None;
        }
        self.cron
            .find_next_occurrence(&from.with_timezone(&self.tz), inclusive)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Whether a day matching the expression's day, weekday and month fields comes within
    /// [`HORIZON_YEARS`] of `from` (every day has times of day that match).
    fn has_a_day_from(&self, from: DateTime<Utc>) -> bool {
        let pattern = &self.cron.pattern;
        let start = from.with_timezone(&self.tz).date_naive();
        let Some(end) = start.checked_add_days(Days::new(HORIZON_YEARS * 366)) else {
            return false;
        };
        start.iter_days().take_while(|d| *d < end).any(|d| {
            let weekday = Weekday::from_days_from_sunday(d.weekday().num_days_from_sunday());
            pattern.month_match(d.month()).unwrap_or(false)
                && pattern.year_match(d.year()).unwrap_or(false)
                && pattern
                    .day_match(d.year(), d.month(), d.day(), weekday)
                    .unwrap_or(false)
        })
    }

    /// The latest occurrence at or before `at`: what a (late) firing stands for.
    pub(super) fn latest(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&at.with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first occurrence after `after` that is at least `min_interval` after the one
    /// the last firing stood for (`last`): however the expression is written, one
    /// schedule never fires more often than that.
    pub(super) fn next_firing(
        &self,
        last: Option<DateTime<Utc>>,
        after: DateTime<Utc>,
        min_interval: Duration,
    ) -> Option<DateTime<Utc>> {
        let floor = match last {
            Some(last) => Some(last.checked_add_signed(delta(min_interval))?),
            None => None,
        };
        match floor {
            Some(floor) if floor > after => self.next(floor, true),
            _ => self.next(after, false),
        }
    }

    /// What a new schedule must pass: it fires after `now`, and its next firings are at
    /// least `min_interval` apart. Returns its first firing.
    pub(super) fn check(
        &self,
        now: DateTime<Utc>,
        min_interval: Duration,
    ) -> Result<DateTime<Utc>, Invalid> {
        let first = self.next(now, false).ok_or_else(|| {
            Invalid::new("cron", "the expression never fires: no date matches it")
        })?;
        let mut last = first;
        for _ in 1..GAPS_CHECKED {
            let Some(next) = self.next(last, false) else {
                break;
            };
            if next - last < delta(min_interval) {
                return Err(Invalid::new(
                    "cron",
                    format!(
                        "the expression fires {} s apart; this scheduler fires a schedule \
                         every {} s at most",
                        (next - last).num_seconds(),
                        min_interval.as_secs()
                    ),
                ));
            }
            last = next;
        }
        Ok(first)
    }
}

pub(super) fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn cron_is_read_in_the_schedules_time_zone() {
        let created = at(2026, 11, 28, 12, 0, 0);
        // 02:00 in Berlin (UTC+1 in winter) is 01:00 UTC.
        let t = Timing::parse("0 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            t.next_firing(None, created, FIVE_MINUTES),
            Some(at(2026, 11, 29, 1, 0, 0))
        );
        let t = Timing::parse("*/5 * * * * *", "UTC").unwrap();
        assert_eq!(
            t.next_firing(None, created, Duration::from_secs(1)),
            Some(at(2026, 11, 28, 12, 0, 5))
        );
    }

    #[test]
    fn many_missed_occurrences_collapse_into_one_firing() {
        let t = Timing::parse("0 2 * * *", "UTC").unwrap();
        let now = at(2026, 11, 28, 9, 30, 0);
        // Eight nights were missed; the firing stands for the latest one...
        let occurrence = t.latest(now).unwrap();
        assert_eq!(occurrence, at(2026, 11, 28, 2, 0, 0));
        // ...and the next one is tomorrow, not the next missed night.
        assert_eq!(
            t.next_firing(Some(occurrence), now, FIVE_MINUTES),
            Some(at(2026, 11, 29, 2, 0, 0))
        );
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        let field = |cron, tz| Timing::parse(cron, tz).err().unwrap().field;
        assert_eq!(field("61 * * * *", "UTC"), "cron");
        assert_eq!(field("0 2 * * *", "Mars/Olympus"), "time_zone");
    }

    #[test]
    fn dates_that_do_not_exist_never_fire_and_are_refused() {
        let now = at(2026, 11, 28, 12, 0, 0);
        for cron in ["0 0 30 2 *", "0 0 31 4 *", "0 0 0 31 11 *"] {
            let t = Timing::parse(cron, "UTC").unwrap();
            assert_eq!(t.next_firing(None, now, FIVE_MINUTES), None, "{cron}");
            let e = t.check(now, FIVE_MINUTES).unwrap_err();
            assert!(
                e.field == "cron" && e.reason.contains("never"),
                "{cron}: {e}"
            );
        }
        // A leap day exists, every four years.
        let t = Timing::parse("0 0 29 2 *", "UTC").unwrap();
        assert_eq!(
            t.check(now, FIVE_MINUTES).unwrap(),
            at(2028, 2, 29, 0, 0, 0)
        );
    }

    #[test]
    fn firings_closer_than_the_minimum_are_refused_wherever_they_fall() {
        // Created at :30 or at :59:30, `59,0` fires a minute apart somewhere.
        for now in [at(2026, 11, 28, 12, 30, 0), at(2026, 11, 28, 12, 59, 30)] {
            for cron in [
                "* * * * * *",
                "*/10 * * * * *",
                "*/2 * * * *",
                "59,0 * * * *",
            ] {
                let e = Timing::parse(cron, "UTC")
                    .unwrap()
                    .check(now, FIVE_MINUTES)
                    .unwrap_err();
                assert!(e.field == "cron" && e.reason.contains("300"), "{cron}: {e}");
            }
            for cron in ["*/5 * * * *", "0 2 * * *", "0 0 * * 1"] {
                let t = Timing::parse(cron, "UTC").unwrap();
                assert!(t.check(now, FIVE_MINUTES).is_ok(), "{cron}");
            }
        }
        let t = Timing::parse("* * * * * *", "UTC").unwrap();
        assert!(
            t.check(at(2026, 1, 1, 0, 0, 0), Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn a_firing_keeps_the_minimum_interval_from_the_last_one() {
        // `59,0` slipped in (a lower minimum then): still never two firings in 5 minutes.
        let t = Timing::parse("59,0 * * * *", "UTC").unwrap();
        let last = at(2026, 11, 28, 12, 59, 0);
        let now = at(2026, 11, 28, 12, 59, 1);
        assert_eq!(
            t.next_firing(Some(last), now, FIVE_MINUTES),
            Some(at(2026, 11, 28, 13, 59, 0))
        );
        // An occurrence exactly the minimum later is allowed.
        let t = Timing::parse("*/5 * * * *", "UTC").unwrap();
        let last = at(2026, 11, 28, 13, 0, 0);
        assert_eq!(
            t.next_firing(Some(last), last, FIVE_MINUTES),
            Some(at(2026, 11, 28, 13, 5, 0))
        );
    }
}
