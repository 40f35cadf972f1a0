//! `Reference::parse` on arbitrary text: never panics, Ok results display as
//! a reference that parses back to the same value, relocation never panics
//! and a checked relocation round-trips too; and the verdicts agree with the
//! `container_image_dist_ref` oracle except where connector/tests/reference.rs
//! documents a deliberate difference.
//!
//! Input: `reference[\ndomain[\nprefix]]`.

#![no_main]

use connector::reference::{Reference, ReferenceError};
use container_image_dist_ref::ImgRef;
use container_image_dist_ref::digest::Standard;
use libfuzzer_sys::fuzz_target;

/// The oracle's reading (plain `Parse`, no Docker Hub normalisation), with
/// digests distribution would not accept counted as invalid.
fn oracle(input: &str) -> Option<(Option<String>, String, Option<String>, Option<String>)> {
    let parsed = ImgRef::new(input).ok()?;
    let digest = match parsed.digest() {
        Some(d) if !d.compliance().compliant_with(Standard::Distribution) || d.encoded().to_str().len() < 32 => {
            return None;
        }
        Some(d) => Some(d.to_str().to_owned()),
        None => None,
    };
    Some((
        parsed.domain().map(|d| d.to_str().to_owned()),
        parsed.path().to_str().to_owned(),
        parsed.tag().map(str::to_owned),
        digest,
    ))
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let mut lines = input.splitn(3, '\n');
    let text = lines.next().unwrap_or_default();
    let domain = lines.next();
    let prefix = lines.next().unwrap_or_default();

    let ours = Reference::parse(text);
    // Documented differences: distribution admits any hex-and-colon string in
    // brackets where the oracle checks IPv6 groups; the oracle caps digests at
    // 1024 hex characters and their algorithm at 255 characters.
    let bracketed = text.contains('[');
    match &ours {
        Ok(reference) => {
            let shown = reference.to_string();
            assert!(shown.is_ascii() && !shown.contains(char::is_whitespace), "{shown:?}");
            assert_eq!(
                Reference::parse(&shown).as_ref(),
                Ok(reference),
                "round trip of {text:?}"
            );
            assert_eq!(reference.name(), format!("{}/{}", reference.domain(), reference.path()));
            let long_digest = reference
                .digest()
                .and_then(|d| d.split_once(':'))
                .is_some_and(|(algorithm, encoded)| algorithm.len() > 255 || encoded.len() > 1024);
            if !bracketed && !long_digest {
                assert!(oracle(text).is_some(), "we accept {text:?}, the oracle does not");
                let (domain, path, tag, digest) =
                    oracle(&shown).unwrap_or_else(|| panic!("oracle rejects our normal form {shown:?}"));
                assert_eq!(domain.as_deref(), Some(reference.domain()), "{shown:?}");
                assert_eq!(path, reference.path(), "{shown:?}");
                assert_eq!(tag.as_deref(), reference.tag(), "{shown:?}");
                assert_eq!(digest.as_deref(), reference.digest(), "{shown:?}");
            }
        }
        Err(error) if !bracketed => {
            let first_component = text.split('/').next().unwrap_or_default();
            let explained = match error {
                // distribution's ParseNormalizedNamed refuses image IDs; the
                // limit counts the normalised name docker.io/library/….
                ReferenceError::AmbiguousIdentifier | ReferenceError::NameTooLong => true,
                // The oracle lets a tag after a `/` run past 128 characters.
                ReferenceError::InvalidTag => text
                    .rsplit('/')
                    .next()
                    .and_then(|last| last.split_once(':'))
                    .is_some_and(|(_, rest)| rest.split('@').next().unwrap_or_default().len() > 128),
                // go-digest registers sha384; the oracle does not.
                ReferenceError::InvalidDigestEncoding { algorithm, .. } => *algorithm == "sha384",
                // distribution falls back to an empty domain (`my_host.example/app`).
                ReferenceError::InvalidDomain => first_component.contains('_'),
                _ => false,
            };
            assert!(
                explained || oracle(text).is_none(),
                "we reject {text:?} ({error}), the oracle accepts {:?}",
                oracle(text)
            );
        }
        Err(_) => {}
    }

    if let (Ok(reference), Some(domain)) = (&ours, domain) {
        let moved = reference.with_location(domain, prefix);
        assert_eq!(moved.tag(), reference.tag());
        assert_eq!(moved.digest(), reference.digest());
        let _ = moved.to_string();
        if let Ok(checked) = reference.try_with_location(domain, prefix) {
            assert_eq!(checked, moved);
            let shown = checked.to_string();
            assert_eq!(
                Reference::parse(&shown).as_ref(),
                Ok(&checked),
                "try_with_location({domain:?}, {prefix:?}) on {text:?} gives {shown:?}, which reads back differently",
            );
        }
    }
});
