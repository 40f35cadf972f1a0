//! Caller identity and authorization: who is asking the proxy to use a
//! connector's credential, and whether they may.
//!
//! The proxy is a credential relay, so nothing is anonymous by accident:
//! every request names an [`Identity`] (from the caller's token) and an
//! [`Authorizer`] decides per connector. Both sit behind traits so that the
//! in-cluster TokenReview and SubjectAccessReview implementations slot in
//! beside the standalone ones here ([`StaticTokens`], [`SameNamespace`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use connector::ConnectorKey;
use connector::selection::{is_dns_label, is_dns_subdomain};

/// Why a caller could not be identified or authorized. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// The static token file could not be read.
    #[error("cannot read token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the static token file is malformed.
    #[error("token file line {line}: {why}")]
    Line {
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A token is defined twice (the token itself is never named).
    #[error("token file line {line}: the token is already defined on line {first}")]
    DuplicateToken {
        /// The 1-based line of the second definition.
        line: usize,
        /// The 1-based line of the first definition.
        first: usize,
    },
    /// An identity or authorization service (TokenReview, SubjectAccessReview) failed.
    #[error("the identity service failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `Result` with [`CallerError`] as the default error.
pub type Result<T, E = CallerError> = std::result::Result<T, E>;

/// An authenticated caller, as Kubernetes describes users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// e.g. `system:serviceaccount:lab:builder`.
    pub username: String,
    /// The user's UID.
    pub uid: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The node the token is bound to (a pod's projected token: TokenReview's
    /// `authentication.kubernetes.io/node-name`), if any.
    pub node: Option<String>,
}

impl Identity {
    /// ("ns", "name") for `system:serviceaccount:<ns>:<name>` users.
    ///
    /// None for other users and for malformed names (the namespace must be a
    /// DNS label and the name a DNS subdomain, as Kubernetes requires).
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        (is_dns_label(namespace) && is_dns_subdomain(name)).then_some((namespace, name))
    }
}

/// A boxed, sendable future: what the trait methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a caller's token into an identity.
pub trait Authenticator: Send + Sync + 'static {
    /// `Ok(None)` when the token is unknown or invalid; `Err` only when the
    /// answer could not be determined (e.g. the API server is unreachable).
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Identity>>>;
}

/// Whether an identity may use a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The credential may be used on the caller's behalf.
    Allow,
    /// It may not.
    Deny,
}

/// Decides whether an identity may use a connector.
pub trait Authorizer: Send + Sync + 'static {
    /// `Err` only when the decision could not be made; callers treat it as a denial.
    fn authorize<'a>(&'a self, identity: &'a Identity, connector: &'a ConnectorKey) -> BoxFuture<'a, Result<Decision>>;
}

/// Identities proven by where a request comes from, for callers that carry
/// no token (cluster mode): an unchanged Job whose pod the webhook injected,
/// and kubelet pulling a rewritten image for a pod on its node.
pub trait PeerIdentities: Send + Sync + 'static {
    /// The ServiceAccount identity of the running, webhook-injected pod
    /// whose IP is `ip`. `None` for hostNetwork pods, for unknown addresses
    /// and for an IP that two pods claim.
    fn pod(&self, ip: IpAddr) -> Option<Identity>;

    /// As [`pod`](Self::pod), waiting briefly for an address not known yet:
    /// a pod's first request can leave before kubelet has reported the
    /// pod's IP and the informer has seen it.
    fn pod_soon(&self, ip: IpAddr) -> BoxFuture<'_, Option<Identity>> {
        Box::pin(std::future::ready(self.pod(ip)))
    }

    /// The node whose address `ip` is.
    fn node(&self, ip: IpAddr) -> Option<String>;

    /// The ServiceAccounts of the injected pods bound to `node` that
    /// reference `repository` of connector `key` in one of their images.
    /// Waits briefly when there are none yet, since a pod reaches the
    /// proxy's informer a moment after kubelet starts pulling for it.
    fn pods_pulling<'a>(
        &'a self,
        node: &'a str,
        key: &'a ConnectorKey,
        repository: &'a str,
    ) -> BoxFuture<'a, Vec<Identity>>;
}

impl Identity {
    /// The identity Kubernetes gives ServiceAccount `namespace/name`, with
    /// its groups.
    pub fn of_service_account(namespace: &str, name: &str) -> Self {
        Self {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            uid: String::new(),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
            node: None,
        }
    }
}

/// kube-apiserver's static token file: CSV lines `token,user,uid,"group1,group2"`
/// (groups optional; `#` comments and blank lines skipped; quoted fields per
/// CSV; duplicate tokens are an error naming the line, never the token).
///
/// Its `Debug` shows only how many tokens it holds.
pub struct StaticTokens {
    // NB: a plain map lookup, not a constant-time comparison. std's HashMap
    // hashes with a randomly keyed SipHash, so a caller cannot steer which
    // entry is compared, and only entries with an equal hash are compared at
    // all. Hashing tokens with SHA-256 first would need `ring` as a regular
    // dependency (it is only a dev-dependency).
    tokens: HashMap<String, Identity>,
}

impl StaticTokens {
    /// Parses the file's text.
    ///
    /// Compatible with kube-apiserver's `--token-auth-file`, and stricter: a
    /// duplicate or empty token, an empty user name, a token with whitespace
    /// and more than four columns (usually unquoted groups) are errors.
    /// Fields are taken as written; groups are split on `,`, trimmed, and
    /// empty ones dropped. A quoted field cannot span lines.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut tokens: HashMap<String, (Identity, usize)> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let bad = |why| CallerError::Line { line, why };
            let fields = split_csv_line(raw).map_err(bad)?;
            let (token, username, uid, groups) = match fields.as_slice() {
                [token, username, uid] => (token, username, uid, None),
                [token, username, uid, groups] => (token, username, uid, Some(groups)),
                [_, _, _, _, _, ..] => {
                    return Err(bad(
                        "expected at most 4 columns; quote the groups: token,user,uid,\"group1,group2\"",
                    ));
                }
                _ => return Err(bad("expected at least 3 columns: token,user,uid[,\"group1,group2\"]")),
            };
            if token.is_empty() {
                return Err(bad("the token is empty"));
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("the token contains whitespace or control characters"));
            }
            if username.is_empty() {
                return Err(bad("the user name is empty"));
            }
            let identity = Identity {
                username: username.clone(),
                uid: uid.clone(),
                groups: groups
                    .map(|groups| {
                        groups
                            .split(',')
                            .map(str::trim)
                            .filter(|g| !g.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
                node: None,
            };
            match tokens.entry(token.clone()) {
                Entry::Occupied(first) => {
                    return Err(CallerError::DuplicateToken {
                        line,
                        first: first.get().1,
                    });
                }
                Entry::Vacant(slot) => {
                    slot.insert((identity, line));
                }
            }
        }
        Ok(StaticTokens {
            tokens: tokens
                .into_iter()
                .map(|(token, (identity, _))| (token, identity))
                .collect(),
        })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CallerError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The identity a token belongs to.
    pub fn identity(&self, token: &str) -> Option<&Identity> {
        self.tokens.get(token)
    }

    /// How many tokens the file defines.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when the file defines no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Identity>>> {
        Box::pin(std::future::ready(Ok(self.identity(token).cloned())))
    }
}

/// Standalone authorization: a ServiceAccount may use the connectors of its own namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct SameNamespace;

impl SameNamespace {
    /// The decision itself, without the future.
    pub fn decide(identity: &Identity, connector: &ConnectorKey) -> Decision {
        match identity.service_account() {
            Some((namespace, _)) if namespace == connector.namespace => Decision::Allow,
            _ => Decision::Deny,
        }
    }
}

impl Authorizer for SameNamespace {
    fn authorize<'a>(&'a self, identity: &'a Identity, connector: &'a ConnectorKey) -> BoxFuture<'a, Result<Decision>> {
        Box::pin(std::future::ready(Ok(Self::decide(identity, connector))))
    }
}

/// Standard base64 that accepts input with or without `=` padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The caller's token from `Authorization: Basic base64(anything:<token>)` or
/// `Bearer <token>` (scheme case-insensitive); None if absent or malformed.
///
/// The Basic password is everything after the first `:`, so it may itself
/// contain `:`. Also reads `Proxy-Authorization`, which has the same form.
pub fn token_from_authorization(value: &str) -> Option<String> {
    let (scheme, credentials) = value.trim_matches([' ', '\t']).split_once([' ', '\t'])?;
    let credentials = credentials.trim_matches([' ', '\t']);
    if credentials.is_empty() || credentials.contains([' ', '\t']) {
        return None;
    }
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        credentials.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        basic_credentials(value)?.1
    } else {
        return None;
    };
    (!token.is_empty() && !token.chars().any(char::is_control)).then_some(token)
}

/// `(username, password)` of `Basic base64(username:password)`; the password
/// is everything after the first `:`. None if absent or malformed.
pub fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, credentials) = value.trim_matches([' ', '\t']).split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(credentials.trim_matches([' ', '\t'])).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some((username.to_owned(), password.to_owned()))
}

/// Splits one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote).
fn split_csv_line(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
            match chars.next() {
                None => return Ok(fields),
                Some(',') => continue,
                Some(_) => return Err("a closing quote must be followed by a comma or the end of the line"),
            }
        }
        loop {
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => break,
                Some('"') => return Err("a quote appears inside an unquoted field"),
                Some(c) => field.push(c),
            }
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose;
    use futures::executor::block_on;

    fn identity(username: &str, uid: &str, groups: &[&str]) -> Identity {
        Identity {
            username: username.into(),
            uid: uid.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            node: None,
        }
    }

    const FILE: &str = "\
# standalone callers
\t
tok-a,alice,uid-1
tok-b,system:serviceaccount:lab:builder,uid-2,\"system:serviceaccounts, system:serviceaccounts:lab\"
\"tok,c\",\"bob \"\"the builder\"\"\",uid-3,
tok-d,carol,,dev\r
  # indented comment
";

    #[test]
    fn token_files_parse_quotes_groups_and_comments() {
        let tokens = StaticTokens::parse(FILE).unwrap();
        assert_eq!(tokens.len(), 4);
        let cases = [
            ("tok-a", Some(identity("alice", "uid-1", &[]))),
            (
                "tok-b",
                Some(identity(
                    "system:serviceaccount:lab:builder",
                    "uid-2",
                    &["system:serviceaccounts", "system:serviceaccounts:lab"],
                )),
            ),
            ("tok,c", Some(identity("bob \"the builder\"", "uid-3", &[]))),
            ("tok-d", Some(identity("carol", "", &["dev"]))),
            ("tok-d\r", None),
            ("tok", None),
            ("", None),
            ("# standalone callers", None),
        ];
        for (token, expected) in cases {
            assert_eq!(tokens.identity(token), expected.as_ref(), "{token:?}");
            assert_eq!(block_on(tokens.authenticate(token)).unwrap(), expected, "{token:?}");
        }
    }

    #[test]
    fn empty_token_files_define_no_tokens() {
        for text in ["", "\n\n", "# only a comment\n", "\u{feff}"] {
            assert!(StaticTokens::parse(text).unwrap().is_empty(), "{text:?}");
        }
    }

    #[test]
    fn bad_token_file_lines_are_refused_by_line_number() {
        let cases: &[(&str, &str)] = &[
            (
                "tok,alice",
                "token file line 1: expected at least 3 columns: token,user,uid[,\"group1,group2\"]",
            ),
            (
                "# c\n\ntok",
                "token file line 3: expected at least 3 columns: token,user,uid[,\"group1,group2\"]",
            ),
            (
                "tok,alice,uid,g1,g2",
                "token file line 1: expected at most 4 columns; quote the groups: token,user,uid,\"group1,group2\"",
            ),
            (",alice,uid", "token file line 1: the token is empty"),
            ("tok,,uid", "token file line 1: the user name is empty"),
            (
                "t ok,alice,uid",
                "token file line 1: the token contains whitespace or control characters",
            ),
            (
                "tok,alice,uid,\"g1,g2",
                "token file line 1: a quoted field is not closed",
            ),
            (
                "tok,\"alice\"x,uid",
                "token file line 1: a closing quote must be followed by a comma or the end of the line",
            ),
            (
                "tok,al\"ice,uid",
                "token file line 1: a quote appears inside an unquoted field",
            ),
            (
                "secret-one,alice,1\nsecret-two,bob,2\nsecret-one,eve,3",
                "token file line 3: the token is already defined on line 1",
            ),
        ];
        for (text, expected) in cases {
            let err = StaticTokens::parse(text).map(|t| t.len()).unwrap_err();
            let message = err.to_string();
            assert_eq!(message, *expected, "{text:?}");
            assert!(!message.contains("secret") && !message.contains("tok,"), "{message}");
        }
    }

    #[test]
    fn token_files_load_from_disk_and_report_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, FILE).unwrap();
        assert_eq!(StaticTokens::load(&path).unwrap().len(), 4);

        let missing = dir.path().join("missing.csv");
        let err = StaticTokens::load(&missing).unwrap_err();
        assert!(matches!(err, CallerError::Read { .. }));
        assert!(err.to_string().contains("missing.csv"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        let tokens = StaticTokens::parse("very-secret-token,alice,1").unwrap();
        let debug = format!("{tokens:?}");
        assert_eq!(debug, "StaticTokens { tokens: 1 }");
    }

    #[test]
    fn service_account_usernames_split_into_namespace_and_name() {
        let cases = [
            ("system:serviceaccount:lab:builder", Some(("lab", "builder"))),
            ("system:serviceaccount:lab:build.er-1", Some(("lab", "build.er-1"))),
            ("system:serviceaccount:lab", None),
            ("system:serviceaccount::builder", None),
            ("system:serviceaccount:lab:", None),
            ("system:serviceaccount:lab:a:b", None),
            ("system:serviceaccount:Lab:builder", None),
            ("system:node:worker-1", None),
            ("alice", None),
            ("", None),
        ];
        for (username, expected) in cases {
            assert_eq!(identity(username, "", &[]).service_account(), expected, "{username}");
        }
    }

    #[test]
    fn service_accounts_may_use_connectors_of_their_own_namespace_only() {
        let cases = [
            ("system:serviceaccount:lab:builder", "lab", Decision::Allow),
            ("system:serviceaccount:lab:default", "lab", Decision::Allow),
            ("system:serviceaccount:lab:builder", "prod", Decision::Deny),
            ("system:serviceaccount:lab-2:builder", "lab", Decision::Deny),
            ("alice", "lab", Decision::Deny),
            ("system:node:lab", "lab", Decision::Deny),
            ("system:serviceaccounts:lab", "lab", Decision::Deny),
        ];
        for (username, namespace, expected) in cases {
            let caller = identity(username, "", &["system:serviceaccounts:lab"]);
            let key = ConnectorKey::new(namespace, "harbor");
            assert_eq!(
                SameNamespace::decide(&caller, &key),
                expected,
                "{username} → {namespace}"
            );
            assert_eq!(block_on(SameNamespace.authorize(&caller, &key)).unwrap(), expected);
        }
    }

    #[test]
    fn tokens_come_from_basic_passwords_and_bearer_values() {
        let basic = |raw: &str| format!("Basic {}", general_purpose::STANDARD.encode(raw));
        let cases: Vec<(String, Option<&str>)> = vec![
            (basic("x:tok-1"), Some("tok-1")),
            (basic(":tok-1"), Some("tok-1")),
            (basic("x:pa:ss:word"), Some("pa:ss:word")),
            (basic("robot$ci:tok=="), Some("tok==")),
            (
                format!("basic {}", general_purpose::STANDARD.encode("x:tok")),
                Some("tok"),
            ),
            (
                format!("BASIC  {}  ", general_purpose::STANDARD.encode("x:tok")),
                Some("tok"),
            ),
            (
                format!("Basic {}", general_purpose::STANDARD_NO_PAD.encode("x:to")),
                Some("to"),
            ),
            (basic("x:p\u{e4}ss"), Some("p\u{e4}ss")),
            ("Bearer eyJhbGciOi.eyJzdWIi.sig".into(), Some("eyJhbGciOi.eyJzdWIi.sig")),
            ("bearer tok".into(), Some("tok")),
            ("BEARER\ttok ".into(), Some("tok")),
            (basic("no-colon"), None),
            (basic("x:"), None),
            (basic("x:tok\n"), None),
            ("Basic !!!not-base64".into(), None),
            (
                format!("Basic {}", general_purpose::STANDARD.encode([0x78, 0x3a, 0xff, 0xfe])),
                None,
            ),
            ("Basic".into(), None),
            ("Basic ".into(), None),
            ("Bearer".into(), None),
            ("Bearer ".into(), None),
            ("Bearer a b".into(), None),
            ("Digest tok".into(), None),
            ("tok".into(), None),
            ("".into(), None),
        ];
        for (header, expected) in cases {
            assert_eq!(token_from_authorization(&header).as_deref(), expected, "{header:?}");
        }
    }
}
