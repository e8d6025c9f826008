//! When a push rule may push: a period of UTC dates and a daily window of whole UTC hours.
//! Pure functions of the time they are given, so they are table-tested without waiting.
//!
//! - The period runs from `start` 00:00 to the end of `end` (both days inclusive).
//! - The window runs from `start_hour` to `end_hour`; when `start_hour > end_hour` it crosses
//!   midnight and is **one opening**, from `start_hour` on one day to `end_hour` on the next.
//! - Pushes go out only while both hold. An opening is named by the instant it opened, so
//!   "at most once per window opening" is a comparison of two numbers, and holds across
//!   midnight for a window such as 22→2.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};

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

/// The opening a rule may push in at `now`: inside the period and the window.
pub fn pushable_opening(period: &Period, window: &Window, now: DateTime<Utc>) -> Option<Opening> {
    if !period.contains(now) {
        return None;
    }
    window.opening_at(now)
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
        assert_eq!(pushable_opening(&p, &w, t("2026-02-28T23:00:00Z")), None);
        assert_eq!(
            pushable_opening(&p, &w, t("2026-03-01T01:00:00Z")).map(|o| o.start_ms),
            Some(ms("2026-02-28T22:00:00Z"))
        );
        // Last day: its evening opening runs until the period ends at midnight.
        assert!(pushable_opening(&p, &w, t("2026-03-03T23:59:59Z")).is_some());
        assert_eq!(pushable_opening(&p, &w, t("2026-03-04T00:00:00Z")), None);
        assert_eq!(pushable_opening(&p, &w, t("2026-03-04T01:00:00Z")), None);
        assert!(!p.is_over(t("2026-03-03T23:59:59Z")));
        assert!(p.is_over(t("2026-03-04T00:00:00Z")));
        // A one-day period.
        let one = period("2026-03-05", "2026-03-05");
        let day = Window::new(0, 24).unwrap();
        assert!(pushable_opening(&one, &day, t("2026-03-05T00:00:00Z")).is_some());
        assert!(pushable_opening(&one, &day, t("2026-03-05T23:59:59Z")).is_some());
        assert!(pushable_opening(&one, &day, t("2026-03-06T00:00:00Z")).is_none());
        assert!(pushable_opening(&one, &day, t("2026-03-04T23:59:59Z")).is_none());
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
}
