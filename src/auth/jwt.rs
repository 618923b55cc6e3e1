//! Token verification: the algorithm is fixed by the configured key (HS256 for a secret; RS256,
//! ES256 or EdDSA from the public key's type), so a token naming another `alg` (`none`, or
//! HS256 signed with the public key as its secret) is refused.

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::config::AuthConfig;

/// Leeway for `exp` and `nbf`, in seconds (clocks of the app and the node may differ a little).
pub const LEEWAY_S: u64 = 30;

/// Why a public key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no RSA, EC (P-256) or Ed25519 public key in PEM.
    #[error("{path} holds no RSA, EC P-256 or Ed25519 public key in PEM (\"-----BEGIN PUBLIC KEY-----\")")]
    Pem {
        /// The file.
        path: String,
    },
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Its `exp` is past (leeway included).
    #[error("token expired")]
    Expired,
    /// Anything else: bad signature, another algorithm, malformed, `nbf` in the future, wrong
    /// issuer or audience, no `exp`, claims that are not an object.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Reads a PEM public key; its type picks the algorithm.
pub fn load_public_key(path: &Path) -> Result<(DecodingKey, Algorithm), KeyError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    Err(KeyError::Pem { path: shown })
}

/// Verifies tokens against the configured key and checks.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// The verifier `config` describes; `None` when it sets no key.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, KeyError> {
        let (key, alg) = match (&config.jwt_secret, &config.jwt_public_key) {
            (Some(secret), _) => (DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256),
            (None, Some(path)) => load_public_key(path)?,
            (None, None) => return Ok(None),
        };
        Ok(Some(Self::new(key, alg, config.jwt_issuer.as_deref(), config.jwt_audience.as_deref())))
    }

    /// A verifier for `alg` with `key`; `issuer` and `audience`, when given, must be in the token.
    pub fn new(key: DecodingKey, alg: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Without a configured audience, whatever `aud` a token names is not ours to check.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self { key, validation }
    }

    /// The token's claims, once its signature, algorithm, times, issuer and audience check out.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(err) if matches!(err.kind(), ErrorKind::ExpiredSignature) => Err(JwtError::Expired),
            Err(err) => Err(JwtError::Invalid(err.to_string())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    fn now() -> i64 {
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
    }

    fn hs(secret: &str, claims: &Value) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(DecodingKey::from_secret(b"s3cret"), Algorithm::HS256, issuer, audience)
    }

    #[test]
    fn a_good_token_gives_its_claims() {
        let claims = json!({"sub": "42", "exp": now() + 60, "role": "staff"});
        let got = verifier(None, None).verify(&hs("s3cret", &claims)).unwrap();
        assert_eq!(Value::Object(got), claims);
    }

    #[test]
    fn times_are_checked_with_leeway() {
        let v = verifier(None, None);
        let leeway = i64::try_from(LEEWAY_S).unwrap();
        assert_eq!(v.verify(&hs("s3cret", &json!({"exp": now() - leeway - 5}))), Err(JwtError::Expired));
        v.verify(&hs("s3cret", &json!({"exp": now() - leeway + 5}))).unwrap();
        let early = hs("s3cret", &json!({"exp": now() + 600, "nbf": now() + leeway + 60}));
        assert!(matches!(v.verify(&early), Err(JwtError::Invalid(_))));
        v.verify(&hs("s3cret", &json!({"exp": now() + 600, "nbf": now() + 5}))).unwrap();
        // exp is required.
        assert!(matches!(v.verify(&hs("s3cret", &json!({"sub": "1"}))), Err(JwtError::Invalid(_))));
    }

    #[test]
    fn forged_and_other_algorithms_are_refused() {
        let v = verifier(None, None);
        let claims = json!({"sub": "1", "exp": now() + 60});
        assert!(matches!(v.verify(&hs("other", &claims)), Err(JwtError::Invalid(_))));
        let hs512 = encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(b"s3cret")).unwrap();
        assert!(matches!(v.verify(&hs512), Err(JwtError::Invalid(_))));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert!(matches!(v.verify(&none), Err(JwtError::Invalid(_))));
        for junk in ["", "a.b.c", "not a token", "..."] {
            assert!(matches!(v.verify(junk), Err(JwtError::Invalid(_))), "{junk}");
        }
    }

    #[test]
    fn issuer_and_audience_must_match_and_be_present() {
        let v = verifier(Some("https://app"), Some("ioswarm"));
        let exp = now() + 60;
        v.verify(&hs("s3cret", &json!({"exp": exp, "iss": "https://app", "aud": "ioswarm"}))).unwrap();
        v.verify(&hs("s3cret", &json!({"exp": exp, "iss": "https://app", "aud": ["x", "ioswarm"]}))).unwrap();
        for claims in [
            json!({"exp": exp, "iss": "https://evil", "aud": "ioswarm"}),
            json!({"exp": exp, "iss": "https://app", "aud": "other"}),
            json!({"exp": exp, "aud": "ioswarm"}),
            json!({"exp": exp, "iss": "https://app"}),
        ] {
            assert!(matches!(v.verify(&hs("s3cret", &claims)), Err(JwtError::Invalid(_))), "{claims}");
        }
        // With no audience configured, a token's aud is not checked.
        verifier(None, None).verify(&hs("s3cret", &json!({"exp": exp, "aud": "anything"}))).unwrap();
    }

    #[test]
    fn a_public_key_fixes_the_algorithm() {
        let pair = rcgen::KeyPair::generate().unwrap();
        let dir = std::env::temp_dir().join(format!("ioswarm-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ec.pem");
        std::fs::write(&path, pair.public_key_pem()).unwrap();
        let (key, alg) = load_public_key(&path).unwrap();
        assert_eq!(alg, Algorithm::ES256);
        let v = JwtVerifier::new(key, alg, None, None);
        let claims = json!({"sub": "7", "exp": now() + 60});
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::ES256), &claims, &signing).unwrap();
        assert_eq!(Value::Object(v.verify(&token).unwrap()), claims);
        // HS256 "signed" with the public key's text as the secret: refused.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
        )
        .unwrap();
        assert!(matches!(v.verify(&confused), Err(JwtError::Invalid(_))));

        // Ed25519: EdDSA.
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(&path, ed.public_key_pem()).unwrap();
        let (key, alg) = load_public_key(&path).unwrap();
        assert_eq!(alg, Algorithm::EdDSA);
        let signing = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::EdDSA), &claims, &signing).unwrap();
        assert_eq!(Value::Object(JwtVerifier::new(key, alg, None, None).verify(&token).unwrap()), claims);

        std::fs::write(&path, "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n").unwrap();
        assert!(matches!(load_public_key(&path), Err(KeyError::Pem { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(load_public_key(&dir.join("gone.pem")), Err(KeyError::Read { .. })));
    }
}
