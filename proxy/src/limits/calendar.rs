//! Calendar days and months in a tenant's own time zone, for daily and monthly cost ceilings.
//!
//! A tenant in Tokyo expects its daily budget to renew at midnight in Tokyo, not in UTC. Each
//! period is named by its local date (`20261123`, `202611`), so a counter key changes exactly
//! when the local calendar does and every replica agrees without coordination. Days are not
//! always 24 hours: daylight saving makes 23- and 25-hour days, some zones start a day at 01:00
//! (midnight skipped), and Samoa skipped 30 December 2011 entirely; the period bounds come
//! from the time zone database (bundled, so every host agrees), never from arithmetic on 86400.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// Earliest instant a period is computed for (1970-01-01T00:00:00Z).
const MIN_SECOND: i64 = 0;
/// Latest instant a period is computed for (9998-12-31T23:59:59Z): later ones are clamped, so
/// every period and its successor stay within what the calendar can represent.
const MAX_SECOND: i64 = 253_370_764_799;

/// A tenant's time zone.
#[derive(Debug, Clone)]
pub struct TenantCalendar {
    tz: TimeZone,
    name: String,
}

/// One calendar day or month in a tenant's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    /// The local date that names it: `YYYYMMDD` for a day, `YYYYMM` for a month.
    pub id: u32,
    /// Unix second of its first instant.
    pub starts_at: i64,
    /// Unix second of the first instant of the next period.
    pub ends_at: i64,
}

impl TenantCalendar {
    /// The calendar of an IANA time zone name (`Europe/Berlin`, `UTC`).
    pub fn new(name: &str) -> Result<Self, String> {
        TimeZone::get(name)
            .map(|tz| Self {
                tz,
                name: name.to_string(),
            })
            .map_err(|_| {
                format!(
                    "unknown time zone `{name}`: use an IANA name such as `Europe/Berlin`, \
                     `America/New_York` or `UTC`"
                )
            })
    }

    /// Coordinated Universal Time: the default for a tenant that names no time zone.
    pub fn utc() -> Self {
        Self {
            tz: TimeZone::UTC,
            name: "UTC".into(),
        }
    }

    /// The IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local day that contains unix second `at`.
    pub fn day(&self, at: i64) -> Period {
        let now = self.local(at);
        let date = now.date();
        let starts_at = self.first_instant(date);
        // The day ends where the next one starts (the year-9999 clamp keeps `tomorrow` valid).
        let ends_at = date
            .tomorrow()
            .map_or(starts_at + 86_400, |next| self.first_instant(next));
        Period {
            id: date_id(date) * 100 + day_of(date),
            starts_at,
            ends_at,
        }
    }

    /// The local month that contains unix second `at`.
    pub fn month(&self, at: i64) -> Period {
        let first = self.local(at).date().first_of_month();
        let starts_at = self.first_instant(first);
        let ends_at = first
            .checked_add(1.month())
            .map_or(starts_at + 31 * 86_400, |next| self.first_instant(next));
        Period {
            id: date_id(first),
            starts_at,
            ends_at,
        }
    }

    /// The local hour (0–23) and weekday (`mon` … `sun`) at Unix second `at`, for policies
    /// (business-hours rules are written in the tenant's own time).
    pub fn clock(&self, at: i64) -> (u8, &'static str) {
        let now = self.local(at);
        let weekday = match now.weekday() {
            jiff::civil::Weekday::Monday => "mon",
            jiff::civil::Weekday::Tuesday => "tue",
            jiff::civil::Weekday::Wednesday => "wed",
            jiff::civil::Weekday::Thursday => "thu",
            jiff::civil::Weekday::Friday => "fri",
            jiff::civil::Weekday::Saturday => "sat",
            jiff::civil::Weekday::Sunday => "sun",
        };
        (u8::try_from(now.hour()).unwrap_or(0), weekday)
    }

    fn local(&self, at: i64) -> Zoned {
        let clamped = at.clamp(MIN_SECOND, MAX_SECOND);
        Timestamp::from_second(clamped)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned(self.tz.clone())
    }

    /// The first instant of a local date: its midnight, or the end of a gap that swallowed
    /// midnight (a day that starts at 01:00, or one skipped whole, which then starts and ends
    /// at the same instant as the next day's start).
    fn first_instant(&self, date: Date) -> i64 {
        date.to_zoned(self.tz.clone())
            .and_then(|z| z.start_of_day())
            .map_or_else(
                // Unreachable within the clamped range; UTC midnight is a sane bound.
                |_| {
                    date.to_zoned(TimeZone::UTC)
                        .map_or(0, |z| z.timestamp().as_second())
                },
                |z| z.timestamp().as_second(),
            )
    }
}

/// `YYYYMM` of a date (years before 1 are clamped; the calendar never reaches them).
fn date_id(date: Date) -> u32 {
    let year = u32::try_from(date.year()).unwrap_or(0);
    let month = u32::try_from(date.month()).unwrap_or(1);
    year * 100 + month
}

fn day_of(date: Date) -> u32 {
    u32::try_from(date.day()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> i64 {
        rfc3339.parse::<Timestamp>().expect("timestamp").as_second()
    }

    fn cal(name: &str) -> TenantCalendar {
        TenantCalendar::new(name).expect("zone")
    }

    #[test]
    fn days_and_months_follow_the_local_calendar() {
        let tokyo = cal("Asia/Tokyo");
        // 14:59:59Z is 23:59:59 in Tokyo; one second later is the next day there.
        let day = tokyo.day(at("2026-11-22T14:59:59Z"));
        assert_eq!(day.id, 20261122);
        assert_eq!(day.starts_at, at("2026-11-21T15:00:00Z"));
        assert_eq!(day.ends_at, at("2026-11-22T15:00:00Z"));
        assert_eq!(tokyo.day(day.ends_at).id, 20261123);
        let month = tokyo.month(at("2026-11-30T15:00:00Z"));
        assert_eq!(month.id, 202612, "already December in Tokyo");
        assert_eq!(month.starts_at, at("2026-11-30T15:00:00Z"));
        assert_eq!(month.ends_at, at("2026-12-31T15:00:00Z"));
        let utc = TenantCalendar::utc();
        assert_eq!(utc.day(at("2026-11-30T15:00:00Z")).id, 20261130);
        assert_eq!(
            utc.month(at("2026-02-10T00:00:00Z")).ends_at,
            at("2026-03-01T00:00:00Z")
        );
        // Kathmandu is UTC+05:45.
        let ktm = cal("Asia/Kathmandu").day(at("2026-06-01T12:00:00Z"));
        assert_eq!(
            (ktm.id, ktm.starts_at),
            (20260601, at("2026-05-31T18:15:00Z"))
        );
    }

    #[test]
    fn daylight_saving_makes_short_and_long_days() {
        let ny = cal("America/New_York");
        let spring = ny.day(at("2026-03-08T12:00:00Z"));
        assert_eq!(spring.ends_at - spring.starts_at, 23 * 3600);
        let autumn = ny.day(at("2026-11-01T12:00:00Z"));
        assert_eq!(autumn.ends_at - autumn.starts_at, 25 * 3600);
        assert_eq!(autumn.starts_at, at("2026-11-01T04:00:00Z"));
    }

    #[test]
    fn a_day_without_a_midnight_starts_when_it_begins() {
        // São Paulo's clocks went from 00:00 to 01:00 on 4 November 2018.
        let sp = cal("America/Sao_Paulo");
        let day = sp.day(at("2018-11-04T12:00:00Z"));
        assert_eq!(day.id, 20181104);
        assert_eq!(day.starts_at, at("2018-11-04T03:00:00Z"), "01:00 at -02:00");
        assert_eq!(sp.day(day.starts_at - 1).ends_at, day.starts_at);
        assert_eq!(day.ends_at - day.starts_at, 23 * 3600);
    }

    #[test]
    fn a_skipped_day_is_never_a_period() {
        // Samoa skipped 30 December 2011: the 29th (at -10:00) is followed by the 31st (+14:00).
        let apia = cal("Pacific/Apia");
        let last = apia.day(at("2011-12-30T09:59:59Z"));
        assert_eq!(last.id, 20111229);
        let next = apia.day(last.ends_at);
        assert_eq!(next.id, 20111231);
        assert_eq!(next.starts_at, last.ends_at);
        assert_eq!(last.ends_at, at("2011-12-30T10:00:00Z"));
    }

    #[test]
    fn out_of_range_instants_are_clamped_not_panics() {
        let c = cal("Pacific/Kiritimati");
        for s in [i64::MIN, -1, i64::MAX, MAX_SECOND + 1] {
            let d = c.day(s);
            let m = c.month(s);
            assert!(d.starts_at < d.ends_at && m.starts_at < m.ends_at, "{s}");
        }
        assert_eq!(TenantCalendar::utc().day(-5).id, 19700101);
    }

    #[test]
    fn unknown_zones_are_refused_with_a_hint() {
        let err = TenantCalendar::new("Europe/Berln").expect_err("typo");
        assert!(
            err.contains("`Europe/Berln`") && err.contains("IANA"),
            "{err}"
        );
        assert_eq!(cal("Asia/Tokyo").name(), "Asia/Tokyo");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        /// Periods tile time: each contains its instant, starts where the previous ended, and
        /// ends where the next starts, with ids that only grow.
        #[test]
        fn fuzz_periods_tile_time(
            s in 172_800i64..4_102_444_800,
            zone in proptest::sample::select(vec![
                "UTC", "America/New_York", "Europe/Berlin", "Asia/Kathmandu",
                "Pacific/Apia", "America/Sao_Paulo", "Australia/Lord_Howe", "Asia/Tokyo",
            ]),
        ) {
            let c = cal(zone);
            for p in [c.day(s), c.month(s)] {
                proptest::prop_assert!(p.starts_at <= s && s < p.ends_at, "{zone} {s} {p:?}");
            }
            let day = c.day(s);
            proptest::prop_assert!((22 * 3600..=26 * 3600).contains(&(day.ends_at - day.starts_at)), "{zone} {day:?}");
            let next = c.day(day.ends_at);
            proptest::prop_assert_eq!(next.starts_at, day.ends_at);
            proptest::prop_assert!(next.id > day.id);
            proptest::prop_assert_eq!(c.day(day.starts_at - 1).ends_at, day.starts_at);
            let month = c.month(s);
            let next = c.month(month.ends_at);
            proptest::prop_assert_eq!(next.starts_at, month.ends_at);
            proptest::prop_assert!(next.id > month.id);
            proptest::prop_assert_eq!(month.id, day.id / 100);
        }
    }

    #[test]
    fn clock_is_local_hour_and_weekday() {
        // 2026-11-27T23:30:00Z is a Friday in UTC and already Saturday 08:30 in Tokyo.
        let at = 1_795_822_200;
        #[rustfmt::skip]
        let cases = [
            ("utc", "UTC", (23, "fri")),
            ("ahead of utc", "Asia/Tokyo", (8, "sat")),
            ("behind utc", "America/New_York", (18, "fri")),
        ];
        for (name, zone, want) in cases {
            let cal = TenantCalendar::new(zone).expect("zone");
            assert_eq!(cal.clock(at), want, "{name}");
        }
    }
}
