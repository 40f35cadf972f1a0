//! The registry credential as tests handle it: the `Basic` header a client
//! sends, and the scan that fails a test when the credential shows up
//! somewhere it must never be (a response, a log line, an error).

use base64::Engine as _;

/// `Basic base64(user:password)`, as an `Authorization` value.
pub fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Fails if `text` holds the password or its Basic credential; `what`
/// names the text in the failure.
pub fn assert_no_credential(text: &str, what: &str, user: &str, password: &str) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    assert!(!text.contains(password), "the registry password appears in {what}");
    assert!(!text.contains(&encoded), "the Basic credential appears in {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_the_password_and_its_basic_form() {
        let header = basic("robot$ci", "pw:1");
        assert_eq!(header, "Basic cm9ib3QkY2k6cHc6MQ==");
        assert_no_credential("nothing here", "a clean text", "robot$ci", "pw:1");
        let leaked = std::panic::catch_unwind(|| assert_no_credential(&header, "a header", "robot$ci", "pw:1"));
        assert!(leaked.is_err(), "the Basic form is found");
        let leaked = std::panic::catch_unwind(|| assert_no_credential("pw:1", "a log", "robot$ci", "pw:1"));
        assert!(leaked.is_err(), "the password is found");
    }
}
