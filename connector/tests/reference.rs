//! Image reference grammar: a table of valid and invalid references, checked against
//! distribution's normalisation rules and, differentially, against `container_image_dist_ref`.
//!
//! The oracle implements distribution's plain `Parse` (no Docker Hub normalisation, so
//! `foo/bar` has domain `foo` there), accepts OCI-only digests and checks IPv6 groups more
//! strictly than distribution. The differential test therefore compares validity on the raw
//! input and components on our normalised `Display` form; every case where the verdicts
//! differ on purpose says why in `Case::oracle`.

use connector::reference::{
    DOCKER_HUB_DOMAIN, NAME_TOTAL_LENGTH_MAX, Reference, ReferenceError, canonical_registry_host,
};
use container_image_dist_ref::ImgRef;
use container_image_dist_ref::digest::Standard;

const HEX64: &str = "7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";

fn sha256() -> String {
    format!("sha256:{HEX64}")
}

fn sha512() -> String {
    format!("sha512:{HEX64}{HEX64}")
}

/// What we expect from `Reference::parse`.
#[derive(Debug)]
enum Want {
    Valid {
        domain: String,
        path: String,
        tag: Option<String>,
        digest: Option<String>,
    },
    Invalid(ReferenceError),
}

/// How the oracle's verdict on the raw input relates to ours.
#[derive(Debug)]
enum Oracle {
    Agrees,
    /// The oracle's validity verdict differs on purpose, for this reason.
    Differs(&'static str),
}

#[derive(Debug)]
struct Case {
    input: String,
    want: Want,
    oracle: Oracle,
}

impl Case {
    fn differs(mut self, reason: &'static str) -> Case {
        self.oracle = Oracle::Differs(reason);
        self
    }
}

fn valid(input: impl Into<String>, domain: &str, path: &str, tag: Option<&str>, digest: Option<&str>) -> Case {
    Case {
        input: input.into(),
        want: Want::Valid {
            domain: domain.to_owned(),
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        },
        oracle: Oracle::Agrees,
    }
}

fn invalid(input: impl Into<String>, error: ReferenceError) -> Case {
    Case {
        input: input.into(),
        want: Want::Invalid(error),
        oracle: Oracle::Agrees,
    }
}

fn cases() -> Vec<Case> {
    use ReferenceError::*;
    let sha = sha256();
    let sha = sha.as_str();
    let hub = DOCKER_HUB_DOMAIN;
    let tag128 = "t".repeat(128);
    let tag129 = "t".repeat(129);
    // "docker.io/library/" is 18 characters.
    let official_255 = "a".repeat(NAME_TOTAL_LENGTH_MAX - 18);
    let official_256 = "a".repeat(NAME_TOTAL_LENGTH_MAX - 18 + 1);
    // "example.com/" is 12 characters.
    let path_243 = "b".repeat(NAME_TOTAL_LENGTH_MAX - 12);
    let path_244 = "b".repeat(NAME_TOTAL_LENGTH_MAX - 12 + 1);
    let long_hex = "a".repeat(1025);

    vec![
        // Docker Hub normalisation.
        valid("nginx", hub, "library/nginx", None, None),
        valid("nginx:1.25", hub, "library/nginx", Some("1.25"), None),
        valid("nginx:latest", hub, "library/nginx", Some("latest"), None),
        valid("library/nginx", hub, "library/nginx", None, None),
        valid("docker.io/nginx", hub, "library/nginx", None, None),
        valid("docker.io/library/nginx", hub, "library/nginx", None, None),
        valid("docker.io/bitnami/redis:7", hub, "bitnami/redis", Some("7"), None),
        valid(
            "index.docker.io/library/nginx:latest",
            hub,
            "library/nginx",
            Some("latest"),
            None,
        ),
        valid("index.docker.io/nginx", hub, "library/nginx", None, None),
        // Only the legacy index domain is rewritten while parsing; the other aliases are
        // mapped by canonical_registry_host.
        valid("registry-1.docker.io/x", "registry-1.docker.io", "x", None, None),
        valid(
            "registry.hub.docker.com/library/x",
            "registry.hub.docker.com",
            "library/x",
            None,
            None,
        ),
        valid("foo/bar", hub, "foo/bar", None, None),
        valid("foo/bar/baz:tag", hub, "foo/bar/baz", Some("tag"), None),
        valid(format!("nginx@{sha}"), hub, "library/nginx", None, Some(sha)),
        valid(
            format!("openpolicyagent/opa:0.9.2@{sha}"),
            hub,
            "openpolicyagent/opa",
            Some("0.9.2"),
            Some(sha),
        ),
        // A single component is never a domain, not even one that looks like it.
        valid("example.com", hub, "library/example.com", None, None),
        valid("localhost", hub, "library/localhost", None, None),
        valid("localhost:5000", hub, "library/localhost", Some("5000"), None),
        // Domains: localhost, anything with '.' or ':', anything with uppercase.
        valid("localhost/x", "localhost", "x", None, None),
        valid("localhost:5000/a/b:c", "localhost:5000", "a/b", Some("c"), None),
        valid("LOCALHOST/x", "LOCALHOST", "x", None, None),
        valid("example:5000/x", "example:5000", "x", None, None),
        valid("127.0.0.1/x", "127.0.0.1", "x", None, None),
        valid("127.0.0.1:5000/x", "127.0.0.1:5000", "x", None, None),
        valid("[::1]:5000/a:b", "[::1]:5000", "a", Some("b"), None),
        valid("[::1]/a", "[::1]", "a", None, None),
        valid("[FE80::1]:5000/a", "[FE80::1]:5000", "a", None, None),
        valid(
            format!("[2001:db8::1]:5000/repo@{sha}"),
            "[2001:db8::1]:5000",
            "repo",
            None,
            Some(sha),
        ),
        valid(
            "Harbor.Example.com/proj/app:v1",
            "Harbor.Example.com",
            "proj/app",
            Some("v1"),
            None,
        ),
        valid("MyRegistry/app", "MyRegistry", "app", None, None),
        valid(
            "my-registry.example.com:443/a",
            "my-registry.example.com:443",
            "a",
            None,
            None,
        ),
        // distribution does not range-check ports.
        valid("example.com:99999/x", "example.com:99999", "x", None, None),
        valid(format!("ghcr.io/a/b@{sha}"), "ghcr.io", "a/b", None, Some(sha)),
        valid(
            format!("quay.io/a/b:tag@{sha}"),
            "quay.io",
            "a/b",
            Some("tag"),
            Some(sha),
        ),
        valid(
            format!("ghcr.io/a/b@{}", sha512()),
            "ghcr.io",
            "a/b",
            None,
            Some(&sha512()),
        ),
        // Path components and separators.
        valid("a__b", hub, "library/a__b", None, None),
        valid("a_b", hub, "library/a_b", None, None),
        valid("a--b", hub, "library/a--b", None, None),
        valid("a.b", hub, "library/a.b", None, None),
        valid("0/1", hub, "0/1", None, None),
        valid("a-b-c/d.e_f/g__h---i", hub, "a-b-c/d.e_f/g__h---i", None, None),
        // Tags.
        valid("x:V1_a-b.c", hub, "library/x", Some("V1_a-b.c"), None),
        valid("x:_", hub, "library/x", Some("_"), None),
        valid(format!("x:{tag128}"), hub, "library/x", Some(&tag128), None),
        // `sha256:<hex>` alone is the image `sha256` tagged with the hex, as in distribution's
        // ParseNormalizedNamed (only ParseAnyReference reads it as a digest).
        valid(format!("sha256:{HEX64}"), hub, "library/sha256", Some(HEX64), None),
        // An image ID is only ambiguous on its own.
        valid(
            format!("{HEX64}:v1"),
            hub,
            &format!("library/{HEX64}"),
            Some("v1"),
            None,
        ),
        // Algorithms go-digest does not register follow the plain grammar.
        valid(
            format!("x@blake3:{HEX64}"),
            hub,
            "library/x",
            None,
            Some(&format!("blake3:{HEX64}")),
        ),
        valid(
            "x@foo.bar+baz:ABCDEF0123456789abcdef0123456789",
            hub,
            "library/x",
            None,
            Some("foo.bar+baz:ABCDEF0123456789abcdef0123456789"),
        ),
        // Name length: domain + '/' + path, after normalisation.
        valid(
            official_255.clone(),
            hub,
            &format!("library/{official_255}"),
            None,
            None,
        ),
        valid(format!("example.com/{path_243}"), "example.com", &path_243, None, None),
        valid("[1::2::3]:5000/x", "[1::2::3]:5000", "x", None, None)
            .differs("distribution only requires hex digits and colons in brackets; the oracle checks IPv6 groups"),
        valid(
            format!("x@foo:{long_hex}"),
            hub,
            "library/x",
            None,
            Some(&format!("foo:{long_hex}")),
        )
        .differs("the oracle caps the encoded digest at 1024 characters; distribution has no cap"),
        valid(
            format!("x@{}:{}", "s".repeat(256), "0".repeat(32)),
            hub,
            "library/x",
            None,
            Some(&format!("{}:{}", "s".repeat(256), "0".repeat(32))),
        )
        .differs("the oracle caps the digest algorithm at 255 characters (found by fuzz/); distribution has no cap"),
        // Invalid: empty and malformed structure.
        invalid("", Empty),
        invalid(":tag", InvalidPath),
        invalid(format!("@{sha}"), InvalidPath),
        invalid("/nginx", InvalidPath),
        invalid("nginx/", InvalidPath),
        invalid("a//b", InvalidPath),
        invalid("example.com/", InvalidPath),
        invalid("docker.io/", InvalidPath),
        invalid("example.com//x", InvalidPath),
        // Whitespace and non-ASCII.
        invalid(" ", InvalidPath),
        invalid(" nginx", InvalidPath),
        invalid("nginx ", InvalidPath),
        invalid("ngi nx", InvalidPath),
        invalid("nginx\n", InvalidPath),
        invalid("nginx:1 ", InvalidTag),
        invalid("ngïnx", InvalidPath),
        invalid("hé.example/x", InvalidDomain),
        // Path components.
        invalid("a___b", InvalidPath),
        invalid("a-", InvalidPath),
        invalid("-a", InvalidPath),
        invalid("a..b", InvalidPath),
        invalid("a._b", InvalidPath),
        invalid("a_", InvalidPath),
        invalid("foo/.bar", InvalidPath),
        invalid("UPPER", NameContainsUppercase),
        invalid("harbor.example.com/Proj/app", NameContainsUppercase),
        invalid("docker.io/Nginx", NameContainsUppercase),
        invalid("localhost:5000/App:v1", NameContainsUppercase),
        // Taken as a domain for the uppercase, but valid only once lowercased.
        invalid("Foo_Bar/x", NameContainsUppercase),
        // Domains.
        invalid("[fe80::1%eth0]/x", InvalidDomain),
        invalid("[fe80::1%eth0]", InvalidPath),
        invalid("[::1]", InvalidPath),
        invalid("[::ffff:1.2.3.4]/x", InvalidDomain),
        invalid("[::1]:/x", InvalidDomain),
        invalid("[::1]x/y", InvalidDomain),
        // No '.', ':' or uppercase before the slash, so "[]" is a (bad) path component.
        invalid("[]/x", InvalidPath),
        invalid("localhost:port/x", InvalidDomain),
        invalid("example.com:/x", InvalidDomain),
        invalid("-bad.example.com/x", InvalidDomain),
        invalid("bad-.example.com/x", InvalidDomain),
        invalid("example..com/x", InvalidDomain),
        invalid("foo:bar/baz", InvalidDomain),
        invalid("my_host.example/app", InvalidDomain).differs(
            "distribution and the oracle read it as a domain-less path `my_host.example/app`, \
             which no runtime can pull; we reject the would-be domain",
        ),
        // Tags.
        invalid("x:", InvalidTag),
        invalid("x:-a", InvalidTag),
        invalid("x:.a", InvalidTag),
        invalid("x:a:b", InvalidTag),
        // The first '/' ends the would-be domain "x:a", whatever follows.
        invalid("x:a/b", InvalidDomain),
        invalid(format!("x:{tag129}"), InvalidTag),
        invalid(format!("a/b:{tag129}"), InvalidTag).differs(
            "the oracle lets a tag after a `/` exceed 128 characters (found by fuzz/); distribution's \
             grammar caps tags at 128",
        ),
        // Digests.
        invalid("x@", InvalidDigest),
        invalid("x:tag@", InvalidDigest),
        invalid("x@sha256:short", InvalidDigest),
        invalid("x@sha256", InvalidDigest),
        invalid(format!("x@:{HEX64}"), InvalidDigest),
        invalid(format!("x@1sha:{HEX64}"), InvalidDigest),
        invalid(format!("x@sha-:{HEX64}"), InvalidDigest),
        invalid("x@sha256:0123456789abcdef0123456789abcde", InvalidDigest),
        invalid(format!("x@{sha}@{sha}"), InvalidDigest),
        invalid(format!("x@{sha}:tag"), InvalidDigest),
        invalid(
            format!("x@sha256:{HEX64}{HEX64}"),
            InvalidDigestEncoding {
                algorithm: "sha256",
                hex_len: 64,
            },
        ),
        invalid(
            format!("x@sha256:{}", HEX64.to_uppercase()),
            InvalidDigestEncoding {
                algorithm: "sha256",
                hex_len: 64,
            },
        ),
        invalid(
            "x@sha256:0123456789abcdef0123456789abcdef",
            InvalidDigestEncoding {
                algorithm: "sha256",
                hex_len: 64,
            },
        ),
        invalid(
            format!("x@sha512:{HEX64}"),
            InvalidDigestEncoding {
                algorithm: "sha512",
                hex_len: 128,
            },
        ),
        invalid(
            format!("x@sha384:{HEX64}"),
            InvalidDigestEncoding {
                algorithm: "sha384",
                hex_len: 96,
            },
        )
        .differs("go-digest registers sha384 (96 hex); the oracle only knows sha256 and sha512"),
        // Image IDs and length limits.
        invalid(HEX64, AmbiguousIdentifier)
            .differs("distribution's ParseNormalizedNamed refuses bare image IDs; plain Parse takes them as a path"),
        invalid(official_256, NameTooLong)
            .differs("the limit applies to the normalised name docker.io/library/…; the oracle measures the input"),
        invalid(format!("example.com/{path_244}"), NameTooLong),
    ]
}

/// The oracle's reading of a reference, with OCI-only digests counted as invalid (we follow
/// distribution's stricter digest grammar).
///
/// NB: the oracle's compliance flag misses distribution's 32-character minimum for the
/// encoded part (it computes that check and drops the result), so it is applied here.
#[derive(Debug, PartialEq, Eq)]
struct OracleParts {
    domain: Option<String>,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

fn oracle(input: &str) -> Option<OracleParts> {
    let parsed = ImgRef::new(input).ok()?;
    let digest = match parsed.digest() {
        Some(digest)
            if !digest.compliance().compliant_with(Standard::Distribution) || digest.encoded().to_str().len() < 32 =>
        {
            return None;
        }
        Some(digest) => Some(digest.to_str().to_owned()),
        None => None,
    };
    Some(OracleParts {
        domain: parsed.domain().map(|domain| domain.to_str().to_owned()),
        path: parsed.path().to_str().to_owned(),
        tag: parsed.tag().map(str::to_owned),
        digest,
    })
}

#[test]
fn table_has_enough_cases() {
    let cases = cases();
    let valid = cases.iter().filter(|c| matches!(c.want, Want::Valid { .. })).count();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    assert!(valid >= 20 && cases.len() - valid >= 20);
}

#[test]
fn references_parse_as_distribution_normalises_them() {
    for case in cases() {
        let parsed = Reference::parse(&case.input);
        match (&case.want, parsed) {
            (
                Want::Valid {
                    domain,
                    path,
                    tag,
                    digest,
                },
                Ok(reference),
            ) => {
                assert_eq!(reference.domain(), domain, "domain of {:?}", case.input);
                assert_eq!(reference.path(), path, "path of {:?}", case.input);
                assert_eq!(reference.tag(), tag.as_deref(), "tag of {:?}", case.input);
                assert_eq!(reference.digest(), digest.as_deref(), "digest of {:?}", case.input);
            }
            (Want::Invalid(want), Err(error)) => {
                assert_eq!(&error, want, "error for {:?}", case.input);
            }
            (want, got) => panic!("{:?}: wanted {want:?}, got {got:?}", case.input),
        }
    }
}

#[test]
fn valid_references_round_trip_through_display() {
    for case in cases() {
        let Ok(reference) = Reference::parse(&case.input) else {
            continue;
        };
        let shown = reference.to_string();
        let mut expected = format!("{}/{}", reference.domain(), reference.path());
        if let Some(tag) = reference.tag() {
            expected.push(':');
            expected.push_str(tag);
        }
        if let Some(digest) = reference.digest() {
            expected.push('@');
            expected.push_str(digest);
        }
        assert_eq!(shown, expected);
        assert_eq!(reference.name(), format!("{}/{}", reference.domain(), reference.path()));
        let reparsed: Reference = shown.parse().unwrap_or_else(|e| panic!("{shown:?}: {e}"));
        assert_eq!(reparsed, reference, "normalising {:?} twice", case.input);
    }
}

#[test]
fn oracle_agrees_except_where_documented() {
    for case in cases() {
        let ours = Reference::parse(&case.input);
        let raw = oracle(&case.input);
        match case.oracle {
            Oracle::Differs(reason) => {
                assert_ne!(
                    ours.is_ok(),
                    raw.is_some(),
                    "{:?} is documented as an oracle disagreement ({reason}) but both agree",
                    case.input,
                );
            }
            Oracle::Agrees => {
                assert_eq!(
                    ours.is_ok(),
                    raw.is_some(),
                    "validity of {:?}: ours {ours:?}, oracle {raw:?}",
                    case.input,
                );
                let (Ok(reference), Some(raw)) = (ours, raw) else {
                    continue;
                };
                // Tag and digest are kept exactly as written.
                assert_eq!(raw.tag.as_deref(), reference.tag(), "tag of {:?}", case.input);
                assert_eq!(raw.digest.as_deref(), reference.digest(), "digest of {:?}", case.input);
                // Where the input is already the normalised name, the oracle splits it the same.
                let name = reference.name();
                let unnormalised = case
                    .input
                    .strip_prefix(&name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '@']));
                if unnormalised {
                    assert_eq!(raw.domain.as_deref(), Some(reference.domain()));
                    assert_eq!(raw.path, reference.path(), "path of {:?}", case.input);
                }
                // The normalised form reads the same to the oracle.
                let shown = reference.to_string();
                assert_eq!(
                    oracle(&shown),
                    Some(OracleParts {
                        domain: Some(reference.domain().to_owned()),
                        path: reference.path().to_owned(),
                        tag: reference.tag().map(str::to_owned),
                        digest: reference.digest().map(str::to_owned),
                    }),
                    "oracle reading of {shown:?}",
                );
            }
        }
    }
}

/// A small deterministic generator (xorshift) so the fuzz-style tests need no extra crates.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random strings built from grammar-relevant pieces, so many are near-valid references.
fn arbitrary_references(count: usize, with_brackets: bool) -> Vec<String> {
    const PIECES: &[&str] = &[
        "a",
        "b",
        "z",
        "0",
        "9",
        "A",
        "Z",
        ".",
        "_",
        "__",
        "-",
        "--",
        "/",
        "/",
        ":",
        ":",
        "@",
        "sha256:",
        "sha512:",
        "sha384:",
        "docker.io/",
        "index.docker.io/",
        "localhost",
        "example.com",
        "5000",
        "latest",
        "library/",
        " ",
        "é",
        "\u{0}",
        "[",
        "]",
        "::1",
        "%",
        "7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        "0123456789abcdef0123456789abcdef",
        "ABCDEF0123456789ABCDEF0123456789",
    ];
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    (0..count)
        .map(|_| {
            let pieces = rng.below(12);
            let mut s = String::new();
            for _ in 0..pieces {
                let piece = PIECES[rng.below(PIECES.len())];
                if with_brackets || !piece.contains(['[', ']']) {
                    s.push_str(piece);
                }
            }
            s
        })
        .collect()
}

#[test]
fn arbitrary_input_never_panics_and_normalises_idempotently() {
    let mut inputs = arbitrary_references(50_000, true);
    inputs.extend(["\u{10FFFF}", "é/é:é@é", "[é]/x", "[", "]", "@", ":", "/", "[::1", "x@:"].map(String::from));
    for input in inputs {
        if let Ok(reference) = Reference::parse(&input) {
            let shown = reference.to_string();
            assert!(shown.is_ascii() && !shown.contains(char::is_whitespace), "{shown:?}");
            assert_eq!(Reference::parse(&shown).as_ref(), Ok(&reference), "from {input:?}");
        }
    }
}

#[test]
fn oracle_agrees_on_arbitrary_input() {
    // Bracketed hosts are left out: distribution accepts any hex-and-colon string in brackets
    // and the oracle checks IPv6 structure (see the `[1::2::3]` case).
    for input in arbitrary_references(50_000, false) {
        let ours = Reference::parse(&input);
        let raw = oracle(&input);
        match &ours {
            Ok(reference) => {
                assert!(raw.is_some(), "we accept {input:?}, the oracle does not");
                let shown = reference.to_string();
                let normalised = oracle(&shown).unwrap_or_else(|| panic!("oracle rejects {shown:?}"));
                assert_eq!(normalised.domain.as_deref(), Some(reference.domain()));
                assert_eq!(normalised.path, reference.path());
            }
            Err(error) => {
                let first_component = input.split('/').next().unwrap_or_default();
                let explained = match error {
                    ReferenceError::AmbiguousIdentifier | ReferenceError::NameTooLong => true,
                    ReferenceError::InvalidDigestEncoding { algorithm, .. } => *algorithm == "sha384",
                    ReferenceError::InvalidDomain => first_component.contains('_'),
                    _ => false,
                };
                assert!(
                    raw.is_none() || explained,
                    "we reject {input:?} ({error}), the oracle accepts {raw:?}",
                );
            }
        }
    }
}

#[test]
fn with_location_moves_the_image_under_a_proxy_path() {
    let sha = sha256();
    let original = Reference::parse(&format!("nginx:1@{sha}")).unwrap();
    let moved = original.with_location("proxy:8443", "namespaces/ns/connectors/c");
    assert_eq!(moved.domain(), "proxy:8443");
    assert_eq!(moved.path(), "namespaces/ns/connectors/c/library/nginx");
    assert_eq!(moved.tag(), Some("1"));
    assert_eq!(moved.digest(), Some(sha.as_str()));
    assert_eq!(
        moved.to_string(),
        format!("proxy:8443/namespaces/ns/connectors/c/library/nginx:1@{sha}"),
    );
    assert_eq!(Reference::parse(&moved.to_string()), Ok(moved));
}

#[test]
fn with_location_keeps_tag_and_digest_exactly() {
    for input in [
        "ghcr.io/a/b:V1.0_rc-1".to_owned(),
        "localhost:5000/a".to_owned(),
        format!("quay.io/a/b:t@{}", sha512()),
    ] {
        let original = Reference::parse(&input).unwrap();
        let moved = original.with_location("[::1]:8443", "/c/");
        assert_eq!(moved.tag(), original.tag());
        assert_eq!(moved.digest(), original.digest());
        assert_eq!(moved.path(), format!("c/{}", original.path()));
        assert_eq!(Reference::parse(&moved.to_string()), Ok(moved));
    }
}

#[test]
fn with_location_with_an_empty_prefix_only_swaps_the_domain() {
    let original = Reference::parse("docker.io/library/nginx:1").unwrap();
    let moved = original.with_location("proxy.example.com", "");
    assert_eq!(moved.to_string(), "proxy.example.com/library/nginx:1");
}

#[test]
fn try_with_location_rejects_bad_domains_prefixes_and_long_names() {
    let original = Reference::parse("nginx").unwrap();
    assert_eq!(
        original.try_with_location("proxy:8443", "c/x").map(|r| r.to_string()),
        Ok("proxy:8443/c/x/library/nginx".to_owned()),
    );
    assert_eq!(
        original.try_with_location("proxy:https", "c"),
        Err(ReferenceError::InvalidDomain)
    );
    assert_eq!(original.try_with_location("", "c"), Err(ReferenceError::InvalidDomain));
    assert_eq!(
        original.try_with_location("proxy", "a//b"),
        Err(ReferenceError::InvalidPath)
    );
    assert_eq!(
        original.try_with_location("proxy", "a b"),
        Err(ReferenceError::InvalidPath)
    );
    assert_eq!(
        original.try_with_location("proxy", "Conn"),
        Err(ReferenceError::NameContainsUppercase),
    );
    assert_eq!(
        original.try_with_location("proxy", &"p".repeat(240)),
        Err(ReferenceError::NameTooLong),
    );
}

/// Found by `fuzz/` (target `reference`): `try_with_location` returned references whose
/// `Display` parsed back as another image.
#[test]
fn try_with_location_refuses_results_that_read_back_as_another_image() {
    let ghcr = Reference::parse("ghcr.io/a").unwrap();
    // `docker.io/a` reads back as `docker.io/library/a`.
    assert_eq!(
        ghcr.try_with_location("docker.io", ""),
        Err(ReferenceError::InvalidDomain)
    );
    // `index.docker.io/c/a` reads back as `docker.io/c/a`.
    assert_eq!(
        ghcr.try_with_location("index.docker.io", "c"),
        Err(ReferenceError::InvalidDomain)
    );
    // `proxy/c/a` reads back as the Docker Hub repository `proxy/c/a`.
    assert_eq!(ghcr.try_with_location("proxy", "c"), Err(ReferenceError::InvalidDomain));
    for (domain, prefix) in [("docker.io", "c"), ("localhost", ""), ("proxy:80", ""), ("Proxy", "c")] {
        let moved = ghcr.try_with_location(domain, prefix).unwrap();
        assert_eq!(Reference::parse(&moved.to_string()), Ok(moved));
    }
}

#[test]
fn errors_read_as_sentence_tails() {
    assert_eq!(
        ReferenceError::NameContainsUppercase.to_string(),
        "invalid reference format: repository name must be lowercase",
    );
    assert_eq!(
        ReferenceError::NameTooLong.to_string(),
        "invalid reference format: repository name must not be more than 255 characters",
    );
    assert_eq!(
        ReferenceError::InvalidDigestEncoding {
            algorithm: "sha256",
            hex_len: 64
        }
        .to_string(),
        "invalid reference format: sha256 digest must be 64 lowercase hexadecimal characters",
    );
    for case in cases() {
        if let Err(error) = Reference::parse(&case.input) {
            let message = error.to_string();
            assert!(message.starts_with("invalid reference format"), "{message}");
            assert!(!message.ends_with('.') && message.is_ascii(), "{message}");
        }
    }
}

#[test]
fn serde_uses_the_normalised_string() {
    let reference = Reference::parse("nginx:1.25").unwrap();
    let json = serde_json::to_string(&reference).unwrap();
    assert_eq!(json, "\"docker.io/library/nginx:1.25\"");
    assert_eq!(serde_json::from_str::<Reference>("\"nginx:1.25\"").unwrap(), reference);
    let error = serde_json::from_str::<Reference>("\"Nginx\"").unwrap_err();
    assert!(error.to_string().contains("must be lowercase"), "{error}");
}

#[test]
fn canonical_registry_host_normalises_for_comparison() {
    let table = [
        ("docker.io", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("registry.hub.docker.com", "docker.io"),
        ("Registry-1.Docker.IO:443", "docker.io"),
        ("docker.io:443", "docker.io"),
        ("index.docker.io:5000", "index.docker.io:5000"),
        ("harbor.example.com:443", "harbor.example.com"),
        ("Harbor.Example.com", "harbor.example.com"),
        ("harbor.example.com:8443", "harbor.example.com:8443"),
        ("localhost:5000", "localhost:5000"),
        ("127.0.0.1:443", "127.0.0.1"),
        ("[::1]:5000", "[::1]:5000"),
        ("[FE80::1]:443", "[fe80::1]"),
        ("[::1]", "[::1]"),
        ("ghcr.io", "ghcr.io"),
        ("", ""),
    ];
    for (host, canonical) in table {
        assert_eq!(canonical_registry_host(host), canonical, "canonical form of {host:?}");
    }
}

#[test]
fn canonical_registry_host_matches_parsed_domains() {
    let address = canonical_registry_host("registry-1.docker.io:443");
    for image in [
        "nginx",
        "index.docker.io/library/nginx",
        "registry-1.docker.io/library/nginx",
    ] {
        let reference = Reference::parse(image).unwrap();
        assert_eq!(canonical_registry_host(reference.domain()), address, "{image}");
    }
    let harbor = Reference::parse("Harbor.Example.com/proj/app:v1").unwrap();
    assert_eq!(
        canonical_registry_host(harbor.domain()),
        canonical_registry_host("harbor.example.com:443")
    );
}
