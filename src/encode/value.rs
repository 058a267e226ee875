//! Binary wire values → the text Postgres itself would print.
//!
//! Each writer takes one column's raw binary bytes (as sent in the extended protocol) and appends the same
//! text as the type's output function (`COPY`) or `to_json()` would produce. All are allocation-free.

use std::cell::Cell;

use super::EncodeError;

/// How dates and times are spelt: `COPY` (DateStyle ISO) or `to_json()` (XSD, with a `T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    Iso,
    Xsd,
}

/// Microseconds from the Unix epoch to Postgres's epoch (2000-01-01).
const PG_EPOCH_DAYS_FROM_UNIX: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

pub(crate) fn array<const N: usize>(raw: &[u8], kind: &'static str) -> Result<[u8; N], EncodeError> {
    raw.try_into().map_err(|_| EncodeError::Malformed(kind))
}

pub(crate) fn write_int(raw: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut buf = itoa::Buffer::new();
    let text = match raw.len() {
        2 => buf.format(i16::from_be_bytes(array(raw, "int2")?)),
        4 => buf.format(i32::from_be_bytes(array(raw, "int4")?)),
        8 => buf.format(i64::from_be_bytes(array(raw, "int8")?)),
        _ => return Err(EncodeError::Malformed("integer")),
    };
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

pub(crate) fn write_bool(raw: &[u8], json: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let value = match raw {
        [0] => false,
        [1] => true,
        _ => return Err(EncodeError::Malformed("boolean")),
    };
    out.extend_from_slice(match (value, json) {
        (true, true) => b"true",
        (false, true) => b"false",
        (true, false) => b"t",
        (false, false) => b"f",
    });
    Ok(())
}

/// `NaN`, `Infinity` and `-Infinity` are no JSON numbers; `to_json()` quotes them.
fn write_special(text: &str, json: bool, out: &mut Vec<u8>) {
    if json {
        out.push(b'"');
    }
    out.extend_from_slice(text.as_bytes());
    if json {
        out.push(b'"');
    }
}

/// `numeric` from its base-10000 wire form, exactly as `numeric_out` prints it (no rounding, `dscale` digits).
pub(crate) fn write_numeric(raw: &[u8], json: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    const MALFORMED: EncodeError = EncodeError::Malformed("numeric");
    let header: [u8; 8] = raw.get(..8).ok_or(MALFORMED)?.try_into().map_err(|_| MALFORMED)?;
    let ndigits = i16::from_be_bytes([header[0], header[1]]);
    let weight = i32::from(i16::from_be_bytes([header[2], header[3]]));
    let sign = u16::from_be_bytes([header[4], header[5]]);
    let dscale = i32::from(u16::from_be_bytes([header[6], header[7]]));
    let body = &raw[8..];
    if ndigits < 0 || body.len() != ndigits as usize * 2 {
        return Err(MALFORMED);
    }
    let special = match sign {
        0x0000 => None,
        0x4000 => {
            out.push(b'-');
            None
        }
        0xC000 => Some("NaN"),
        0xD000 => Some("Infinity"),
        0xF000 => Some("-Infinity"),
        _ => return Err(MALFORMED),
    };
    if let Some(text) = special {
        write_special(text, json, out);
        return Ok(());
    }
    let digit = |i: i32| -> u16 {
        if i < 0 || i >= i32::from(ndigits) {
            0
        } else {
            let at = i as usize * 2;
            u16::from_be_bytes([body[at], body[at + 1]])
        }
    };
    if weight < 0 {
        out.push(b'0');
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(digit(0)).as_bytes());
        for i in 1..=weight {
            write_group(digit(i), 4, out);
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let mut remaining = dscale;
        let mut i = weight + 1;
        while remaining > 0 {
            let take = remaining.min(4);
            write_group(digit(i), take as usize, out);
            remaining -= take;
            i += 1;
        }
    }
    Ok(())
}

/// The first `len` of a base-10000 digit's four decimal digits.
fn write_group(group: u16, len: usize, out: &mut Vec<u8>) {
    let decimal = [
        b'0' + (group / 1000) as u8,
        b'0' + (group / 100 % 10) as u8,
        b'0' + (group / 10 % 10) as u8,
        b'0' + (group % 10) as u8,
    ];
    out.extend_from_slice(&decimal[..len]);
}

pub(crate) fn write_uuid(raw: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let bytes: [u8; 16] = array(raw, "uuid")?;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.extend_from_slice(&hex_pair(*b));
    }
    Ok(())
}

fn hex_pair(b: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]
}

/// `bytea` as `bytea_output = hex` prints it; in JSON the backslash is escaped, as `to_json()` does.
pub(crate) fn write_bytea(raw: &[u8], json: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(if json { b"\"\\\\x" } else { b"\\x" });
    out.reserve(raw.len() * 2 + 1);
    for b in raw {
        out.extend_from_slice(&hex_pair(*b));
    }
    if json {
        out.push(b'"');
    }
}

/// Proleptic Gregorian (year, month, day) for days since 1970-01-01; year 0 is 1 BC.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Two decimal digits, for the fixed-width fields of dates and times.
#[inline]
fn write_two(value: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'0' + (value / 10 % 10) as u8, b'0' + (value % 10) as u8]);
}

fn write_padded(value: u64, width: usize, out: &mut Vec<u8>) {
    let mut buf = itoa::Buffer::new();
    let text = buf.format(value);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(text.len())));
    out.extend_from_slice(text.as_bytes());
}

/// The last four-digit-year date a column printed, for its next value of the same day: most dates and
/// timestamps in a table, sorted or recent, share their day with the row before, and a `YYYY-MM-DD` costs a
/// dozen divisions.
#[derive(Debug)]
pub(crate) struct LastDate(Cell<(i64, [u8; 10])>);

impl Default for LastDate {
    fn default() -> Self {
        // No day is `i64::MIN` (days come from an `i32`, or an `i64` of microseconds divided by a day's).
        LastDate(Cell::new((i64::MIN, [0; 10])))
    }
}

/// Writes `YYYY-MM-DD` (BC years as their positive number; the caller appends ` BC`) and returns whether it is BC.
#[inline]
fn write_civil_date(days_since_pg_epoch: i64, last: &LastDate, out: &mut Vec<u8>) -> bool {
    let (day_before, text) = last.0.get();
    if day_before == days_since_pg_epoch {
        out.extend_from_slice(&text);
        return false;
    }
    let (year, month, day) = civil_from_days(days_since_pg_epoch + PG_EPOCH_DAYS_FROM_UNIX);
    if (1..=9999).contains(&year) {
        // The common case in one piece: four-digit years need no padding logic.
        let year = year as u32;
        let text = [
            digit(year / 1000),
            digit(year / 100),
            digit(year / 10),
            digit(year),
            b'-',
            digit(month / 10),
            digit(month),
            b'-',
            digit(day / 10),
            digit(day),
        ];
        last.0.set((days_since_pg_epoch, text));
        out.extend_from_slice(&text);
        return false;
    }
    let bc = year <= 0;
    write_padded(if bc { (1 - year) as u64 } else { year as u64 }, 4, out);
    out.push(b'-');
    write_two(u64::from(month), out);
    out.push(b'-');
    write_two(u64::from(day), out);
    bc
}

/// The ASCII digit of `value`'s last decimal digit.
#[inline]
fn digit(value: u32) -> u8 {
    b'0' + (value % 10) as u8
}

/// `HH:MM:SS` and, unless it is zero, the fraction of a second without trailing zeros, as `time_out` prints a
/// time of day of `micros`.
#[inline]
fn write_time_of_day(micros: u64, out: &mut Vec<u8>) {
    let seconds = (micros / 1_000_000) as u32;
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let fraction = (micros % 1_000_000) as u32;
    let text = [
        digit(hours / 10),
        digit(hours),
        b':',
        digit(minutes / 10),
        digit(minutes),
        b':',
        digit(seconds / 10),
        digit(seconds),
        b'.',
        digit(fraction / 100_000),
        digit(fraction / 10_000),
        digit(fraction / 1000),
        digit(fraction / 100),
        digit(fraction / 10),
        digit(fraction),
    ];
    let len = if fraction == 0 {
        8
    } else {
        let mut len = text.len();
        let mut rest = fraction;
        while rest.is_multiple_of(10) {
            rest /= 10;
            len -= 1;
        }
        len
    };
    // All fifteen bytes, then cut back: a copy of fixed size is a store, one of unknown size a call.
    let start = out.len();
    out.extend_from_slice(&text);
    out.truncate(start + len);
}

/// `date`: `2024-02-29`, `0044-03-15 BC`, `infinity`; quoted in JSON.
pub(crate) fn write_date(raw: &[u8], json: bool, last: &LastDate, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let days = i32::from_be_bytes(array(raw, "date")?);
    if json {
        out.push(b'"');
    }
    match days {
        i32::MAX => out.extend_from_slice(b"infinity"),
        i32::MIN => out.extend_from_slice(b"-infinity"),
        _ => {
            if write_civil_date(i64::from(days), last, out) {
                out.extend_from_slice(b" BC");
            }
        }
    }
    if json {
        out.push(b'"');
    }
    Ok(())
}

/// `timestamp` and (in a UTC session) `timestamptz`, as `timestamp_out` or `to_json()` prints them.
pub(crate) fn write_timestamp(
    raw: &[u8],
    style: Style,
    utc: bool,
    last: &LastDate,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let micros = i64::from_be_bytes(array(raw, "timestamp")?);
    let json = style == Style::Xsd;
    if json {
        out.push(b'"');
    }
    match micros {
        i64::MAX => out.extend_from_slice(b"infinity"),
        i64::MIN => out.extend_from_slice(b"-infinity"),
        _ => {
            let bc = write_civil_date(micros.div_euclid(MICROS_PER_DAY), last, out);
            out.push(if json { b'T' } else { b' ' });
            write_time_of_day(micros.rem_euclid(MICROS_PER_DAY) as u64, out);
            if utc {
                out.extend_from_slice(if json { b"+00:00" } else { b"+00" });
            }
            if bc {
                out.extend_from_slice(b" BC");
            }
        }
    }
    if json {
        out.push(b'"');
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn render(f: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// `numeric`'s wire form of a value: base-10000 digits, weight, sign, display scale.
    pub(in crate::encode) fn numeric(ndigits: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(ndigits.len() as i16).to_be_bytes());
        raw.extend_from_slice(&weight.to_be_bytes());
        raw.extend_from_slice(&sign.to_be_bytes());
        raw.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            raw.extend_from_slice(&d.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numeric_prints_every_scale_digit_without_rounding() {
        // 12345.6700 → digits [1, 2345, 6700], weight 1, dscale 4
        let raw = numeric(&[1, 2345, 6700], 1, 0, 4);
        assert_eq!(render(|o| write_numeric(&raw, false, o)), "12345.6700");
        let small = numeric(&[5], -2, 0x4000, 10); // -0.0000000500
        assert_eq!(render(|o| write_numeric(&small, false, o)), "-0.0000000500");
        let zero = numeric(&[], 0, 0, 2);
        assert_eq!(render(|o| write_numeric(&zero, false, o)), "0.00");
        let big = numeric(&[1], 5, 0, 0); // 10^20
        assert_eq!(render(|o| write_numeric(&big, false, o)), "100000000000000000000");
    }

    #[test]
    fn numeric_specials_are_quoted_only_in_json() {
        let nan = numeric(&[], 0, 0xC000, 0);
        assert_eq!(render(|o| write_numeric(&nan, false, o)), "NaN");
        assert_eq!(render(|o| write_numeric(&nan, true, o)), "\"NaN\"");
        let inf = numeric(&[], 0, 0xF000, 0);
        assert_eq!(render(|o| write_numeric(&inf, true, o)), "\"-Infinity\"");
    }

    #[test]
    fn timestamps_render_iso_and_xsd() {
        let micros: i64 = 1_234_567; // 2000-01-01 00:00:01.234567
        let raw = micros.to_be_bytes();
        assert_eq!(
            render(|o| write_timestamp(&raw, Style::Iso, true, &LastDate::default(), o)),
            "2000-01-01 00:00:01.234567+00"
        );
        assert_eq!(
            render(|o| write_timestamp(&raw, Style::Xsd, false, &LastDate::default(), o)),
            "\"2000-01-01T00:00:01.234567\""
        );
        let half = 500_000i64.to_be_bytes();
        assert_eq!(
            render(|o| write_timestamp(&half, Style::Iso, false, &LastDate::default(), o)),
            "2000-01-01 00:00:00.5"
        );
        // One column's values in turn: a day seen before is the day printed before.
        let last = LastDate::default();
        for (micros, text) in [
            (1, "2000-01-01 00:00:00.000001"),
            (50_000, "2000-01-01 00:00:00.05"),
            (MICROS_PER_DAY - 1, "2000-01-01 23:59:59.999999"),
            (MICROS_PER_DAY + 3_600_000_000, "2000-01-02 01:00:00"),
            // Years 999 and 10000, on either side of the four-digit fast path.
            (-365_243 * MICROS_PER_DAY, "0999-12-31 00:00:00"),
            (2_921_940 * MICROS_PER_DAY, "10000-01-01 00:00:00"),
            (2_921_940 * MICROS_PER_DAY + 1, "10000-01-01 00:00:00.000001"),
            (5, "2000-01-01 00:00:00.000005"),
        ] {
            let raw = micros.to_be_bytes();
            assert_eq!(render(|o| write_timestamp(&raw, Style::Iso, false, &last, o)), text);
        }
        let bc = (-(2_000i64 * 366 * MICROS_PER_DAY)).to_be_bytes();
        assert!(render(|o| write_timestamp(&bc, Style::Iso, true, &LastDate::default(), o)).ends_with("+00 BC"));
        assert_eq!(
            render(|o| write_timestamp(&i64::MAX.to_be_bytes(), Style::Xsd, true, &LastDate::default(), o)),
            "\"infinity\""
        );
    }

    #[test]
    fn dates_handle_leap_days_and_bc() {
        let last = LastDate::default();
        let d = |days: i32| render(|o| write_date(&days.to_be_bytes(), false, &last, o));
        assert_eq!(d(0), "2000-01-01");
        assert_eq!(d(59), "2000-02-29");
        assert_eq!(d(-730_119), "0001-01-01");
        assert_eq!(d(-730_120), "0001-12-31 BC");
    }

    #[test]
    fn uuid_and_bytea_are_lowercase_hex() {
        let raw: Vec<u8> = (0u8..16).collect();
        assert_eq!(render(|o| write_uuid(&raw, o)), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        let mut out = Vec::new();
        write_bytea(&[0xde, 0xad], true, &mut out);
        assert_eq!(out, b"\"\\\\xdead\"");
    }
}
