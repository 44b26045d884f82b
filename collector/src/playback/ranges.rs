//! HTTP byte ranges (RFC 9110 section 14) of an in-memory body, sans-I/O.
//!
//! One range per request is served (`bytes=a-b`, `bytes=a-`, `bytes=-n`);
//! a request for several ranges gets the whole body (200), which RFC 9110
//! allows and every player handles. Players and CDNs ask for one range.

/// What to answer to a `Range` header for a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) range: 200 with the whole body.
    Whole,
    /// 206 with `start..end` (end exclusive).
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

pub fn answer(range: Option<&str>, len: u64) -> RangeAnswer {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match parse(b) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(n) if len > 0 => RangeAnswer::Partial {
                start: len.saturating_sub(n),
                end: len,
            },
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Whole,
        },
        (false, true) => match parse(a) {
            Some(s) if s < len => RangeAnswer::Partial { start: s, end: len },
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Whole,
        },
        (false, false) => match (parse(a), parse(b)) {
            (Some(s), Some(e)) if s <= e && s < len => RangeAnswer::Partial {
                start: s,
                end: (e + 1).min(len),
            },
            (Some(s), Some(e)) if s <= e => RangeAnswer::Unsatisfiable,
            // An invalid range is ignored (RFC 9110 14.2).
            _ => RangeAnswer::Whole,
        },
        (true, true) => RangeAnswer::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn single_ranges_are_served_and_the_rest_is_whole_or_416() {
        let p = |start, end| Partial { start, end };
        assert_eq!(answer(None, 100), Whole);
        assert_eq!(answer(Some("bytes=0-9"), 100), p(0, 10));
        assert_eq!(answer(Some("bytes=90-200"), 100), p(90, 100));
        assert_eq!(answer(Some("bytes=50-"), 100), p(50, 100));
        assert_eq!(answer(Some("bytes=-10"), 100), p(90, 100));
        assert_eq!(answer(Some("bytes=-500"), 100), p(0, 100));
        assert_eq!(answer(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(answer(Some("bytes=100-120"), 100), Unsatisfiable);
        assert_eq!(answer(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(answer(Some("bytes=0-1,5-6"), 100), Whole);
        assert_eq!(answer(Some("bytes=9-1"), 100), Whole);
        assert_eq!(answer(Some("items=0-1"), 100), Whole);
        assert_eq!(answer(Some("bytes=x-"), 100), Whole);
    }
}
