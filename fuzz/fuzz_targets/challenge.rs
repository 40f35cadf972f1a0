//! The `WWW-Authenticate` parser on hostile upstream headers: never panics;
//! schemes and parameter names are lowercase tokens; scopes are non-empty
//! and whitespace-free and round-trip through `Scope`; a parsed challenge
//! rendered by `render` parses back to itself.
//!
//! Input: header values separated by `\n`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use registry::challenge::{Scheme, Scope, parse_challenges, preferred, render};

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let challenges = parse_challenges(input.split('\n'));
    if let Some(best) = preferred(&challenges) {
        assert!(challenges.contains(best));
    }
    assert_eq!(preferred(&challenges).is_some(), !challenges.is_empty());
    for challenge in &challenges {
        if let Scheme::Other(name) = &challenge.scheme {
            assert!(!name.is_empty() && name.chars().all(is_tchar), "scheme {name:?}");
            assert_eq!(name, &name.to_ascii_lowercase());
            assert_eq!(Scheme::parse(name), challenge.scheme);
        }
        for key in challenge.params.keys() {
            assert!(!key.is_empty() && key.chars().all(is_tchar), "param name {key:?}");
            assert_eq!(key, &key.to_ascii_lowercase());
        }
        for scope in challenge.scopes() {
            assert!(!scope.is_empty() && !scope.contains([' ', '\t']), "scope {scope:?}");
            if let Some(parsed) = Scope::parse(&scope) {
                assert!(!parsed.resource_type.is_empty() && !parsed.name.is_empty());
                assert!(parsed.actions.iter().all(|a| !a.is_empty() && !a.contains([',', ':'])));
                assert_eq!(
                    Scope::parse(&parsed.to_string()),
                    Some(parsed.clone()),
                    "scope {scope:?}"
                );
            }
        }
        let _ = (challenge.realm(), challenge.service(), challenge.error());

        // What render writes, parse reads back (render drops control
        // characters other than tab from values, so only those round-trip).
        let clean = challenge
            .params
            .values()
            .all(|v| !v.chars().any(|c| c.is_control() && c != '\t'));
        if clean {
            let params: Vec<(&str, &str)> = challenge.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let rendered = render(challenge.scheme.as_str(), &params);
            assert_eq!(
                parse_challenges([rendered.as_str()]),
                vec![challenge.clone()],
                "render gave {rendered:?}"
            );
        }
    }
});
