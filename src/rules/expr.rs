//! The `when` condition of a room rule: a tiny expression language over the socket data.
//!
//! Hand-written on purpose: the language is a dozen tokens, it is parsed once at start, and the
//! crates that evaluate expressions (rhai, evalexpr, cel-interpreter, ...) bring a scripting
//! engine, their own value types and far more surface than a room rule should have.
//!
//! ```text
//! expr    := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | compare
//! compare := operand (("==" | "!=") operand | "in" (list | path))?
//! operand := path | literal | "(" expr ")"
//! path    := ("claims" | "data") ("." name)*        name: ASCII letters, digits, '_', '-'
//! literal := 'text' | "text" | number | true | false | null
//! list    := "[" (literal ("," literal)*)? "]"
//! ```
//!
//! `claims.x` and `data.x` both name the field `x` of the socket data. A missing field is `null`.
//! `==` / `!=` compare JSON values (numbers by value: `1 == 1.0`); `a in [...]` and
//! `a in claims.roles` test membership in a list (false when the right side is not a list). The
//! condition holds when the whole expression is `true`; any other value (a string, `null`, ...) is
//! false, so `claims.admin` alone holds only for `"admin": true`.

use serde_json::Value;

use super::path::{DataPath, ROOTS};

/// Longest `when` text accepted.
const MAX_LEN: usize = 1024;
/// Deepest nesting of parentheses and `!` accepted.
const MAX_DEPTH: usize = 32;

/// A parsed `when` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal value (a list literal is an array).
    Lit(Value),
    /// A field of the socket data.
    Path(DataPath),
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b`.
    And(Box<Expr>, Box<Expr>),
    /// `a || b`.
    Or(Box<Expr>, Box<Expr>),
    /// `a == b`.
    Eq(Box<Expr>, Box<Expr>),
    /// `a != b`.
    Ne(Box<Expr>, Box<Expr>),
    /// `a in list`.
    In(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// Parses `text`; the error gives the column (1-based) and what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_LEN {
            return Err(format!("longer than {MAX_LEN} bytes"));
        }
        let tokens = lex(text)?;
        let mut parser = Parser { tokens, at: 0, depth: 0 };
        let expr = parser.or()?;
        match parser.peek() {
            None => Ok(expr),
            Some((col, tok)) => Err(format!("at column {col}: unexpected {}", tok.describe())),
        }
    }

    /// Whether the condition holds for `data`.
    pub fn holds(&self, data: &Value) -> bool {
        self.eval(data) == Value::Bool(true)
    }

    fn eval(&self, data: &Value) -> Value {
        match self {
            Expr::Lit(v) => v.clone(),
            Expr::Path(p) => p.lookup(data).cloned().unwrap_or(Value::Null),
            Expr::Not(e) => Value::Bool(!e.holds(data)),
            Expr::And(a, b) => Value::Bool(a.holds(data) && b.holds(data)),
            Expr::Or(a, b) => Value::Bool(a.holds(data) || b.holds(data)),
            Expr::Eq(a, b) => Value::Bool(same(&a.eval(data), &b.eval(data))),
            Expr::Ne(a, b) => Value::Bool(!same(&a.eval(data), &b.eval(data))),
            Expr::In(a, list) => {
                let needle = a.eval(data);
                Value::Bool(match list.eval(data) {
                    Value::Array(items) => items.iter().any(|item| same(&needle, item)),
                    _ => false,
                })
            }
        }
    }
}

/// JSON equality, numbers compared by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Lit(Value),
    Op(&'static str),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Lit(v) => format!("`{v}`"),
            Tok::Op(op) => format!("`{op}`"),
        }
    }
}

const OPS: [&str; 10] = ["==", "!=", "&&", "||", "!", "(", ")", "[", "]", ","];

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let col = i + 1;
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("at column {col}: the string is never closed")),
                    Some('\\') => match chars.get(i + 1) {
                        Some(&e @ ('\\' | '\'' | '"')) => {
                            s.push(e);
                            i += 2;
                        }
                        _ => return Err(format!("at column {}: only \\\\, \\' and \\\" escapes exist", i + 1)),
                    },
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        s.push(other);
                        i += 1;
                    }
                }
            }
            out.push((col, Tok::Lit(Value::String(s))));
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            i += 1;
            while chars.get(i).is_some_and(|c| c.is_ascii_digit() || *c == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let value = match text.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => match text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                    Some(n) => Value::Number(n),
                    None => return Err(format!("at column {col}: {text:?} is not a number")),
                },
            };
            out.push((col, Tok::Lit(value)));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push((
                col,
                match word.as_str() {
                    "true" => Tok::Lit(Value::Bool(true)),
                    "false" => Tok::Lit(Value::Bool(false)),
                    "null" => Tok::Lit(Value::Null),
                    _ => Tok::Word(word),
                },
            ));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let Some(op) = OPS.iter().find(|op| rest.starts_with(**op)) else {
                let hint = match c {
                    '=' => " (compare with ==)",
                    '&' => " (use &&)",
                    '|' => " (use ||)",
                    _ => "",
                };
                return Err(format!("at column {col}: unexpected `{c}`{hint}"));
            };
            out.push((col, Tok::Op(op)));
            i += op.chars().count();
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Tok)>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&(usize, Tok)> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, op: &str) -> bool {
        let hit = matches!(self.peek(), Some((_, Tok::Op(o))) if *o == op);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn expected(&self, what: &str) -> String {
        match self.peek() {
            Some((col, tok)) => format!("at column {col}: expected {what}, found {}", tok.describe()),
            None => format!("expected {what} at the end"),
        }
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Expr, String> {
        let left = self.operand()?;
        if self.eat("==") {
            return Ok(Expr::Eq(Box::new(left), Box::new(self.operand()?)));
        }
        if self.eat("!=") {
            return Ok(Expr::Ne(Box::new(left), Box::new(self.operand()?)));
        }
        if matches!(self.peek(), Some((_, Tok::Word(w))) if w == "in") {
            self.at += 1;
            let list = if self.eat("[") { self.list()? } else { self.path()? };
            return Ok(Expr::In(Box::new(left), Box::new(list)));
        }
        Ok(left)
    }

    fn list(&mut self) -> Result<Expr, String> {
        let mut items = Vec::new();
        if self.eat("]") {
            return Ok(Expr::Lit(Value::Array(items)));
        }
        loop {
            match self.peek().cloned() {
                Some((_, Tok::Lit(v))) => {
                    self.at += 1;
                    items.push(v);
                }
                _ => return Err(self.expected("a literal in the list")),
            }
            if self.eat("]") {
                return Ok(Expr::Lit(Value::Array(items)));
            }
            if !self.eat(",") {
                return Err(self.expected("`,` or `]`"));
            }
        }
    }

    fn path(&mut self) -> Result<Expr, String> {
        let Some((col, Tok::Word(word))) = self.peek().cloned() else {
            return Err(self.expected("a list `[...]` or a field such as claims.roles"));
        };
        self.at += 1;
        let mut parts = word.splitn(2, '.');
        let root = parts.next().unwrap_or_default();
        if !ROOTS.contains(&root) {
            let what = if word == "in" {
                "`in` needs a value on its left".to_owned()
            } else {
                format!("`{word}` is not a field; fields start with `claims.` or `data.` (e.g. claims.{word})")
            };
            return Err(format!("at column {col}: {what}"));
        }
        match parts.next() {
            None => Ok(Expr::Path(DataPath::root())),
            Some(rest) => DataPath::parse(rest, false).map(Expr::Path).map_err(|e| format!("at column {col}: {e}")),
        }
    }

    fn operand(&mut self) -> Result<Expr, String> {
        match self.peek().cloned() {
            Some((_, Tok::Lit(v))) => {
                self.at += 1;
                Ok(Expr::Lit(v))
            }
            Some((_, Tok::Word(_))) => self.path(),
            Some((_, Tok::Op("("))) => {
                self.at += 1;
                self.deeper()?;
                let inner = self.or()?;
                self.depth -= 1;
                if !self.eat(")") {
                    return Err(self.expected("`)`"));
                }
                Ok(inner)
            }
            _ => Err(self.expected("a field, a literal or `(`")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(expr: &str, data: &Value) -> bool {
        Expr::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}")).holds(data)
    }

    #[test]
    fn comparisons() {
        let staff = json!({"role": "staff", "level": 3, "admin": true, "roles": ["a", "b"], "org": {"id": "o1"}});
        assert!(holds("claims.role == 'staff'", &staff));
        assert!(holds("data.role == \"staff\"", &staff));
        assert!(!holds("claims.role == 'user'", &staff));
        assert!(holds("claims.role != 'user'", &staff));
        assert!(holds("claims.level == 3", &staff));
        assert!(holds("claims.level == 3.0", &staff));
        assert!(holds("claims.admin == true", &staff));
        assert!(holds("claims.admin", &staff));
        assert!(!holds("claims.role", &staff), "a string is not true");
        assert!(holds("claims.org.id == 'o1'", &staff));
        assert!(holds("claims.missing == null", &staff));
        assert!(holds("'it\\'s' == \"it's\"", &Value::Null));
        assert!(holds("-1 == -1", &Value::Null));
    }

    #[test]
    fn logic_and_precedence() {
        let d = json!({"role": "staff", "org": "acme"});
        assert!(holds("claims.role == 'staff' && claims.org == 'acme'", &d));
        assert!(!holds("claims.role == 'staff' && claims.org == 'other'", &d));
        assert!(holds("claims.role == 'x' || claims.org == 'acme'", &d));
        // && binds tighter than ||.
        assert!(holds("true || false && false", &d));
        assert!(!holds("(true || false) && false", &d));
        assert!(holds("!(claims.role == 'user')", &d));
        assert!(holds("!!true", &d));
        assert!(holds("!claims.role", &Value::Null), "a missing field is null, which is not true");
    }

    #[test]
    fn membership() {
        let d = json!({"role": "staff", "roles": ["editor", "staff"], "n": 2});
        assert!(holds("claims.role in ['admin', 'staff']", &d));
        assert!(!holds("claims.role in ['admin']", &d));
        assert!(!holds("claims.role in []", &d));
        assert!(holds("'editor' in claims.roles", &d));
        assert!(!holds("'owner' in claims.roles", &d));
        assert!(!holds("'x' in claims.role", &d), "not a list");
        assert!(holds("claims.n in [1, 2.0]", &d));
    }

    #[test]
    fn sockets_without_data_never_match_positive_conditions() {
        for expr in ["claims.role == 'staff'", "claims.role in ['staff']", "'a' in claims.roles", "claims.admin"] {
            assert!(!holds(expr, &Value::Null), "{expr}");
            assert!(!holds(expr, &json!({})), "{expr}");
        }
        assert!(holds("claims.role != 'staff'", &Value::Null), "missing is null, which is not 'staff'");
    }

    #[test]
    fn syntax_errors_name_the_column() {
        for (text, needle) in [
            ("", "expected a field"),
            ("claims.role = 'x'", "column 13: unexpected `=` (compare with ==)"),
            ("claims.role == 'x", "never closed"),
            ("role == 'x'", "`role` is not a field"),
            ("claims.role == 'x' &&", "at the end"),
            ("(claims.a == 1", "expected `)`"),
            ("claims.a == 1 claims.b", "unexpected `claims.b`"),
            ("claims.a in 'x'", "a list"),
            ("claims.a in [claims.b]", "a literal in the list"),
            ("claims.a & true", "use &&"),
            ("claims..a == 1", "not a field path"),
            ("1.2.3 == 1", "not a number"),
            ("'\\n'", "escapes"),
        ] {
            let err = Expr::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        assert!(Expr::parse(&"!".repeat(100)).unwrap_err().contains("nested"));
        assert!(Expr::parse(&format!("{}true{}", "(".repeat(40), ")".repeat(40))).unwrap_err().contains("nested"));
        assert!(Expr::parse(&"x".repeat(2000)).unwrap_err().contains("longer"));
    }
}
