//! Time windows for `policy.hours`: `"Mon-Fri 07:00-19:00 Europe/Berlin"`. An approval is only
//! granted while the wall clock of the window's time zone is inside one of the windows, so that
//! admin rights are handed out when someone is around to notice misuse.
//!
//! Pure: parsing resolves the time zone once (the system database first, then the copy of the
//! IANA database compiled into the binary, so a host without `/usr/share/zoneinfo` still knows
//! `Europe/Berlin`); evaluation takes "now" as an argument. Windows compare wall-clock times in
//! their zone, which makes them DST-correct by construction: `07:00` is 07:00 local time in
//! winter and in summer.

use std::sync::LazyLock;

use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::{TimeZone, TimeZoneDatabase};

/// The embedded IANA database, used when the system has no zone of that name.
static BUNDLED: LazyLock<TimeZoneDatabase> = LazyLock::new(TimeZoneDatabase::bundled);

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const FULL_DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const MINUTES_PER_DAY: u16 = 24 * 60;

/// Longest window text accepted: anything longer is not a window.
const MAX_WINDOW_CHARS: usize = 200;

/// One compiled window. `end <= start` means the window runs past midnight into the next day;
/// its days name the day it starts on.
#[derive(Debug, Clone)]
pub struct Window {
    /// Monday-first flags.
    days: [bool; 7],
    /// Minutes after local midnight, inclusive.
    start: u16,
    /// Minutes after local midnight, exclusive; up to 1440 (`24:00`).
    end: u16,
    zone: TimeZone,
    zone_name: String,
    text: String,
}

impl Window {
    /// Parses `"<days> <HH:MM>-<HH:MM> <time zone>"`. The error says what is wrong and how to
    /// write it, for a configuration problem.
    pub fn parse(text: &str) -> Result<Window, String> {
        const FORM: &str = "write e.g. \"Mon-Fri 07:00-19:00 Europe/Berlin\"";
        if text.chars().count() > MAX_WINDOW_CHARS {
            return Err(format!("longer than {MAX_WINDOW_CHARS} characters; {FORM}"));
        }
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days, times, zone] = parts.as_slice() else {
            return Err(format!(
                "{text:?} is not a window: it needs days, a time range and a time zone; {FORM}"
            ));
        };
        let days = parse_days(days)?;
        let (start, end) = parse_times(times)?;
        let (zone, zone_name) = resolve_zone(zone)?;
        Ok(Window {
            days,
            start,
            end,
            zone,
            zone_name,
            text: parts.join(" "),
        })
    }

    /// The window as written (whitespace normalised), for refusal reasons.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The window's time zone name, as resolved (`Europe/Berlin`).
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// Whether `now` falls inside this window, by the wall clock of the window's zone.
    pub fn contains(&self, now: Timestamp) -> bool {
        let local = self.zone.to_datetime(now);
        let minute =
            u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(0);
        let today = day_index(local.weekday());
        let yesterday = day_index(local.weekday().previous());
        if self.start < self.end {
            self.days[today] && self.start <= minute && minute < self.end
        } else {
            // Past midnight: the evening part belongs to today, the morning part to yesterday.
            (self.days[today] && minute >= self.start)
                || (self.days[yesterday] && minute < self.end)
        }
    }

    /// `now` as a person in this window's zone reads it: `Sat 10:15 Europe/Berlin`.
    pub fn local_now(&self, now: Timestamp) -> String {
        let local = self.zone.to_datetime(now);
        let day = DAY_NAMES
            .get(day_index(local.weekday()))
            .copied()
            .unwrap_or("?");
        format!(
            "{day} {:02}:{:02} {}",
            local.hour(),
            local.minute(),
            self.zone_name
        )
    }
}

fn day_index(day: Weekday) -> usize {
    usize::try_from(day.to_monday_zero_offset()).unwrap_or(0)
}

fn parse_day(name: &str) -> Result<usize, String> {
    let lower = name.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(&lower))
        .or_else(|| FULL_DAY_NAMES.iter().position(|d| *d == lower))
        .ok_or_else(|| format!("{name:?} is not a day; use Mon, Tue, Wed, Thu, Fri, Sat or Sun"))
}

/// `Mon-Fri`, `Sat,Sun`, `Mon-Wed,Fri`, `Fri-Mon` (wraps over the weekend).
fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for item in text.split(',') {
        if item.trim().is_empty() {
            return Err(format!(
                "{text:?} has an empty day; write e.g. \"Mon-Fri\" or \"Sat,Sun\""
            ));
        }
        match item.split_once('-') {
            None => {
                let at = parse_day(item)?;
                if let Some(slot) = days.get_mut(at) {
                    *slot = true;
                }
            }
            Some((from, to)) => {
                let (from, to) = (parse_day(from)?, parse_day(to)?);
                let mut at = from;
                // At most seven steps: a range covers each day once, wrapping after Sunday.
                for _ in 0..7 {
                    if let Some(slot) = days.get_mut(at) {
                        *slot = true;
                    }
                    if at == to {
                        break;
                    }
                    at = (at + 1) % 7;
                }
            }
        }
    }
    Ok(days)
}

/// `HH:MM`, `00:00` to `24:00`; returns minutes after midnight.
fn parse_clock(text: &str) -> Result<u16, String> {
    let bad = || format!("{text:?} is not a time of day; write it as HH:MM, e.g. \"07:00\"");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_times(text: &str) -> Result<(u16, u16), String> {
    let (start, end) = text.split_once('-').ok_or_else(|| {
        format!("{text:?} is not a time range; write it as HH:MM-HH:MM, e.g. \"07:00-19:00\"")
    })?;
    let (start, end) = (parse_clock(start)?, parse_clock(end)?);
    if start == MINUTES_PER_DAY {
        return Err(format!("{text:?} starts at 24:00; start at 00:00 instead"));
    }
    if start == end {
        return Err(format!(
            "{text:?} is empty (it starts when it ends); for a whole day write 00:00-24:00"
        ));
    }
    // A window ending at midnight (`00:00` or `24:00`) is a same-day window, not an overnight one.
    let end = if end == 0 { MINUTES_PER_DAY } else { end };
    Ok((start, end))
}

fn resolve_zone(name: &str) -> Result<(TimeZone, String), String> {
    let zone = jiff::tz::db()
        .get(name)
        .or_else(|_| BUNDLED.get(name))
        .map_err(|_| {
            format!(
                "{name:?} is not a known time zone; use an IANA name such as \"Europe/Berlin\", \
                 \"America/New_York\" or \"UTC\""
            )
        })?;
    let resolved = zone.iana_name().unwrap_or(name).to_owned();
    Ok((zone, resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn weekday_office_hours_in_berlin() {
        let w = Window::parse("Mon-Fri 07:00-19:00 Europe/Berlin").unwrap();
        // 2026-01-05 is a Monday; Berlin is UTC+1 in winter.
        let cases = [
            ("2026-01-05T05:59:00Z", false),
            ("2026-01-05T06:00:00Z", true),
            ("2026-01-05T17:59:00Z", true),
            ("2026-01-05T18:00:00Z", false),
            ("2026-01-10T10:00:00Z", false), // Saturday
            ("2026-01-09T17:30:00Z", true),  // Friday 18:30 local
        ];
        for (now, inside) in cases {
            assert_eq!(w.contains(at(now)), inside, "{now}");
        }
    }

    #[test]
    fn summer_time_shifts_the_window_in_utc() {
        let w = Window::parse("Mon-Fri 07:00-19:00 Europe/Berlin").unwrap();
        // 2026-07-06 is a Monday; Berlin is UTC+2 in summer: 07:00 local is 05:00 UTC.
        assert!(w.contains(at("2026-07-06T05:00:00Z")));
        assert!(!w.contains(at("2026-07-06T04:59:00Z")));
        assert!(!w.contains(at("2026-07-06T17:00:00Z")));
        // The day clocks go forward (Sunday 2026-03-29): a Sunday window sees local time.
        let s = Window::parse("Sun 01:00-04:00 Europe/Berlin").unwrap();
        assert!(s.contains(at("2026-03-29T00:30:00Z"))); // 01:30 CET
        assert!(s.contains(at("2026-03-29T01:30:00Z"))); // 03:30 CEST (02:xx never happens)
        assert!(!s.contains(at("2026-03-29T02:00:00Z"))); // 04:00 CEST
    }

    #[test]
    fn overnight_window_belongs_to_the_day_it_starts() {
        let w = Window::parse("Fri 22:00-06:00 UTC").unwrap();
        assert!(w.contains(at("2026-01-09T23:00:00Z"))); // Fri 23:00
        assert!(w.contains(at("2026-01-10T05:59:00Z"))); // Sat 05:59
        assert!(!w.contains(at("2026-01-10T06:00:00Z"))); // Sat 06:00
        assert!(!w.contains(at("2026-01-10T23:00:00Z"))); // Sat 23:00
        assert!(!w.contains(at("2026-01-09T05:00:00Z"))); // Fri 05:00 belongs to Thursday
    }

    #[test]
    fn day_lists_and_wrapping_ranges() {
        let w = Window::parse("Fri-Mon,Wed 00:00-24:00 UTC").unwrap();
        assert_eq!(w.days, [true, false, true, false, true, true, true]);
        let w = Window::parse("monday,SUN 09:00-10:00 utc").unwrap();
        assert_eq!(w.days, [true, false, false, false, false, false, true]);
        assert_eq!(w.zone_name(), "UTC");
    }

    #[test]
    fn whole_day_ends_at_midnight() {
        let w = Window::parse("Tue 00:00-24:00 UTC").unwrap();
        assert!(w.contains(at("2026-01-06T00:00:00Z")));
        assert!(w.contains(at("2026-01-06T23:59:59Z")));
        assert!(!w.contains(at("2026-01-07T00:00:00Z")));
    }

    #[test]
    fn bad_windows_say_what_to_write() {
        let cases = [
            (
                "Mon-Fri 07:00-19:00",
                "needs days, a time range and a time zone",
            ),
            ("Mo-Fr 07:00-19:00 UTC", "is not a day"),
            ("Mon-Fri 7:00-19:00 UTC", "HH:MM"),
            ("Mon-Fri 07:00-25:00 UTC", "HH:MM"),
            ("Mon-Fri 07:60-19:00 UTC", "HH:MM"),
            ("Mon-Fri 07:00 UTC", "HH:MM-HH:MM"),
            ("Mon-Fri 09:00-09:00 UTC", "is empty"),
            ("Mon-Fri 24:00-09:00 UTC", "start at 00:00"),
            ("Mon-Fri 07:00-19:00 Mars/Olympus", "not a known time zone"),
            ("Mon,,Fri 07:00-19:00 UTC", "empty day"),
            ("", "needs days"),
        ];
        for (text, want) in cases {
            let err = Window::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn bundled_database_knows_zones_without_the_system_copy() {
        let zone = BUNDLED.get("Europe/Berlin").unwrap();
        assert_eq!(zone.iana_name(), Some("Europe/Berlin"));
    }

    #[test]
    fn local_now_reads_like_a_clock() {
        let w = Window::parse("Mon-Fri 07:00-19:00 Europe/Berlin").unwrap();
        assert_eq!(
            w.local_now(at("2026-01-10T09:15:00Z")),
            "Sat 10:15 Europe/Berlin"
        );
    }
}
