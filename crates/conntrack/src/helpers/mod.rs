//! Pure payload parsers for the conntrack helpers (the kernel's
//! `nf_conntrack_{ftp,irc,tftp,amanda,sane}.c`).
//!
//! Each parser reads the bytes of a control connection and returns a typed
//! announcement of the data connection that will follow. They do no I/O,
//! never allocate, never panic on any input and do work linear in the input.
//! Turning an announcement into an expectation (anti-bounce address checks,
//! masks, per-helper limits, policy) is the caller's job; the parsers return
//! every address they read so that the caller can make those checks.
//!
//! Error convention shared by the parsers: `Ok(None)` means "not a message
//! this helper acts on" (most traffic), `Err(ParseErr)` means "this is such a
//! message but it is malformed" (the kernel either drops the packet or ignores
//! it; the caller counts a helper parse error).

pub mod amanda;
pub mod ftp;
pub mod irc;
pub mod pptp;
pub mod sane;
pub mod sip;
pub mod tftp;

/// Why a helper refused a message that looked like one it acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseErr {
    /// The message ends before its required parts (no argument, missing
    /// delimiter, fewer numbers than required).
    #[error("truncated helper message")]
    Truncated,
    /// A character that the syntax does not allow at that place.
    #[error("unexpected character in helper message")]
    BadSyntax,
    /// A number is empty, too long or out of range (octet > 255, port >
    /// 65535, address > u32).
    #[error("number out of range in helper message")]
    BadNumber,
    /// The announced port is 0, which no data connection can use.
    #[error("port 0 announced")]
    ZeroPort,
    /// The address text does not parse (bad IPv6 text, unknown family).
    #[error("bad address in helper message")]
    BadAddress,
}

/// A run of ASCII decimal digits read from the front of a byte string.
///
/// The value saturates instead of wrapping: the kernel accumulates in a
/// fixed-width integer and silently wraps (so `65537` becomes port 1); we keep
/// enough information to reject such numbers instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Digits {
    /// Value of the digits, saturated at `u64::MAX`.
    pub value: u64,
    /// Number of digit bytes consumed (leading zeros included).
    pub len: usize,
}

/// Reads the longest run of ASCII digits at the start of `s`.
pub(crate) fn digits(s: &[u8]) -> Digits {
    let mut value: u64 = 0;
    let mut len = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.saturating_mul(10).saturating_add(u64::from(b - b'0'));
        len += 1;
    }
    Digits { value, len }
}

/// Reads a non-empty decimal number `<= max` at the start of `s`; returns the
/// value and the number of bytes consumed. Leading zeros are accepted, as the
/// kernel accepts them.
pub(crate) fn number(s: &[u8], max: u64) -> Result<(u64, usize), ParseErr> {
    let d = digits(s);
    if d.len == 0 || d.value > max {
        return Err(ParseErr::BadNumber);
    }
    Ok((d.value, d.len))
}

/// Reads a port number (1..=65535) at the start of `s`.
pub(crate) fn port(s: &[u8]) -> Result<(u16, usize), ParseErr> {
    let (v, n) = number(s, u64::from(u16::MAX))?;
    match u16::try_from(v) {
        Ok(0) => Err(ParseErr::ZeroPort),
        Ok(p) => Ok((p, n)),
        Err(_) => Err(ParseErr::BadNumber),
    }
}

/// Position of the first occurrence of `needle` in `hay` (naive search; the
/// needles are a few bytes and the inputs are bounded by the callers, so this
/// is linear in practice: at most `hay.len() * needle.len()` comparisons).
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_digits_saturate_and_count_zeros() {
        assert_eq!(digits(b"00012x"), Digits { value: 12, len: 5 });
        assert_eq!(digits(b"x"), Digits { value: 0, len: 0 });
        let long = [b'9'; 40];
        assert_eq!(digits(&long).value, u64::MAX);
    }

    #[test]
    fn helpers_port_limits() {
        assert_eq!(port(b"65535|"), Ok((65535, 5)));
        assert_eq!(port(b"00021"), Ok((21, 5)));
        assert_eq!(port(b"65536"), Err(ParseErr::BadNumber));
        assert_eq!(port(b"0"), Err(ParseErr::ZeroPort));
        assert_eq!(port(b"000"), Err(ParseErr::ZeroPort));
        assert_eq!(port(b""), Err(ParseErr::BadNumber));
        assert_eq!(port(b"|1"), Err(ParseErr::BadNumber));
    }

    #[test]
    fn helpers_find() {
        assert_eq!(find(b"abcDATA 1", b"DATA "), Some(3));
        assert_eq!(find(b"DAT", b"DATA "), None);
        assert_eq!(find(b"", b"x"), None);
    }
}
