//! Times as the whole crate counts them: unix milliseconds (every state column), and JST days
//! (archive dates begin and end at midnight in Japan).

use time::{Date, OffsetDateTime};

/// Milliseconds since the Unix epoch, the time unit of every column.
pub fn now_ms() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// Today's date in Japan, where archive days begin and end.
pub fn jst_today() -> Date {
    OffsetDateTime::now_utc()
        .to_offset(time::macros::offset!(+9))
        .date()
}

/// Midnight JST of `date` as unix ms: how an archive's date is stored (`received_ms`).
pub fn date_ms(date: Date) -> i64 {
    let t = date.midnight().assume_offset(time::macros::offset!(+9));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The JST date of unix ms `ms` (the inverse of [`date_ms`]).
pub fn ms_date(ms: i64) -> Option<Date> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    Some(t.to_offset(time::macros::offset!(+9)).date())
}

/// `YYYY-MM-DD`, as archive folders and the command line spell a day.
pub fn fmt_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}
