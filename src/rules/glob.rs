//! The globs of a rule's `allow` list: `*` any run of characters (also none), `?` one character,
//! `\x` the character `x` itself. `[` and `]` are reserved (Redis-style classes are not
//! supported here) and must be written `\[` / `\]`, so a pattern never means something other
//! than what it looks like.

use std::fmt;

/// One piece of a parsed glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// A character that must be there.
    Char(char),
    /// `?`: any one character.
    One,
    /// `*`: any run of characters.
    Any,
}

/// A parsed `allow` glob.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    pieces: Vec<Piece>,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.text)
    }
}

impl Glob {
    /// Parses `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a glob must not be empty".to_owned());
        }
        let mut pieces = Vec::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            pieces.push(match c {
                '*' => {
                    if pieces.last() == Some(&Piece::Any) {
                        continue;
                    }
                    Piece::Any
                }
                '?' => Piece::One,
                '\\' => match chars.next() {
                    Some(escaped) => Piece::Char(escaped),
                    None => return Err(format!("{text:?} ends with a lone '\\'")),
                },
                '[' | ']' => {
                    return Err(format!("{text:?}: '{c}' is reserved; write '\\{c}' for the character itself"));
                }
                c if c.is_control() => return Err(format!("{text:?} contains a control character")),
                c => Piece::Char(c),
            });
        }
        Ok(Self { text: text.to_owned(), pieces })
    }

    /// The glob as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `s` matches the whole glob.
    pub fn matches(&self, s: &str) -> bool {
        let s: Vec<char> = s.chars().collect();
        // Iterative matching with one backtrack point (the last `*`): linear in practice, never
        // exponential.
        let (p, mut i, mut j) = (&self.pieces, 0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while j < s.len() {
            match p.get(i) {
                Some(Piece::Any) => {
                    star = Some((i, j));
                    i += 1;
                }
                Some(Piece::One) => {
                    i += 1;
                    j += 1;
                }
                Some(Piece::Char(c)) if *c == s[j] => {
                    i += 1;
                    j += 1;
                }
                _ => match star {
                    Some((si, sj)) => {
                        star = Some((si, sj + 1));
                        i = si + 1;
                        j = sj + 1;
                    }
                    None => return false,
                },
            }
        }
        p[i..].iter().all(|piece| *piece == Piece::Any)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(glob: &str, s: &str) -> bool {
        Glob::parse(glob).unwrap().matches(s)
    }

    #[test]
    fn star_question_and_escapes() {
        assert!(m("chat:*", "chat:lobby"));
        assert!(m("chat:*", "chat:"));
        assert!(!m("chat:*", "admin:secrets"));
        assert!(!m("chat:*", "xchat:lobby"));
        assert!(m("user:*:public", "user:42:public"));
        assert!(!m("user:*:public", "user:42:private"));
        assert!(m("*", ""));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m(r"a\*", "a*"));
        assert!(!m(r"a\*", "ab"));
        assert!(m(r"\[x\]", "[x]"));
        assert!(m("é*", "été"));
        assert!(m("***a", "bba"));
    }

    #[test]
    fn bad_globs() {
        for bad in ["", "a\\", "chat:[a-z]", "x]", "a\u{1}"] {
            assert!(Glob::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let glob = Glob::parse(&"*a".repeat(50)).unwrap();
        assert!(!glob.matches(&"a".repeat(49)));
        assert!(glob.matches(&"a".repeat(60)));
    }
}
