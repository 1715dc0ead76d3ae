//! UTC budget windows: the day and the month a moment falls in.

use time::{Date, Month, OffsetDateTime, Time};

/// The UTC day and month of a moment, with the unix second each one ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Windows {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// `YYYY-MM`.
    pub month: String,
    /// First unix second of the next day.
    pub day_ends: u64,
    /// First unix second of the next month.
    pub month_ends: u64,
}

impl Windows {
    /// The windows containing unix second `now`.
    pub fn at(now: u64) -> Windows {
        let now = OffsetDateTime::from_unix_timestamp(now.min(i64::MAX as u64) as i64)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let date = now.date();
        let next_day = date.next_day().unwrap_or(date);
        let (y, m) = if date.month() == Month::December {
            (date.year() + 1, Month::January)
        } else {
            (date.year(), date.month().next())
        };
        let next_month = Date::from_calendar_date(y, m, 1).unwrap_or(next_day);
        let start = |d: Date| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp() as u64;
        Windows {
            day: format!(
                "{:04}-{:02}-{:02}",
                date.year(),
                date.month() as u8,
                date.day()
            ),
            month: format!("{:04}-{:02}", date.year(), date.month() as u8),
            day_ends: start(next_day),
            month_ends: start(next_month),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-30T23:59:59Z.
    const NOV_30_LAST_SECOND: u64 = 1_796_083_199;

    #[test]
    fn day_and_month_roll_over_at_utc_midnight_and_month_end() {
        let before = Windows::at(NOV_30_LAST_SECOND);
        assert_eq!(before.day, "2026-11-30");
        assert_eq!(before.month, "2026-11");
        assert_eq!(before.day_ends, NOV_30_LAST_SECOND + 1);
        assert_eq!(before.month_ends, NOV_30_LAST_SECOND + 1);
        let after = Windows::at(NOV_30_LAST_SECOND + 1);
        assert_eq!(after.day, "2026-12-01");
        assert_eq!(after.month, "2026-12");
        assert_eq!(after.day_ends, after.month_ends - 30 * 86_400);
    }

    #[test]
    fn december_rolls_into_the_next_year() {
        let dec31 = Windows::at(1_798_761_599); // 2026-12-31T23:59:59Z
        assert_eq!(dec31.day, "2026-12-31");
        assert_eq!(dec31.month_ends, 1_798_761_600);
        assert_eq!(Windows::at(1_798_761_600).month, "2027-01");
    }

    #[test]
    fn leap_day_is_its_own_window() {
        let feb29 = Windows::at(1_709_164_800); // 2024-02-29T00:00:00Z
        assert_eq!(feb29.day, "2024-02-29");
        assert_eq!(Windows::at(feb29.day_ends).day, "2024-03-01");
        assert_eq!(feb29.month_ends, feb29.day_ends);
    }
}
