//! When a push rule may push: a period of UTC dates and a daily window of whole hours, in UTC
//! or in a device's local time zone.
//! Pure functions of the time they are given, so they are table-tested without waiting.
//!
//! - The period runs from `start` 00:00 to the end of `end` (both days inclusive).
//! - The window runs from `start_hour` to `end_hour`; when `start_hour > end_hour` it crosses
//!   midnight and is **one opening**, from `start_hour` on one day to `end_hour` on the next.
//! - Pushes go out only while both hold. An opening is named by the instant it opened, so
//!   "at most once per window opening" is a comparison of two numbers, and holds across
//!   midnight for a window such as 22→2.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The UTC dates a rule may push on, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// Whole UTC hours; `start_hour` 0–23, `end_hour` 0–24, never equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_hour: u8,
    pub end_hour: u8,
}

/// One opening of the daily window, as Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    pub start_ms: i64,
    pub end_ms: i64,
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_time(NaiveTime::MIN))
}

impl Period {
    /// `YYYY-MM-DD` dates with `start <= end`; the error says which part is wrong.
    pub fn parse(start: &str, end: &str) -> Result<Period, &'static str> {
        // Exactly `YYYY-MM-DD`: chrono alone would also take `2026-1-1`.
        let parse = |s: &str| {
            let s = s.trim();
            (s.len() == 10).then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()).flatten()
        };
        let start = parse(start).ok_or("period.start must be a date YYYY-MM-DD")?;
        let end = parse(end).ok_or("period.end must be a date YYYY-MM-DD")?;
        if end < start {
            return Err("period.end must not be before period.start");
        }
        Ok(Period { start, end })
    }

    pub fn starts_at(&self) -> DateTime<Utc> {
        midnight(self.start)
    }

    /// The first instant after the period: midnight after `end`.
    pub fn ends_at(&self) -> DateTime<Utc> {
        midnight(self.end) + Duration::days(1)
    }

    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        now >= self.starts_at() && now < self.ends_at()
    }

    pub fn is_over(&self, now: DateTime<Utc>) -> bool {
        now >= self.ends_at()
    }
}

impl Window {
    pub fn new(start_hour: u8, end_hour: u8) -> Result<Window, &'static str> {
        if start_hour > 23 {
            return Err("daily_window.start_hour must be 0–23");
        }
        if end_hour > 24 {
            return Err("daily_window.end_hour must be 0–24");
        }
        if start_hour == end_hour {
            return Err("daily_window.start_hour and end_hour must differ");
        }
        Ok(Window { start_hour, end_hour })
    }

    pub fn crosses_midnight(&self) -> bool {
        self.start_hour > self.end_hour
    }

    /// The opening `now` falls in, if any (ignoring the period).
    pub fn opening_at(&self, now: DateTime<Utc>) -> Option<Opening> {
        let day = now.date_naive();
        let at = |d: NaiveDate, h: u8| (midnight(d) + Duration::hours(i64::from(h))).timestamp_millis();
        let t = now.timestamp_millis();
        let yesterday = day.pred_opt()?;
        let tomorrow = day.succ_opt()?;
        let candidates =
            if self.crosses_midnight() { [(yesterday, day), (day, tomorrow)] } else { [(day, day), (day, day)] };
        candidates
            .into_iter()
            .map(|(from, to)| Opening { start_ms: at(from, self.start_hour), end_ms: at(to, self.end_hour) })
            .find(|o| o.start_ms <= t && t < o.end_ms)
    }
}

/// The instant a local wall-clock hour names in `tz`: the first of two when the hour occurs
/// twice (clocks going back), the next existing instant when it does not exist (clocks going
/// forward: 02:00 on the spring change opens at 03:00).
fn local_instant(tz: Tz, day: NaiveDate, hour: u8) -> Option<DateTime<Utc>> {
    let (day, hour) = if hour == 24 { (day.succ_opt()?, 0) } else { (day, hour) };
    let naive = day.and_hms_opt(u32::from(hour), 0, 0)?;
    // A gap lasts at most a few hours; step by the minute to its end.
    for minutes in 0..=240 {
        let candidate = naive + Duration::minutes(minutes);
        match tz.from_local_datetime(&candidate) {
            LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => return Some(first.with_timezone(&Utc)),
            LocalResult::None => {}
        }
    }
    None
}

impl Window {
    /// The opening `now` falls in when the window's hours are local hours of `tz`
    /// (DST-correct; see [`local_instant`]).
    pub fn opening_in(&self, tz: Tz, now: DateTime<Utc>) -> Option<Opening> {
        let today = now.with_timezone(&tz).date_naive();
        let t = now.timestamp_millis();
        let mut days = [today.pred_opt()?, today];
        if !self.crosses_midnight() {
            days = [today, today];
        }
        days.into_iter().find_map(|day| {
            let end_day = if self.crosses_midnight() { day.succ_opt()? } else { day };
            let start = local_instant(tz, day, self.start_hour)?.timestamp_millis();
            let end = local_instant(tz, end_day, self.end_hour)?.timestamp_millis();
            (start <= t && t < end).then_some(Opening { start_ms: start, end_ms: end })
        })
    }

    /// The opening in effect at `now` in `tz`, or the next one to come.
    pub fn current_or_next_in(&self, tz: Tz, now: DateTime<Utc>) -> Option<Opening> {
        if let Some(open) = self.opening_in(tz, now) {
            return Some(open);
        }
        let today = now.with_timezone(&tz).date_naive();
        [today, today.succ_opt()?].into_iter().find_map(|day| {
            let end_day = if self.crosses_midnight() { day.succ_opt()? } else { day };
            let start = local_instant(tz, day, self.start_hour)?;
            let end = local_instant(tz, end_day, self.end_hour)?;
            (start > now).then_some(Opening { start_ms: start.timestamp_millis(), end_ms: end.timestamp_millis() })
        })
    }
}

/// Parses an IANA time zone name.
pub fn parse_zone(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok()
}

/// The opening a rule may push in at `now`: inside the period (UTC dates) and the window, in
/// `tz` when given, else in UTC.
pub fn pushable_opening(period: &Period, window: &Window, tz: Option<Tz>, now: DateTime<Utc>) -> Option<Opening> {
    if !period.contains(now) {
        return None;
    }
    match tz {
        Some(tz) => window.opening_in(tz, now),
        None => window.opening_at(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ms(s: &str) -> i64 {
        t(s).timestamp_millis()
    }

    fn period(a: &str, b: &str) -> Period {
        Period::parse(a, b).unwrap()
    }

    #[test]
    fn windows_inside_one_day() {
        let w = Window::new(9, 17).unwrap();
        // (now, expected opening start or None)
        let table: &[(&str, Option<&str>)] = &[
            ("2026-03-01T08:59:59Z", None),
            ("2026-03-01T09:00:00Z", Some("2026-03-01T09:00:00Z")),
            ("2026-03-01T16:59:59Z", Some("2026-03-01T09:00:00Z")),
            ("2026-03-01T17:00:00Z", None), // the end hour is exclusive
            ("2026-03-02T12:00:00Z", Some("2026-03-02T09:00:00Z")),
        ];
        for (now, want) in table {
            assert_eq!(w.opening_at(t(now)).map(|o| o.start_ms), want.map(ms), "{now}");
        }
        let full = Window::new(0, 24).unwrap();
        let o = full.opening_at(t("2026-03-01T23:59:59Z"));
        assert_eq!(o, Some(Opening { start_ms: ms("2026-03-01T00:00:00Z"), end_ms: ms("2026-03-02T00:00:00Z") }));
    }

    #[test]
    fn a_window_crossing_midnight_is_one_opening() {
        let w = Window::new(22, 2).unwrap();
        assert!(w.crosses_midnight());
        let table: &[(&str, Option<&str>)] = &[
            ("2026-03-01T21:59:59Z", None),
            ("2026-03-01T22:00:00Z", Some("2026-03-01T22:00:00Z")),
            ("2026-03-01T23:59:59Z", Some("2026-03-01T22:00:00Z")),
            // after midnight: still the opening that started the day before
            ("2026-03-02T00:00:00Z", Some("2026-03-01T22:00:00Z")),
            ("2026-03-02T01:59:59Z", Some("2026-03-01T22:00:00Z")),
            ("2026-03-02T02:00:00Z", None),
            ("2026-03-02T12:00:00Z", None),
            ("2026-03-02T22:00:00Z", Some("2026-03-02T22:00:00Z")),
        ];
        for (now, want) in table {
            assert_eq!(w.opening_at(t(now)).map(|o| o.start_ms), want.map(ms), "{now}");
        }
        // A window ending at midnight written as 0 is the same as 24.
        let to_midnight = Window::new(22, 0).unwrap();
        assert_eq!(
            to_midnight.opening_at(t("2026-03-01T23:00:00Z")).map(|o| o.end_ms),
            Some(ms("2026-03-02T00:00:00Z"))
        );
        assert_eq!(to_midnight.opening_at(t("2026-03-02T00:30:00Z")), None);
    }

    #[test]
    fn the_period_bounds_the_first_and_last_day() {
        let p = period("2026-03-01", "2026-03-03");
        let w = Window::new(22, 2).unwrap();
        // First day: the opening that started on the eve of the period is cut to its part
        // inside the period; the period starts at midnight.
        assert_eq!(pushable_opening(&p, &w, None, t("2026-02-28T23:00:00Z")), None);
        assert_eq!(
            pushable_opening(&p, &w, None, t("2026-03-01T01:00:00Z")).map(|o| o.start_ms),
            Some(ms("2026-02-28T22:00:00Z"))
        );
        // Last day: its evening opening runs until the period ends at midnight.
        assert!(pushable_opening(&p, &w, None, t("2026-03-03T23:59:59Z")).is_some());
        assert_eq!(pushable_opening(&p, &w, None, t("2026-03-04T00:00:00Z")), None);
        assert_eq!(pushable_opening(&p, &w, None, t("2026-03-04T01:00:00Z")), None);
        assert!(!p.is_over(t("2026-03-03T23:59:59Z")));
        assert!(p.is_over(t("2026-03-04T00:00:00Z")));
        // A one-day period.
        let one = period("2026-03-05", "2026-03-05");
        let day = Window::new(0, 24).unwrap();
        assert!(pushable_opening(&one, &day, None, t("2026-03-05T00:00:00Z")).is_some());
        assert!(pushable_opening(&one, &day, None, t("2026-03-05T23:59:59Z")).is_some());
        assert!(pushable_opening(&one, &day, None, t("2026-03-06T00:00:00Z")).is_none());
        assert!(pushable_opening(&one, &day, None, t("2026-03-04T23:59:59Z")).is_none());
    }

    #[test]
    fn once_a_day_across_midnight() {
        // A device notified at 23:00 is not due again at 01:00 (same opening), but is the
        // next evening (a new opening).
        let w = Window::new(22, 2).unwrap();
        let first = w.opening_at(t("2026-03-01T23:00:00Z")).map(|o| o.start_ms);
        let after_midnight = w.opening_at(t("2026-03-02T01:00:00Z")).map(|o| o.start_ms);
        let next_evening = w.opening_at(t("2026-03-02T22:30:00Z")).map(|o| o.start_ms);
        assert_eq!(first, after_midnight);
        assert!(next_evening > first);
        assert_eq!(next_evening.zip(first).map(|(a, b)| a - b), Some(24 * 3_600_000));
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(Window::new(5, 5), Err("daily_window.start_hour and end_hour must differ"));
        assert_eq!(Window::new(24, 2), Err("daily_window.start_hour must be 0–23"));
        assert_eq!(Window::new(2, 25), Err("daily_window.end_hour must be 0–24"));
        assert!(Window::new(0, 24).is_ok());
        assert!(Window::new(23, 0).is_ok());
        assert_eq!(Period::parse("2026-03-02", "2026-03-01"), Err("period.end must not be before period.start"));
        assert_eq!(Period::parse("2026-3-x", "2026-03-01"), Err("period.start must be a date YYYY-MM-DD"));
        assert_eq!(Period::parse("2026-03-01", "tomorrow"), Err("period.end must be a date YYYY-MM-DD"));
        assert_eq!(Period::parse("2026-02-30", "2026-03-01"), Err("period.start must be a date YYYY-MM-DD"));
        assert_eq!(Period::parse("2026-3-1", "2026-03-01"), Err("period.start must be a date YYYY-MM-DD"));
    }

    fn opening_in(w: &Window, zone: &str, now: &str) -> Option<(String, String)> {
        let tz = parse_zone(zone).unwrap();
        let f = |ms: i64| {
            DateTime::<Utc>::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        w.opening_in(tz, t(now)).map(|o| (f(o.start_ms), f(o.end_ms)))
    }

    fn some(a: &str, b: &str) -> Option<(String, String)> {
        Some((a.to_owned(), b.to_owned()))
    }

    #[test]
    fn local_windows_in_shanghai() {
        // 02:00–06:00 Beijing time is 18:00–22:00 UTC the day before; no DST.
        let w = Window::new(2, 6).unwrap();
        let z = "Asia/Shanghai";
        assert_eq!(opening_in(&w, z, "2026-03-01T17:59:59Z"), None);
        assert_eq!(opening_in(&w, z, "2026-03-01T18:00:00Z"), some("2026-03-01T18:00:00Z", "2026-03-01T22:00:00Z"));
        assert_eq!(opening_in(&w, z, "2026-03-01T21:59:59Z"), some("2026-03-01T18:00:00Z", "2026-03-01T22:00:00Z"));
        assert_eq!(opening_in(&w, z, "2026-03-01T22:00:00Z"), None);
        // 22→2 local crosses local midnight: one opening.
        let night = Window::new(22, 2).unwrap();
        assert_eq!(opening_in(&night, z, "2026-03-01T16:30:00Z"), some("2026-03-01T14:00:00Z", "2026-03-01T18:00:00Z"));
    }

    #[test]
    fn local_windows_in_new_york_across_dst() {
        let w = Window::new(1, 5).unwrap();
        let z = "America/New_York";
        // Winter (EST, UTC−5): 01:00–05:00 local = 06:00–10:00 UTC.
        assert_eq!(opening_in(&w, z, "2026-03-07T07:00:00Z"), some("2026-03-07T06:00:00Z", "2026-03-07T10:00:00Z"));
        // 2026-03-08: clocks go from 02:00 to 03:00 local. 01:00 EST → 05:00 EDT is 06:00–09:00 UTC.
        assert_eq!(opening_in(&w, z, "2026-03-08T08:59:00Z"), some("2026-03-08T06:00:00Z", "2026-03-08T09:00:00Z"));
        assert_eq!(opening_in(&w, z, "2026-03-08T09:00:00Z"), None);
        // Summer (EDT, UTC−4): 05:00–09:00 UTC.
        assert_eq!(opening_in(&w, z, "2026-03-09T05:30:00Z"), some("2026-03-09T05:00:00Z", "2026-03-09T09:00:00Z"));
        // A start hour that does not exist (02:00 on the spring change) opens at 03:00 local.
        let gap = Window::new(2, 4).unwrap();
        assert_eq!(opening_in(&gap, z, "2026-03-08T07:30:00Z"), some("2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"));
        assert_eq!(opening_in(&gap, z, "2026-03-08T06:59:00Z"), None);
        // A start hour that occurs twice (01:00 on 2026-11-01) opens at the first: 05:00 UTC.
        let twice = Window::new(1, 3).unwrap();
        assert_eq!(opening_in(&twice, z, "2026-11-01T05:00:00Z"), some("2026-11-01T05:00:00Z", "2026-11-01T08:00:00Z"));
    }

    #[test]
    fn the_next_opening_and_the_period_in_a_zone() {
        let w = Window::new(2, 6).unwrap();
        let tz = parse_zone("Asia/Shanghai").unwrap();
        let next = w.current_or_next_in(tz, t("2026-03-01T12:00:00Z")).unwrap();
        assert_eq!(next.start_ms, ms("2026-03-01T18:00:00Z"));
        let p = period("2026-03-01", "2026-03-01");
        // The period stays in UTC dates: the opening of 2026-03-01 18:00 UTC is inside it.
        assert!(pushable_opening(&p, &w, Some(tz), t("2026-03-01T19:00:00Z")).is_some());
        assert!(pushable_opening(&p, &w, Some(tz), t("2026-03-02T18:30:00Z")).is_none());
        assert_eq!(parse_zone("Mars/Olympus"), None);
    }
}
