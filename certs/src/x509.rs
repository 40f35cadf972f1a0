//! Reads the X.509 fields this crate acts on: names, validity, public key and
//! the CA-related extensions (RFC 5280 §4.1).

use rcgen::{DistinguishedName, DnType, DnValue};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::der::{self, Element, Reader, tag};

/// Object identifiers (DER contents) of the extensions we read.
pub(crate) mod oid {
    /// 2.5.29.14
    pub(crate) const SUBJECT_KEY_IDENTIFIER: &[u8] = &[0x55, 0x1d, 0x0e];
    /// 2.5.29.15
    pub(crate) const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    /// 2.5.29.19
    pub(crate) const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
}

/// Why a certificate's fields could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not the DER structure of a certificate.
    #[error("malformed certificate structure: {0}")]
    Der(#[from] der::Error),
    /// A validity time in neither RFC 5280 form.
    #[error("unsupported validity time {0:?}")]
    Time(String),
    /// An extension whose value does not match its definition.
    #[error("malformed {extension} extension: {source}")]
    Extension {
        /// Which extension.
        extension: &'static str,
        /// What was wrong with it.
        #[source]
        source: der::Error,
    },
    /// A relative distinguished name with several attributes (`CN=a+O=b`).
    #[error("multi-valued relative distinguished names are not supported")]
    MultiValuedName,
    /// The same attribute twice in one name, which rcgen cannot reproduce.
    #[error("name attribute {oid} appears more than once")]
    RepeatedAttribute {
        /// The attribute's object identifier, dotted.
        oid: String,
    },
    /// A name attribute in a string type rcgen cannot write.
    #[error("name attribute {oid} uses unsupported string type {tag:#04x}")]
    UnsupportedStringType {
        /// The attribute's object identifier, dotted.
        oid: String,
        /// The ASN.1 tag of its value.
        tag: u8,
    },
    /// A text attribute whose bytes are not UTF-8.
    #[error("name attribute {oid} is not valid UTF-8")]
    NotUtf8 {
        /// The attribute's object identifier, dotted.
        oid: String,
    },
    /// A name attribute whose characters its string type does not allow.
    #[error("name attribute {oid} is not a valid string of its type: {source}")]
    InvalidString {
        /// The attribute's object identifier, dotted.
        oid: String,
        /// What rcgen rejected.
        #[source]
        source: rcgen::Error,
    },
}

/// Result of reading certificate fields.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The fields of one certificate, borrowed from its DER.
#[derive(Debug, Clone)]
pub(crate) struct CertificateFields<'a> {
    /// The issuer `Name`, encoded.
    pub(crate) issuer: &'a [u8],
    /// The subject `Name`, encoded.
    pub(crate) subject: &'a [u8],
    #[cfg_attr(not(test), expect(dead_code, reason = "only tests check it"))]
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    /// The `SubjectPublicKeyInfo`, encoded.
    pub(crate) subject_public_key_info: &'a [u8],
    pub(crate) extensions: Vec<Extension<'a>>,
}

/// One X.509v3 extension.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extension<'a> {
    /// The extension's object identifier (DER contents).
    pub(crate) oid: &'a [u8],
    #[cfg_attr(not(test), expect(dead_code, reason = "only tests check it"))]
    pub(crate) critical: bool,
    /// The contents of `extnValue`, i.e. the DER of the extension itself.
    pub(crate) value: &'a [u8],
}

/// The basicConstraints extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BasicConstraints {
    pub(crate) is_ca: bool,
    pub(crate) path_len: Option<u64>,
}

/// The keyUsage bits, in RFC 5280 numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyUsage {
    bits: Vec<u8>,
}

#[cfg_attr(not(test), expect(dead_code, reason = "only tests check some bits"))]
impl KeyUsage {
    pub(crate) const DIGITAL_SIGNATURE: usize = 0;
    pub(crate) const KEY_CERT_SIGN: usize = 5;
    pub(crate) const CRL_SIGN: usize = 6;

    pub(crate) fn allows(&self, bit: usize) -> bool {
        self.bits
            .get(bit / 8)
            .is_some_and(|byte| byte & (0x80 >> (bit % 8)) != 0)
    }
}

impl<'a> CertificateFields<'a> {
    /// Reads the fields of a DER certificate.
    pub(crate) fn parse(certificate_der: &'a [u8]) -> Result<Self> {
        let certificate = der::read_single(certificate_der, tag::SEQUENCE)?;
        let mut certificate = certificate.nested();
        let mut tbs = certificate.read(tag::SEQUENCE)?.nested();

        tbs.read_optional(tag::context_constructed(0))?; // version
        tbs.read(tag::INTEGER)?; // serialNumber
        tbs.read(tag::SEQUENCE)?; // signature algorithm
        let issuer = tbs.read(tag::SEQUENCE)?.encoded;
        let mut validity = tbs.read(tag::SEQUENCE)?.nested();
        let not_before = read_time(&mut validity)?;
        let not_after = read_time(&mut validity)?;
        validity.finish()?;
        let subject = tbs.read(tag::SEQUENCE)?.encoded;
        let subject_public_key_info = tbs.read(tag::SEQUENCE)?.encoded;
        // issuerUniqueID [1] and subjectUniqueID [2] are IMPLICIT primitive bit strings.
        tbs.read_optional(0x81)?;
        tbs.read_optional(0x82)?;
        let extensions = match tbs.read_optional(tag::context_constructed(3))? {
            Some(wrapper) => read_extensions(wrapper)?,
            None => Vec::new(),
        };
        tbs.finish()?;

        Ok(Self {
            issuer,
            subject,
            not_before,
            not_after,
            subject_public_key_info,
            extensions,
        })
    }

    pub(crate) fn extension(&self, oid: &[u8]) -> Option<&Extension<'a>> {
        self.extensions.iter().find(|extension| extension.oid == oid)
    }

    /// The subjectKeyIdentifier, if the certificate carries one.
    pub(crate) fn subject_key_identifier(&self) -> Result<Option<&'a [u8]>> {
        let Some(extension) = self.extension(oid::SUBJECT_KEY_IDENTIFIER) else {
            return Ok(None);
        };
        let key_identifier =
            der::read_single(extension.value, tag::OCTET_STRING).map_err(|source| Error::Extension {
                extension: "subjectKeyIdentifier",
                source,
            })?;
        Ok(Some(key_identifier.contents))
    }

    pub(crate) fn basic_constraints(&self) -> Result<Option<BasicConstraints>> {
        let Some(extension) = self.extension(oid::BASIC_CONSTRAINTS) else {
            return Ok(None);
        };
        let read = || -> der::Result<BasicConstraints> {
            let mut fields = der::read_single(extension.value, tag::SEQUENCE)?.nested();
            let is_ca = fields
                .read_optional(tag::BOOLEAN)?
                .is_some_and(|flag| flag.contents != [0]);
            let path_len = fields
                .read_optional(tag::INTEGER)?
                .map(|integer| read_small_unsigned(integer.contents))
                .transpose()?;
            fields.finish()?;
            Ok(BasicConstraints { is_ca, path_len })
        };
        read().map(Some).map_err(|source| Error::Extension {
            extension: "basicConstraints",
            source,
        })
    }

    pub(crate) fn key_usage(&self) -> Result<Option<KeyUsage>> {
        let Some(extension) = self.extension(oid::KEY_USAGE) else {
            return Ok(None);
        };
        let bit_string = der::read_single(extension.value, tag::BIT_STRING).map_err(|source| Error::Extension {
            extension: "keyUsage",
            source,
        })?;
        // The first content byte counts the unused bits of the last byte.
        let bits = bit_string.contents.get(1..).unwrap_or_default().to_vec();
        Ok(Some(KeyUsage { bits }))
    }

    /// The subject as an rcgen name, so certificates can be issued under it.
    ///
    /// Fails for names rcgen would not write back byte for byte, because a
    /// leaf's issuer must equal its CA's subject exactly for chains to build.
    pub(crate) fn subject_distinguished_name(&self) -> Result<DistinguishedName> {
        let mut name = DistinguishedName::new();
        let mut seen = Vec::new();
        let mut relative_names = der::read_single(self.subject, tag::SEQUENCE)?.nested();
        while !relative_names.is_empty() {
            let mut attributes = relative_names.read(tag::SET)?.nested();
            let mut attribute = attributes.read(tag::SEQUENCE)?.nested();
            if !attributes.is_empty() {
                return Err(Error::MultiValuedName);
            }
            let oid = der::decode_object_identifier(attribute.read(tag::OBJECT_IDENTIFIER)?.contents)?;
            let value = attribute.read_any()?;
            attribute.finish()?;

            if seen.contains(&oid) {
                return Err(Error::RepeatedAttribute { oid: dotted(&oid) });
            }
            let value = name_value(&oid, value)?;
            name.push(DnType::from_oid(&oid), value);
            seen.push(oid);
        }
        Ok(name)
    }
}

fn read_extensions<'a>(wrapper: Element<'a>) -> Result<Vec<Extension<'a>>> {
    let mut extensions = Vec::new();
    let mut list = der::read_single(wrapper.contents, tag::SEQUENCE)?.nested();
    while !list.is_empty() {
        let mut extension = list.read(tag::SEQUENCE)?.nested();
        let oid = extension.read(tag::OBJECT_IDENTIFIER)?.contents;
        let critical = extension
            .read_optional(tag::BOOLEAN)?
            .is_some_and(|flag| flag.contents != [0]);
        let value = extension.read(tag::OCTET_STRING)?.contents;
        extension.finish()?;
        extensions.push(Extension { oid, critical, value });
    }
    Ok(extensions)
}

fn read_small_unsigned(contents: &[u8]) -> der::Result<u64> {
    if contents.is_empty() || contents.len() > 8 || contents[0] & 0x80 != 0 {
        return Err(der::Error::UnsupportedLength);
    }
    Ok(contents
        .iter()
        .fold(0u64, |value, &byte| (value << 8) | u64::from(byte)))
}

fn name_value(oid: &[u64], value: Element<'_>) -> Result<DnValue> {
    let invalid = |source| Error::InvalidString {
        oid: dotted(oid),
        source,
    };
    let text = || String::from_utf8(value.contents.to_vec()).map_err(|_| Error::NotUtf8 { oid: dotted(oid) });
    Ok(match value.tag {
        tag::UTF8_STRING => DnValue::Utf8String(text()?),
        tag::PRINTABLE_STRING => DnValue::PrintableString(text()?.try_into().map_err(invalid)?),
        tag::IA5_STRING => DnValue::Ia5String(text()?.try_into().map_err(invalid)?),
        tag::TELETEX_STRING => DnValue::TeletexString(text()?.try_into().map_err(invalid)?),
        tag::BMP_STRING => {
            DnValue::BmpString(rcgen::string::BmpString::from_utf16be(value.contents.to_vec()).map_err(invalid)?)
        }
        tag::UNIVERSAL_STRING => DnValue::UniversalString(
            rcgen::string::UniversalString::from_utf32be(value.contents.to_vec()).map_err(invalid)?,
        ),
        other => {
            return Err(Error::UnsupportedStringType {
                oid: dotted(oid),
                tag: other,
            });
        }
    })
}

/// An object identifier in dotted notation, for messages.
fn dotted(oid: &[u64]) -> String {
    let arcs: Vec<String> = oid.iter().map(u64::to_string).collect();
    arcs.join(".")
}

/// Reads a UTCTime or GeneralizedTime in the `Z`-terminated, seconds-precision
/// forms RFC 5280 §4.1.2.5 requires.
fn read_time(validity: &mut Reader<'_>) -> Result<OffsetDateTime> {
    let time = validity.read_any()?;
    let text = std::str::from_utf8(time.contents).unwrap_or_default();
    let unsupported = || Error::Time(String::from_utf8_lossy(time.contents).into_owned());
    let digits = match (time.tag, text.len()) {
        (tag::UTC_TIME, 13) | (tag::GENERALIZED_TIME, 15) if text.ends_with('Z') => &text[..text.len() - 1],
        _ => return Err(unsupported()),
    };
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(unsupported());
    }
    let number = |range: std::ops::Range<usize>| -> u32 { digits[range].parse().unwrap_or_default() };
    let (year, rest) = if time.tag == tag::UTC_TIME {
        // UTCTime years 50..99 are 19xx, 00..49 are 20xx.
        let short_year = number(0..2) as i32;
        (if short_year >= 50 { 1900 } else { 2000 } + short_year, 2)
    } else {
        (number(0..4) as i32, 4)
    };
    let field = |index: usize| number(rest + 2 * index..rest + 2 * index + 2) as u8;
    let month = Month::try_from(field(0)).map_err(|_| unsupported())?;
    let date = Date::from_calendar_date(year, month, field(1)).map_err(|_| unsupported())?;
    let time_of_day = Time::from_hms(field(2), field(3), field(4)).map_err(|_| unsupported())?;
    Ok(PrimitiveDateTime::new(date, time_of_day).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTRY: &[u8] = &[0x55, 0x04, 0x06];
    const ORGANIZATIONAL_UNIT: &[u8] = &[0x55, 0x04, 0x0b];
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    fn time_element(tag: u8, text: &str) -> Vec<u8> {
        der::encode(tag, text.as_bytes())
    }

    fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let contents = [der::encode(tag::OBJECT_IDENTIFIER, oid), der::encode(tag, value)].concat();
        der::encode(tag::SEQUENCE, &contents)
    }

    /// A `Name` from relative names, each a list of encoded attributes.
    fn name(relative_names: &[&[Vec<u8>]]) -> Vec<u8> {
        let sets: Vec<u8> = relative_names
            .iter()
            .flat_map(|attributes| der::encode(tag::SET, &attributes.concat()))
            .collect();
        der::encode(tag::SEQUENCE, &sets)
    }

    fn subject_of(subject: &[u8]) -> Result<DistinguishedName> {
        CertificateFields {
            issuer: subject,
            subject,
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH,
            subject_public_key_info: &[],
            extensions: Vec::new(),
        }
        .subject_distinguished_name()
    }

    #[test]
    fn subject_keeps_order_and_string_types() {
        let subject = name(&[
            &[attribute(COUNTRY, tag::PRINTABLE_STRING, b"DE")],
            &[attribute(
                ORGANIZATIONAL_UNIT,
                tag::UTF8_STRING,
                "Plattformteam Köln".as_bytes(),
            )],
            &[attribute(COMMON_NAME, tag::UTF8_STRING, b"Test CA")],
        ]);
        let parsed = subject_of(&subject).unwrap();
        let entries: Vec<_> = parsed.iter().collect();
        assert_eq!(
            entries,
            [
                (
                    &DnType::CountryName,
                    &DnValue::PrintableString("DE".try_into().unwrap())
                ),
                (
                    &DnType::OrganizationalUnitName,
                    &DnValue::Utf8String("Plattformteam Köln".into())
                ),
                (&DnType::CommonName, &DnValue::Utf8String("Test CA".into())),
            ]
        );
    }

    #[test]
    fn subjects_rcgen_cannot_reproduce_are_rejected() {
        let repeated = name(&[
            &[attribute(ORGANIZATIONAL_UNIT, tag::UTF8_STRING, b"a")],
            &[attribute(ORGANIZATIONAL_UNIT, tag::UTF8_STRING, b"b")],
        ]);
        assert_eq!(
            subject_of(&repeated).unwrap_err().to_string(),
            "name attribute 2.5.4.11 appears more than once"
        );
        let multi_valued = name(&[&[
            attribute(ORGANIZATIONAL_UNIT, tag::UTF8_STRING, b"a"),
            attribute(COMMON_NAME, tag::UTF8_STRING, b"b"),
        ]]);
        assert!(matches!(subject_of(&multi_valued), Err(Error::MultiValuedName)));
        let numeric = name(&[&[attribute(COMMON_NAME, 0x12, b"42")]]);
        assert!(matches!(
            subject_of(&numeric),
            Err(Error::UnsupportedStringType { tag: 0x12, .. })
        ));
        let not_utf8 = name(&[&[attribute(COMMON_NAME, tag::UTF8_STRING, &[0xff])]]);
        assert!(matches!(subject_of(&not_utf8), Err(Error::NotUtf8 { .. })));
    }

    #[test]
    fn validity_times_in_both_forms_are_read() {
        let cases = [
            (tag::UTC_TIME, "491231235959Z", Some("2049-12-31 23:59:59.0 +00:00:00")),
            (tag::UTC_TIME, "500101000000Z", Some("1950-01-01 0:00:00.0 +00:00:00")),
            (
                tag::GENERALIZED_TIME,
                "21261030142814Z",
                Some("2126-10-30 14:28:14.0 +00:00:00"),
            ),
            (tag::UTC_TIME, "4912312359Z", None),
            (tag::UTC_TIME, "491331235959Z", None),
            (tag::GENERALIZED_TIME, "20261030142814.5Z", None),
            (tag::GENERALIZED_TIME, "20261030142814+0100", None),
        ];
        for (tag, text, expected) in cases {
            let encoded = time_element(tag, text);
            let parsed = read_time(&mut Reader::new(&encoded)).ok();
            assert_eq!(parsed.map(|time| time.to_string()).as_deref(), expected, "{text}");
        }
    }
}
