//! Where a client's token is found: the CONNECT payload, the handshake's query string or one of
//! its cookies. Pure: values in, a token out.

use http::HeaderMap;
use serde_json::Value;

/// Longest token accepted from any source (bigger ones are not looked at).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// One place to look for the token (a `token_from` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `auth`: the `token` string of the CONNECT payload (`io(url, {auth: {token}})`).
    Auth,
    /// `query`: the `token` query parameter of the handshake request.
    Query,
    /// `cookie:NAME`: the cookie `NAME` of the handshake request.
    Cookie(String),
}

impl TokenSource {
    /// Parses a `token_from` entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auth" => Ok(Self::Auth),
            "query" => Ok(Self::Query),
            _ => match text.strip_prefix("cookie:") {
                Some(name) if is_cookie_name(name) => Ok(Self::Cookie(name.to_owned())),
                Some(name) => Err(format!("{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)")),
                None => Err(format!("{text:?} is not a token source: use \"auth\", \"query\" or \"cookie:NAME\"")),
            },
        }
    }
}

/// An RFC 6265 cookie name: a non-empty token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What a CONNECT carries that a token can come from.
#[derive(Debug, Clone, Copy)]
pub struct TokenInput<'a> {
    /// The CONNECT payload.
    pub auth: &'a Value,
    /// The handshake's raw query string.
    pub query: &'a str,
    /// The handshake's headers.
    pub headers: &'a HeaderMap,
}

/// The first token found in `sources`, in order; empty values do not count.
pub fn find_token(sources: &[TokenSource], input: TokenInput<'_>) -> Option<String> {
    sources.iter().find_map(|source| {
        let token = match source {
            TokenSource::Auth => input.auth.get("token").and_then(Value::as_str).map(str::to_owned),
            TokenSource::Query => {
                form_urlencoded::parse(input.query.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
            }
            TokenSource::Cookie(name) => cookie(input.headers, name),
        };
        token.filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
    })
}

/// The value of cookie `name` in the request's `Cookie` headers (surrounding quotes removed).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v).to_owned()
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(http::header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    fn sources(list: &[&str]) -> Vec<TokenSource> {
        list.iter().map(|s| TokenSource::parse(s).unwrap()).collect()
    }

    #[test]
    fn sources_parse() {
        assert_eq!(TokenSource::parse("auth"), Ok(TokenSource::Auth));
        assert_eq!(TokenSource::parse("query"), Ok(TokenSource::Query));
        assert_eq!(TokenSource::parse("cookie:session_jwt"), Ok(TokenSource::Cookie("session_jwt".into())));
        for bad in ["cookie:", "cookie:a b", "cookie:a;b", "header", "Auth", ""] {
            assert!(TokenSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_source_with_a_token_wins() {
        let auth = json!({"token": "from-auth"});
        let h = headers(&["a=1; session_jwt=from-cookie"]);
        let input = TokenInput { auth: &auth, query: "EIO=4&token=from%2Bquery", headers: &h };
        let all = sources(&["auth", "query", "cookie:session_jwt"]);
        assert_eq!(find_token(&all, input).as_deref(), Some("from-auth"));
        assert_eq!(find_token(&sources(&["query", "auth"]), input).as_deref(), Some("from+query"));
        assert_eq!(find_token(&sources(&["cookie:session_jwt", "auth"]), input).as_deref(), Some("from-cookie"));
        // A source that is not listed is not looked at.
        assert_eq!(find_token(&sources(&["cookie:other"]), input), None);

        let empty = json!({"token": ""});
        let input = TokenInput { auth: &empty, query: "EIO=4&token=", headers: &h };
        assert_eq!(find_token(&all, input).as_deref(), Some("from-cookie"), "empty values do not count");
        let not_a_string = json!({"token": 5});
        let none = HeaderMap::new();
        let input = TokenInput { auth: &not_a_string, query: "EIO=4", headers: &none };
        assert_eq!(find_token(&all, input), None);
    }

    #[test]
    fn cookies_are_found_in_any_header_and_unquoted() {
        let h = headers(&["x=1", " s = \"v1\" ;y=2"]);
        assert_eq!(cookie(&h, "s").as_deref(), Some("v1"));
        assert_eq!(cookie(&h, "y").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "z"), None);
        // A name that only ends like the wanted one does not match.
        assert_eq!(cookie(&headers(&["xs=1"]), "s"), None);
    }

    #[test]
    fn huge_tokens_are_ignored() {
        let auth = json!({"token": "a".repeat(MAX_TOKEN_LEN + 1)});
        let h = HeaderMap::new();
        assert_eq!(find_token(&sources(&["auth"]), TokenInput { auth: &auth, query: "", headers: &h }), None);
    }
}
