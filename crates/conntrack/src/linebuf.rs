//! Reassembly of text lines from a TCP byte stream, for helpers whose commands
//! are lines (FTP, IRC, SIP over TCP).
//!
//! The kernel's FTP helper only parses segments that start right after a
//! newline and drops a segment holding a partial command, waiting for the
//! sender to retransmit it whole. Tollgate instead keeps the unfinished tail of
//! the stream (bounded), so a command split across segments is seen whole and
//! nothing is dropped. Retransmitted bytes are skipped; a gap (a lost segment
//! the middlebox never saw) discards the partial line and resynchronises at the
//! next newline, so a line is never glued together from non-adjacent bytes.

/// Longest line kept; longer ones are skipped up to their newline (no control
/// command any helper parses comes close).
pub const MAX_LINE: usize = 512;

/// Per-direction stream state.
#[derive(Clone, Debug)]
pub struct LineBuf {
    /// Sequence number of the next byte expected.
    next_seq: u32,
    /// `next_seq` is known.
    started: bool,
    /// Skipping until the next newline (after a gap or an overlong line).
    skipping: bool,
    len: usize,
    buf: [u8; MAX_LINE],
}

impl Default for LineBuf {
    fn default() -> Self {
        LineBuf {
            next_seq: 0,
            started: false,
            skipping: false,
            len: 0,
            buf: [0; MAX_LINE],
        }
    }
}

/// What feeding a segment found out of the ordinary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Bytes skipped as retransmissions.
    pub retransmitted: usize,
    /// A gap was seen (a partial line was discarded).
    pub gap: bool,
    /// A line longer than [`MAX_LINE`] was skipped.
    pub overlong: bool,
}

impl LineBuf {
    /// Feeds a segment whose first byte has sequence number `seq`; calls
    /// `on_line` with every complete line (without its `\n` or `\r\n`).
    pub fn feed(&mut self, seq: u32, payload: &[u8], mut on_line: impl FnMut(&[u8])) -> FeedStats {
        let mut st = FeedStats::default();
        if payload.is_empty() {
            return st;
        }
        let mut data = payload;
        if self.started {
            let off = seq.wrapping_sub(self.next_seq);
            if off == 0 {
                // In order.
            } else if off > u32::MAX / 2 {
                // Starts before what we have: skip what was already seen.
                let back = self.next_seq.wrapping_sub(seq) as usize;
                if back >= data.len() {
                    st.retransmitted = data.len();
                    return st;
                }
                st.retransmitted = back;
                data = &data[back..];
            } else {
                // A gap: bytes we never saw. Resynchronise at the next newline.
                st.gap = true;
                self.len = 0;
                self.skipping = true;
            }
        } else {
            // First data seen in this direction: start at a line boundary only if
            // we cannot know better; the caller starts us at the stream's first
            // byte (right after the SYN), where a line does begin.
            self.started = true;
        }
        let end_seq = seq.wrapping_add(u32::try_from(payload.len()).unwrap_or(u32::MAX));
        self.next_seq = end_seq;
        for &b in data {
            if b == b'\n' {
                if self.skipping {
                    self.skipping = false;
                } else {
                    let mut line = &self.buf[..self.len];
                    if let [rest @ .., b'\r'] = line {
                        line = rest;
                    }
                    on_line(line);
                }
                self.len = 0;
                continue;
            }
            if self.skipping {
                continue;
            }
            if self.len == MAX_LINE {
                st.overlong = true;
                self.skipping = true;
                self.len = 0;
                continue;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        st
    }

    /// Starts the stream at `seq` (the byte after the SYN).
    pub fn start_at(&mut self, seq: u32) {
        self.next_seq = seq;
        self.started = true;
        self.len = 0;
        self.skipping = false;
    }

    /// Starts mid-stream (the connection was picked up without its SYN): the
    /// first bytes seen may be the middle of a line, so skip to a newline.
    pub fn start_mid_stream(&mut self, seq: u32) {
        self.start_at(seq);
        self.skipping = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(lb: &mut LineBuf, seq: u32, p: &[u8]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        lb.feed(seq, p, |l| v.push(l.to_vec()));
        v
    }

    #[test]
    fn split_and_joined_commands() {
        let mut lb = LineBuf::default();
        lb.start_at(100);
        assert!(lines(&mut lb, 100, b"PORT 10,0,0").is_empty());
        assert_eq!(
            lines(&mut lb, 111, b",1,4,1\r\nNOOP\r\nLI"),
            vec![b"PORT 10,0,0,1,4,1".to_vec(), b"NOOP".to_vec()]
        );
        assert_eq!(lines(&mut lb, 127, b"ST\r\n"), vec![b"LIST".to_vec()]);
    }

    #[test]
    fn retransmissions_are_skipped_and_gaps_resync() {
        let mut lb = LineBuf::default();
        lb.start_at(0);
        assert_eq!(lines(&mut lb, 0, b"ABC\n"), vec![b"ABC".to_vec()]);
        // Full retransmission: nothing new.
        let mut n = 0;
        let st = lb.feed(0, b"ABC\n", |_| n += 1);
        assert_eq!((n, st.retransmitted), (0, 4));
        // Partial overlap.
        assert_eq!(lines(&mut lb, 2, b"C\nDEF\n"), vec![b"DEF".to_vec()]);
        // A gap: the partial "GH" is dropped, and the tail before the next newline too.
        assert!(lines(&mut lb, 10, b"GH").is_empty());
        let mut v = Vec::new();
        let st = lb.feed(20, b"XY\nPORT 1\n", |l| v.push(l.to_vec()));
        assert!(st.gap);
        assert_eq!(v, vec![b"PORT 1".to_vec()]);
    }

    #[test]
    fn overlong_lines_are_skipped() {
        let mut lb = LineBuf::default();
        lb.start_at(0);
        let mut long = vec![b'a'; MAX_LINE + 10];
        long.extend_from_slice(b"\nOK\n");
        let mut v = Vec::new();
        let st = lb.feed(0, &long, |l| v.push(l.to_vec()));
        assert!(st.overlong);
        assert_eq!(v, vec![b"OK".to_vec()]);
    }

    #[test]
    fn mid_stream_start_skips_to_newline() {
        let mut lb = LineBuf::default();
        lb.start_mid_stream(5);
        assert_eq!(lines(&mut lb, 5, b"RT 1,2\nPASV\n"), vec![b"PASV".to_vec()]);
    }

    proptest! {
        /// However a stream is cut into segments (in order), the lines are the same.
        #[test]
        fn segmentation_does_not_matter(text in "[a-z ,0-9\r\n]{0,300}", cuts in proptest::collection::vec(0usize..300, 0..10), seq0 in any::<u32>()) {
            let bytes = text.as_bytes();
            let mut whole = LineBuf::default();
            whole.start_at(seq0);
            let expect = lines(&mut whole, seq0, bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut lb = LineBuf::default();
            lb.start_at(seq0);
            let mut got = Vec::new();
            for w in cuts.windows(2) {
                let (a, b) = (w[0], w[1]);
                let seq = seq0.wrapping_add(a as u32);
                got.extend(lines(&mut lb, seq, &bytes[a..b]));
                // A retransmission of the same segment changes nothing.
                got.extend(lines(&mut lb, seq, &bytes[a..b]));
            }
            prop_assert_eq!(got, expect);
        }
    }
}
