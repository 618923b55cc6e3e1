//! Redis glob matching (`stringmatchlen` in Redis' `util.c`), used by PSUBSCRIBE and
//! `PUBSUB CHANNELS pattern`.
//!
//! `*` any run, `?` one byte, `[abc]` / `[^abc]` / `[a-z]` (ranges compared as C `char`, i.e.
//! signed, bounds swapped when reversed), `\x` a literal `x`. An unterminated `[` class ends at the
//! pattern's end. Like Redis 7.0, nesting of `*` is capped and a failed `*` suffix search stops
//! longer matches (no exponential blow-up on abusive patterns).

/// Whether `string` matches the glob `pattern`.
pub(crate) fn matches(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer = false;
    match_impl(pattern, string, &mut skip_longer, 0)
}

fn match_impl(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    // Protection against abusive patterns.
    if nesting > 1000 {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.get(1) == Some(&b'*') {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_impl(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let not = p.first() == Some(&b'^');
                if not {
                    p = &p[1..];
                }
                let mut matched = false;
                loop {
                    if p.first() == Some(&b'\\') && p.len() >= 2 {
                        p = &p[1..];
                        if p[0] == s[0] {
                            matched = true;
                        }
                    } else if p.is_empty() || p[0] == b']' {
                        // `]` closes the class; an unterminated class ends with the pattern.
                        break;
                    } else if p.len() >= 3 && p[1] == b'-' {
                        let (mut start, mut end) = (p[0] as i8, p[2] as i8);
                        let c = s[0] as i8;
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        p = &p[2..];
                        if c >= start && c <= end {
                            matched = true;
                        }
                    } else if p[0] == s[0] {
                        matched = true;
                    }
                    p = &p[1..];
                }
                if not {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s = &s[1..];
                if p.is_empty() {
                    // Unterminated class: C steps back one byte and then forward again; the
                    // pattern is used up either way.
                    break;
                }
            }
            b'\\' => {
                if p.len() >= 2 {
                    p = &p[1..];
                }
                if p[0] != s[0] {
                    return false;
                }
                s = &s[1..];
            }
            c => {
                if c != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_and_questions() {
        // Like Redis: a lone `*` does not match the empty string.
        assert!(!matches(b"*", b""));
        assert!(matches(b"*", b"anything"));
        assert!(matches(b"news.*", b"news.sport"));
        assert!(matches(b"news.*", b"news."));
        assert!(!matches(b"news.*", b"news"));
        assert!(matches(b"h?llo", b"hello"));
        assert!(!matches(b"h?llo", b"hllo"));
        assert!(matches(b"a*b*c", b"aXXbYYc"));
        assert!(!matches(b"a*b*c", b"aXXbYY"));
        assert!(matches(b"**a**", b"bab"));
        assert!(matches(b"socket.io#/#*", b"socket.io#/#room#"));
        assert!(!matches(b"", b"a"));
        assert!(matches(b"", b""));
        assert!(!matches(b"a", b""));
    }

    #[test]
    fn classes() {
        assert!(matches(b"h[ae]llo", b"hallo"));
        assert!(!matches(b"h[ae]llo", b"hillo"));
        assert!(matches(b"h[^e]llo", b"hallo"));
        assert!(!matches(b"h[^e]llo", b"hello"));
        assert!(matches(b"h[a-b]llo", b"hbllo"));
        assert!(matches(b"h[b-a]llo", b"hallo"));
        assert!(!matches(b"h[a-b]llo", b"hcllo"));
        assert!(matches(b"[\\]]", b"]"));
        // `[a-]` is the range `]`..`a` with no closing bracket, as in Redis.
        assert!(!matches(b"[a-]", b"-"));
        assert!(matches(b"[a-]", b"^"));
        // Unterminated class: the class runs to the end of the pattern.
        assert!(matches(b"a[bc", b"ab"));
        assert!(!matches(b"a[bc", b"abx"));
        assert!(!matches(b"[", b"x"));
        // Signed char ranges: 0xff is -1, so [a-\xff] is [-1, 'a'].
        assert!(matches(b"[a-\xff]", b"A"));
        assert!(!matches(b"[a-\xff]", b"b"));
    }

    #[test]
    fn escapes() {
        assert!(matches(b"a\\*b", b"a*b"));
        assert!(!matches(b"a\\*b", b"axb"));
        assert!(matches(b"a\\", b"a\\"));
        assert!(matches(b"\\?", b"?"));
        assert!(!matches(b"\\?", b"x"));
    }

    #[test]
    fn abusive_patterns_terminate() {
        let pattern = b"a*".repeat(50);
        let string = b"a".repeat(200);
        assert!(matches(&pattern, &string));
        let mut pattern = b"*a".repeat(30);
        pattern.push(b'b');
        assert!(!matches(&pattern, &b"a".repeat(100)));
    }
}
