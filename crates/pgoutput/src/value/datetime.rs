//! Date and time values: [`Date`], [`Time`], [`TimeTz`], [`Timestamp`] and [`Interval`].
//!
//! Each holds exactly what the binary send format holds (days or microseconds counted from
//! 2000-01-01, PostgreSQL's epoch), so binary decoding is a copy and nothing is rounded. The
//! calendar is the proleptic Gregorian one with astronomical year numbering (year 0 is 1 BC),
//! as PostgreSQL uses; `±infinity` are the sentinels PostgreSQL uses (`i32`/`i64` MIN and MAX).
//!
//! Text parsing accepts what the output functions print with `DateStyle=ISO`,
//! `IntervalStyle=postgres` and, for `timestamptz`, any UTC offset (pgfanout pins
//! `TimeZone=UTC`, so `+00` in practice). Rendering prints exactly that form, with `+00` for
//! `timestamptz`. Values outside PostgreSQL's ranges are rejected when parsed or decoded.

use std::fmt;

/// Microseconds per second.
const USECS_PER_SEC: i64 = 1_000_000;
/// Microseconds per minute.
const USECS_PER_MINUTE: i64 = 60 * USECS_PER_SEC;
/// Microseconds per hour.
const USECS_PER_HOUR: i64 = 60 * USECS_PER_MINUTE;
/// Microseconds per day.
pub(crate) const USECS_PER_DAY: i64 = 24 * USECS_PER_HOUR;
/// Days from 1970-01-01 to 2000-01-01.
const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;
/// Days from 2000-01-01 back to Julian day 0 (4714-11-24 BC), PostgreSQL's first valid date.
const MIN_DATE_DAYS: i32 = -2_451_545;
/// First day past PostgreSQL's last valid date (5874897-12-31), as days since 2000-01-01.
const END_DATE_DAYS: i32 = 2_145_031_949;
/// PostgreSQL's first valid timestamp (4714-11-24 00:00:00 BC), microseconds since 2000.
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// First timestamp past PostgreSQL's range (294277-01-01 00:00:00), microseconds since 2000.
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;
/// Time zone offsets must be strictly within this many seconds of UTC (`TZDISP_LIMIT`).
const UTC_OFFSET_LIMIT: i32 = 16 * 3600;

/// A `date`: days since 2000-01-01, or one of the infinities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(pub i32);

impl Date {
    /// `-infinity`.
    pub const NEG_INFINITY: Date = Date(i32::MIN);
    /// `infinity`.
    pub const INFINITY: Date = Date(i32::MAX);

    /// The date of a (proleptic Gregorian, astronomical) year, month and day, or `None` when
    /// the day does not exist or is outside PostgreSQL's range (4714-11-24 BC to
    /// 5874897-12-31). 44 BC is year -43.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Date> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
            return None;
        }
        let days = days_from_civil(i64::from(year), month, day) - UNIX_TO_PG_EPOCH_DAYS;
        let days = i32::try_from(days).ok()?;
        Some(Date(days)).filter(|date| date.is_valid_finite())
    }

    /// Year (astronomical: 0 is 1 BC), month and day; `None` for the infinities.
    pub fn to_ymd(self) -> Option<(i32, u32, u32)> {
        if !self.is_finite() {
            return None;
        }
        let (year, month, day) = civil_from_days(i64::from(self.0) + UNIX_TO_PG_EPOCH_DAYS);
        // |days| < 2^31, so the year is far inside i32.
        Some((i32::try_from(year).ok()?, month, day))
    }

    /// Whether the date is neither `infinity` nor `-infinity`.
    pub fn is_finite(self) -> bool {
        self != Date::INFINITY && self != Date::NEG_INFINITY
    }

    /// Whether PostgreSQL would accept the value (an infinity or a date in range).
    pub(crate) fn is_valid(self) -> bool {
        !self.is_finite() || self.is_valid_finite()
    }

    fn is_valid_finite(self) -> bool {
        (MIN_DATE_DAYS..END_DATE_DAYS).contains(&self.0)
    }

    /// Parses `date_out`'s ISO form: `YYYY-MM-DD`, `YYYY-MM-DD BC`, `infinity`, `-infinity`.
    pub(crate) fn parse<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<Date, &'static str> {
        let text = text.as_ref();
        match text {
            b"infinity" => return Ok(Date::INFINITY),
            b"-infinity" => return Ok(Date::NEG_INFINITY),
            _ => {}
        }
        let mut scan = Scanner::new(text);
        let (year, month, day) = scan.ymd()?;
        let year = scan.era(year)?;
        scan.end()?;
        Date::from_ymd(year, month, day).ok_or("date does not exist or is out of range")
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_ymd() {
            None if *self == Date::INFINITY => f.write_str("infinity"),
            None => f.write_str("-infinity"),
            Some((year, month, day)) => {
                write_ymd(f, i64::from(year), month, day)?;
                write_era(f, i64::from(year))
            }
        }
    }
}

/// A `time` (without time zone): microseconds since midnight, `0..=86_400_000_000`
/// (`24:00:00` is a valid `time`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub i64);

impl Time {
    /// The time of day from its parts, or `None` when out of range.
    pub fn from_hms_micro(hour: u32, minute: u32, second: u32, micro: u32) -> Option<Time> {
        if minute > 59 || second > 59 || micro > 999_999 {
            return None;
        }
        let micros = i64::from(hour) * USECS_PER_HOUR
            + i64::from(minute) * USECS_PER_MINUTE
            + i64::from(second) * USECS_PER_SEC
            + i64::from(micro);
        Some(Time(micros)).filter(|time| time.is_valid())
    }

    /// Whether PostgreSQL would accept the value.
    pub(crate) fn is_valid(self) -> bool {
        (0..=USECS_PER_DAY).contains(&self.0)
    }

    /// Parses `HH:MM:SS[.ffffff]`, hour up to 24 (and then only `24:00:00`).
    pub(crate) fn parse<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<Time, &'static str> {
        let mut scan = Scanner::new(text.as_ref());
        let time = scan.time_of_day(24)?;
        scan.end()?;
        Ok(time)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_time_of_day(f, self.0)
    }
}

/// A `timetz`: a time of day and the UTC offset it was written with.
///
/// The offset is seconds *east* of UTC (`+05:30` is `19_800`), the usual convention; the binary
/// format stores the opposite sign and is converted at the boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeTz {
    /// Local time of day.
    pub time: Time,
    /// Seconds east of UTC, strictly within ±16 hours.
    pub utc_offset_seconds: i32,
}

impl TimeTz {
    /// Whether PostgreSQL would accept the value.
    pub(crate) fn is_valid(self) -> bool {
        self.time.is_valid() && self.utc_offset_seconds.abs() < UTC_OFFSET_LIMIT
    }

    /// Parses `HH:MM:SS[.ffffff]±HH[:MM[:SS]]`.
    pub(crate) fn parse<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<TimeTz, &'static str> {
        let mut scan = Scanner::new(text.as_ref());
        let time = scan.time_of_day(24)?;
        let utc_offset_seconds = scan.utc_offset()?;
        scan.end()?;
        Ok(TimeTz { time, utc_offset_seconds })
    }
}

impl fmt::Display for TimeTz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_time_of_day(f, self.time.0)?;
        write_utc_offset(f, self.utc_offset_seconds)
    }
}

/// A `timestamp` or `timestamptz`: microseconds since 2000-01-01 00:00:00 (UTC for
/// `timestamptz`), or one of the infinities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// `-infinity`.
    pub const NEG_INFINITY: Timestamp = Timestamp(i64::MIN);
    /// `infinity`.
    pub const INFINITY: Timestamp = Timestamp(i64::MAX);

    /// Whether the timestamp is neither `infinity` nor `-infinity`.
    pub fn is_finite(self) -> bool {
        self != Timestamp::INFINITY && self != Timestamp::NEG_INFINITY
    }

    /// Microseconds since 1970-01-01 00:00:00; `None` for the infinities.
    pub fn to_unix_micros(self) -> Option<i64> {
        // Finite values are within PostgreSQL's range in practice; checked anyway for the
        // public field.
        self.0.checked_add(UNIX_TO_PG_EPOCH_DAYS * USECS_PER_DAY).filter(|_| self.is_finite())
    }

    /// Whether PostgreSQL would accept the value.
    pub(crate) fn is_valid(self) -> bool {
        !self.is_finite() || (MIN_TIMESTAMP..END_TIMESTAMP).contains(&self.0)
    }

    /// Parses `timestamp_out`'s ISO form (`YYYY-MM-DD HH:MM:SS[.ffffff][ BC]`) or, with
    /// `with_offset`, `timestamptz_out`'s (an offset after the time, before ` BC`), which is
    /// converted to UTC.
    pub(crate) fn parse<T: AsRef<[u8]> + ?Sized>(text: &T, with_offset: bool) -> Result<Timestamp, &'static str> {
        let text = text.as_ref();
        match text {
            b"infinity" => return Ok(Timestamp::INFINITY),
            b"-infinity" => return Ok(Timestamp::NEG_INFINITY),
            _ => {}
        }
        let mut scan = Scanner::new(text);
        let (year, month, day) = scan.ymd()?;
        scan.expect(b' ')?;
        let time = scan.time_of_day(23)?;
        let offset = if with_offset { scan.utc_offset()? } else { 0 };
        let year = scan.era(year)?;
        scan.end()?;
        let date = Date::from_ymd(year, month, day).ok_or("date does not exist or is out of range")?;
        let micros = i128::from(date.0) * i128::from(USECS_PER_DAY) + i128::from(time.0)
            - i128::from(offset) * i128::from(USECS_PER_SEC);
        i64::try_from(micros)
            .ok()
            .map(Timestamp)
            .filter(|ts| ts.is_finite() && ts.is_valid())
            .ok_or("timestamp out of range")
    }

    /// Renders the `timestamptz` form: the UTC time followed by `+00`.
    pub fn display_utc(self) -> impl fmt::Display {
        TimestampDisplay { timestamp: self, utc_suffix: true }
    }
}

impl fmt::Display for Timestamp {
    /// The `timestamp` form (no offset).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        TimestampDisplay { timestamp: *self, utc_suffix: false }.fmt(f)
    }
}

/// Renders a [`Timestamp`] with or without the `+00` of `timestamptz`.
struct TimestampDisplay {
    timestamp: Timestamp,
    utc_suffix: bool,
}

impl fmt::Display for TimestampDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.timestamp {
            Timestamp::INFINITY => return f.write_str("infinity"),
            Timestamp::NEG_INFINITY => return f.write_str("-infinity"),
            _ => {}
        }
        let micros = self.timestamp.0;
        let (year, month, day) = civil_from_days(micros.div_euclid(USECS_PER_DAY) + UNIX_TO_PG_EPOCH_DAYS);
        write_ymd(f, year, month, day)?;
        f.write_str(" ")?;
        write_time_of_day(f, micros.rem_euclid(USECS_PER_DAY))?;
        if self.utc_suffix {
            f.write_str("+00")?;
        }
        write_era(f, year)
    }
}

/// An `interval`: months, days and microseconds, kept apart as PostgreSQL does (a month is
/// not a fixed number of days, nor a day of microseconds across DST changes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Interval {
    /// Months (years are 12 months).
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Microseconds.
    pub micros: i64,
}

impl Interval {
    /// Parses `interval_out`'s `IntervalStyle=postgres` form, e.g.
    /// `-1 years +2 mons -3 days +04:05:06.789` or `00:00:00`.
    pub(crate) fn parse(text: &str) -> Result<Interval, &'static str> {
        let mut months: i64 = 0;
        let mut days: i64 = 0;
        let mut micros: i64 = 0;
        // Units must come in output order, each at most once, then the time.
        let mut next_unit = 0;
        let mut words = text.split(' ');
        while let Some(word) = words.next() {
            if word.contains(':') {
                if words.next().is_some() {
                    return Err("text after the time part");
                }
                micros = parse_interval_time(word)?;
                break;
            }
            let amount: i64 = parse_signed_int(word).ok_or("invalid number")?;
            let unit = match words.next().ok_or("number without a unit")? {
                "year" | "years" => 1,
                "mon" | "mons" => 2,
                "day" | "days" => 3,
                _ => return Err("unknown unit"),
            };
            if unit <= next_unit {
                return Err("units out of order");
            }
            next_unit = unit;
            match unit {
                1 => months = amount.checked_mul(12).ok_or("interval out of range")?,
                2 => months = months.checked_add(amount).ok_or("interval out of range")?,
                _ => days = amount,
            }
        }
        Ok(Interval {
            months: i32::try_from(months).map_err(|_| "interval out of range")?,
            days: i32::try_from(days).map_err(|_| "interval out of range")?,
            micros,
        })
    }
}

/// `[+-]H+:MM:SS[.ffffff]` as a signed number of microseconds.
fn parse_interval_time(word: &str) -> Result<i64, &'static str> {
    let (negative, unsigned) = match word.as_bytes().first() {
        Some(b'-') => (true, word.get(1..).unwrap_or_default()),
        Some(b'+') => (false, word.get(1..).unwrap_or_default()),
        _ => (false, word),
    };
    let mut scan = Scanner::new(unsigned.as_bytes());
    let hours = scan.digits(1, 10).ok_or("invalid hours")?;
    scan.expect(b':')?;
    let minutes = scan.digits(2, 2).filter(|&m| m < 60).ok_or("invalid minutes")?;
    scan.expect(b':')?;
    let seconds = scan.digits(2, 2).filter(|&s| s < 60).ok_or("invalid seconds")?;
    let fraction = scan.fraction()?;
    scan.end()?;
    let magnitude = i128::from(hours) * i128::from(USECS_PER_HOUR)
        + i128::from(minutes) * i128::from(USECS_PER_MINUTE)
        + i128::from(seconds) * i128::from(USECS_PER_SEC)
        + i128::from(fraction);
    i64::try_from(if negative { -magnitude } else { magnitude }).map_err(|_| "interval out of range")
}

/// A decimal integer with an optional sign and no other characters.
fn parse_signed_int(word: &str) -> Option<i64> {
    let digits = word.strip_prefix(['+', '-']).unwrap_or(word);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    word.parse().ok()
}

impl fmt::Display for Interval {
    /// `IntervalStyle=postgres`: each non-zero field gets a sign of `+` only when the field
    /// before it was negative, and the time part is printed when non-zero or nothing else was.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut is_zero = true;
        let mut previous_negative = false;
        let years = i64::from(self.months / 12);
        let months = i64::from(self.months % 12);
        for (amount, unit) in [(years, "year"), (months, "mon"), (i64::from(self.days), "day")] {
            if amount == 0 {
                continue;
            }
            let space = if is_zero { "" } else { " " };
            let plus = if previous_negative && amount > 0 { "+" } else { "" };
            let plural = if amount == 1 { "" } else { "s" };
            write!(f, "{space}{plus}{amount} {unit}{plural}")?;
            previous_negative = amount < 0;
            is_zero = false;
        }
        if is_zero || self.micros != 0 {
            let space = if is_zero { "" } else { " " };
            let sign = if self.micros < 0 {
                "-"
            } else if previous_negative {
                "+"
            } else {
                ""
            };
            let magnitude = self.micros.unsigned_abs();
            let hours = magnitude / USECS_PER_HOUR.unsigned_abs();
            let rest = magnitude % USECS_PER_HOUR.unsigned_abs();
            write!(f, "{space}{sign}{hours:02}:")?;
            write_minutes_seconds(f, rest)?;
        }
        Ok(())
    }
}

/// Reads the fixed-layout text forms above, one field at a time, without indexing.
struct Scanner<'a> {
    rest: &'a [u8],
}

impl<'a> Scanner<'a> {
    fn new(text: &'a [u8]) -> Self {
        Scanner { rest: text }
    }

    /// Reads `min..=max` ASCII digits (as many as there are, up to `max`) as a number.
    fn digits(&mut self, min: usize, max: usize) -> Option<u64> {
        // A plain loop: this runs for every date/time field and iterator adapters cost more.
        let mut value = 0;
        let mut count = 0;
        while count < max {
            match self.rest.get(count) {
                // At most `max` (≤ 10 everywhere) digits: no overflow.
                Some(&digit) if digit.is_ascii_digit() => value = value * 10 + u64::from(digit - b'0'),
                _ => break,
            }
            count += 1;
        }
        if count < min {
            return None;
        }
        self.rest = self.rest.get(count..).unwrap_or_default();
        Some(value)
    }

    fn eat(&mut self, byte: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == byte => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), &'static str> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err("unexpected character")
        }
    }

    fn end(&self) -> Result<(), &'static str> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err("unexpected text at the end")
        }
    }

    /// `Y+-MM-DD` (the year as written, before any ` BC`).
    fn ymd(&mut self) -> Result<(u64, u32, u32), &'static str> {
        let year = self.digits(1, 9).ok_or("invalid year")?;
        self.expect(b'-')?;
        let month = self.digits(2, 2).ok_or("invalid month")?;
        self.expect(b'-')?;
        let day = self.digits(2, 2).ok_or("invalid day")?;
        // Two digits each: they fit.
        Ok((year, month as u32, day as u32))
    }

    /// Consumes an optional ` BC` and turns the written year into an astronomical one.
    fn era(&mut self, written_year: u64) -> Result<i32, &'static str> {
        let year = i32::try_from(written_year).map_err(|_| "year out of range")?;
        if self.rest == b" BC" {
            self.rest = &[];
            if year == 0 {
                return Err("there is no year 0 BC");
            }
            Ok(1 - year)
        } else {
            Ok(year)
        }
    }

    /// `.f{1,6}` if present, as microseconds.
    fn fraction(&mut self) -> Result<i64, &'static str> {
        if !self.eat(b'.') {
            return Ok(0);
        }
        let before = self.rest.len();
        let value = self.digits(1, 6).ok_or("invalid fraction of a second")?;
        if self.rest.first().is_some_and(u8::is_ascii_digit) {
            return Err("more than 6 fraction digits");
        }
        let read = before - self.rest.len();
        // read is 1..=6, so the power and the product fit.
        Ok(i64::try_from(value).unwrap_or(0) * 10_i64.pow(6 - read as u32))
    }

    /// `HH:MM:SS[.ffffff]` with `HH <= max_hour`; hour 24 only as `24:00:00`.
    fn time_of_day(&mut self, max_hour: u64) -> Result<Time, &'static str> {
        let hour = self.digits(2, 2).filter(|&h| h <= max_hour).ok_or("invalid hour")?;
        self.expect(b':')?;
        let minute = self.digits(2, 2).filter(|&m| m < 60).ok_or("invalid minute")?;
        self.expect(b':')?;
        let second = self.digits(2, 2).filter(|&s| s < 60).ok_or("invalid second")?;
        let fraction = self.fraction()?;
        // Each part is range-checked above, so the sum fits.
        let micros = i64::try_from(hour * 3600 + minute * 60 + second).unwrap_or(0) * USECS_PER_SEC + fraction;
        Some(Time(micros)).filter(|t| t.is_valid()).ok_or("time out of range")
    }

    /// `±HH[:MM[:SS]]` as seconds east of UTC.
    fn utc_offset(&mut self) -> Result<i32, &'static str> {
        let negative = if self.eat(b'-') {
            true
        } else if self.eat(b'+') {
            false
        } else {
            return Err("missing UTC offset");
        };
        let hours = self.digits(1, 2).ok_or("invalid UTC offset")?;
        let mut minutes = 0;
        let mut seconds = 0;
        if self.eat(b':') {
            minutes = self.digits(2, 2).filter(|&m| m < 60).ok_or("invalid UTC offset")?;
            if self.eat(b':') {
                seconds = self.digits(2, 2).filter(|&s| s < 60).ok_or("invalid UTC offset")?;
            }
        }
        // hours ≤ 99: fits.
        let magnitude = i32::try_from(hours * 3600 + minutes * 60 + seconds).unwrap_or(i32::MAX);
        if magnitude >= UTC_OFFSET_LIMIT {
            return Err("UTC offset out of range");
        }
        Ok(if negative { -magnitude } else { magnitude })
    }
}

/// Days in a month of a (proleptic Gregorian, astronomical) year.
fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year), by counting
/// 400-year eras of 146097 days from a year that starts in March, so leap days fall last.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    // Both are small and positive by construction: day 1..=31, month 1..=12.
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` with the year as written (BC years count from 1).
fn write_ymd(f: &mut fmt::Formatter<'_>, year: i64, month: u32, day: u32) -> fmt::Result {
    let written = if year > 0 { year } else { 1 - year };
    write!(f, "{written:04}-{month:02}-{day:02}")
}

fn write_era(f: &mut fmt::Formatter<'_>, year: i64) -> fmt::Result {
    if year <= 0 {
        f.write_str(" BC")?;
    }
    Ok(())
}

/// `HH:MM:SS[.ffffff]` for microseconds since midnight (24:00:00 included).
fn write_time_of_day(f: &mut fmt::Formatter<'_>, micros: i64) -> fmt::Result {
    let micros = micros.unsigned_abs();
    let hours = micros / USECS_PER_HOUR.unsigned_abs();
    write!(f, "{hours:02}:")?;
    write_minutes_seconds(f, micros % USECS_PER_HOUR.unsigned_abs())
}

/// `MM:SS[.ffffff]` for less than an hour of microseconds, trailing fraction zeros trimmed.
fn write_minutes_seconds(f: &mut fmt::Formatter<'_>, micros: u64) -> fmt::Result {
    let minutes = micros / USECS_PER_MINUTE.unsigned_abs();
    let seconds = micros / USECS_PER_SEC.unsigned_abs() % 60;
    let fraction = micros % USECS_PER_SEC.unsigned_abs();
    write!(f, "{minutes:02}:{seconds:02}")?;
    if fraction != 0 {
        let mut digits = fraction;
        let mut width = 6;
        while digits % 10 == 0 {
            digits /= 10;
            width -= 1;
        }
        write!(f, ".{digits:0width$}")?;
    }
    Ok(())
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` as `timetz_out` prints it (`+` for UTC itself).
fn write_utc_offset(f: &mut fmt::Formatter<'_>, east_seconds: i32) -> fmt::Result {
    let sign = if east_seconds < 0 { '-' } else { '+' };
    let magnitude = east_seconds.unsigned_abs();
    let (hours, minutes, seconds) = (magnitude / 3600, magnitude / 60 % 60, magnitude % 60);
    write!(f, "{sign}{hours:02}")?;
    if minutes != 0 || seconds != 0 {
        write!(f, ":{minutes:02}")?;
    }
    if seconds != 0 {
        write!(f, ":{seconds:02}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_matches_postgres_epoch_and_limits() {
        assert_eq!(Date::from_ymd(2000, 1, 1), Some(Date(0)));
        assert_eq!(Date::from_ymd(1970, 1, 1), Some(Date(-10_957)));
        assert_eq!(Date::from_ymd(2024, 2, 29), Some(Date(8_825)));
        assert_eq!(Date::from_ymd(2023, 2, 29), None);
        assert_eq!(Date::from_ymd(1900, 2, 29), None, "century, not a leap year");
        assert_eq!(Date::from_ymd(-4713, 11, 24), Some(Date(MIN_DATE_DAYS)), "4714-11-24 BC, Julian day 0");
        assert_eq!(Date::from_ymd(-4713, 11, 23), None);
        assert_eq!(Date::from_ymd(5_874_897, 12, 31), Some(Date(END_DATE_DAYS - 1)));
        assert_eq!(Date::from_ymd(5_874_898, 1, 1), None);
        for days in [MIN_DATE_DAYS, -1_000_000, -1, 0, 59, 60, 366, 1_000_000, END_DATE_DAYS - 1] {
            let (y, m, d) = Date(days).to_ymd().unwrap();
            assert_eq!(Date::from_ymd(y, m, d), Some(Date(days)));
        }
        assert_eq!(days_from_civil(294_277, 1, 1) - UNIX_TO_PG_EPOCH_DAYS, END_TIMESTAMP / USECS_PER_DAY);
        assert_eq!(END_TIMESTAMP % USECS_PER_DAY, 0);
        assert_eq!(i64::from(MIN_DATE_DAYS) * USECS_PER_DAY, MIN_TIMESTAMP);
    }

    #[test]
    fn dates_render_and_parse_with_bc_and_infinity() {
        for (text, date) in [
            ("2000-01-01", Date(0)),
            ("0044-03-15 BC", Date::from_ymd(-43, 3, 15).unwrap()),
            ("0001-01-01 BC", Date::from_ymd(0, 1, 1).unwrap()),
            ("0001-01-01", Date::from_ymd(1, 1, 1).unwrap()),
            ("5874897-12-31", Date(END_DATE_DAYS - 1)),
            ("infinity", Date::INFINITY),
            ("-infinity", Date::NEG_INFINITY),
        ] {
            assert_eq!(Date::parse(text), Ok(date), "{text}");
            assert_eq!(date.to_string(), text);
        }
        for bad in ["2000-1-01", "2000-01-32", "2000-13-01", "0000-01-01 BC", "2000-01-01 AD", "", "Infinity"] {
            assert!(Date::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_and_offsets() {
        assert_eq!(Time::parse("24:00:00"), Ok(Time(USECS_PER_DAY)));
        assert!(Time::parse("24:00:00.000001").is_err());
        assert!(Time::parse("12:60:00").is_err());
        assert!(Time::parse("12:00:00.1234567").is_err());
        assert_eq!(Time::parse("04:05:06.789"), Ok(Time::from_hms_micro(4, 5, 6, 789_000).unwrap()));
        assert_eq!(Time(1).to_string(), "00:00:00.000001");
        assert_eq!(Time::from_hms_micro(4, 5, 6, 789_000).unwrap().to_string(), "04:05:06.789");

        for (text, offset) in [("12:00:00+05:30", 19_800), ("12:00:00-03:00:15", -10_815), ("00:00:00+00", 0)] {
            let parsed = TimeTz::parse(text).unwrap();
            assert_eq!(parsed.utc_offset_seconds, offset, "{text}");
            assert_eq!(parsed.to_string(), text);
        }
        assert!(TimeTz::parse("12:00:00").is_err());
        assert!(TimeTz::parse("12:00:00+16").is_err(), "beyond ±15:59:59");
    }

    #[test]
    fn timestamps_render_and_parse() {
        let noon_bc = Timestamp::parse("0044-03-15 12:00:00 BC", false).unwrap();
        assert_eq!(noon_bc.to_string(), "0044-03-15 12:00:00 BC");
        assert_eq!(noon_bc.display_utc().to_string(), "0044-03-15 12:00:00+00 BC");
        assert_eq!(Timestamp::parse("0044-03-15 12:00:00+00 BC", true), Ok(noon_bc));
        assert_eq!(Timestamp::parse("2000-01-01 00:00:00", false), Ok(Timestamp(0)));
        assert_eq!(Timestamp::parse("1999-12-31 23:59:59.999999", false), Ok(Timestamp(-1)));
        assert_eq!(Timestamp(-1).display_utc().to_string(), "1999-12-31 23:59:59.999999+00");
        // Offsets are folded into UTC.
        assert_eq!(Timestamp::parse("2000-01-01 05:30:00+05:30", true), Ok(Timestamp(0)));
        assert_eq!(Timestamp::parse("1999-12-31 23:00:00-01", true), Ok(Timestamp(0)));
        assert_eq!(Timestamp::parse("infinity", true), Ok(Timestamp::INFINITY));
        assert_eq!(Timestamp::NEG_INFINITY.display_utc().to_string(), "-infinity");
        assert_eq!(Timestamp(MIN_TIMESTAMP).to_string(), "4714-11-24 00:00:00 BC");
        assert_eq!(Timestamp(END_TIMESTAMP - 1).to_string(), "294276-12-31 23:59:59.999999");
        assert!(Timestamp::parse("294277-01-01 00:00:00", false).is_err());
        assert!(Timestamp::parse("2000-01-01 24:00:00", false).is_err());
        assert!(Timestamp::parse("2000-01-01 00:00:00", true).is_err(), "offset required");
        assert!(Timestamp::parse("2000-01-01 00:00:00+00", false).is_err(), "no offset in timestamp");
        assert_eq!(Timestamp(0).to_unix_micros(), Some(946_684_800_000_000));
        assert_eq!(Timestamp::INFINITY.to_unix_micros(), None);
    }

    #[test]
    fn intervals_in_postgres_style() {
        let interval = |months, days, micros| Interval { months, days, micros };
        for (text, value) in [
            ("00:00:00", interval(0, 0, 0)),
            ("-10 mons -3 days +04:05:06.789", interval(-10, -3, 14_706_789_000)),
            ("1 year 1 mon 1 day 01:00:00", interval(13, 1, USECS_PER_HOUR)),
            ("-00:00:00.5", interval(0, 0, -500_000)),
            ("-2 days", interval(0, -2, 0)),
            ("3 days -04:00:00", interval(0, 3, -4 * USECS_PER_HOUR)),
            ("-1 mons +1 day", interval(-1, 1, 0)),
            ("1 mon -1 days", interval(1, -1, 0)),
            ("-1 mons -1 days -00:00:01", interval(-1, -1, -USECS_PER_SEC)),
            ("-1 years -2 mons", interval(-14, 0, 0)),
            ("100000:00:00", interval(0, 0, 100_000 * USECS_PER_HOUR)),
            (
                "-178956970 years -8 mons -2147483648 days -2562047788:00:54.775808",
                interval(i32::MIN, i32::MIN, i64::MIN),
            ),
            ("178956970 years 7 mons 2147483647 days 2562047788:00:54.775807", interval(i32::MAX, i32::MAX, i64::MAX)),
        ] {
            assert_eq!(Interval::parse(text), Ok(value), "{text}");
            assert_eq!(value.to_string(), text);
        }
        for bad in ["", "1 day 1 year", "1 days 2 days", "1 fortnight", "1", "01:00", "2562047789:00:00", "1:2:3 4"] {
            assert!(Interval::parse(bad).is_err(), "{bad}");
        }
    }
}
