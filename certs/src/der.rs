//! Just enough DER to walk X.509 certificates and wrap legacy private keys:
//! single-byte tags, definite lengths, nothing else.
//!
//! NB: rcgen only reads certificates with its `x509-parser` feature, which
//! pulls in a whole parser stack for the handful of fields we need.

/// Tag numbers of the universal types this crate reads or writes.
pub(crate) mod tag {
    pub(crate) const BOOLEAN: u8 = 0x01;
    pub(crate) const INTEGER: u8 = 0x02;
    pub(crate) const BIT_STRING: u8 = 0x03;
    pub(crate) const OCTET_STRING: u8 = 0x04;
    pub(crate) const NULL: u8 = 0x05;
    pub(crate) const OBJECT_IDENTIFIER: u8 = 0x06;
    pub(crate) const UTF8_STRING: u8 = 0x0c;
    pub(crate) const PRINTABLE_STRING: u8 = 0x13;
    pub(crate) const TELETEX_STRING: u8 = 0x14;
    pub(crate) const IA5_STRING: u8 = 0x16;
    pub(crate) const UTC_TIME: u8 = 0x17;
    pub(crate) const GENERALIZED_TIME: u8 = 0x18;
    pub(crate) const UNIVERSAL_STRING: u8 = 0x1c;
    pub(crate) const BMP_STRING: u8 = 0x1e;
    pub(crate) const SEQUENCE: u8 = 0x30;
    pub(crate) const SET: u8 = 0x31;

    /// An explicitly tagged, constructed context-specific field such as `[0]`.
    pub(crate) const fn context_constructed(number: u8) -> u8 {
        0xa0 | number
    }
}

/// Why a DER value could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The input ended inside a value.
    #[error("input ends inside a DER value")]
    Truncated,
    /// A value had another tag than the structure requires.
    #[error("expected DER tag {expected:#04x}, found {found:#04x}")]
    UnexpectedTag {
        /// The tag the structure requires.
        expected: u8,
        /// The tag found instead.
        found: u8,
    },
    /// A multi-byte tag, which no field we read uses.
    #[error("multi-byte DER tags are not supported")]
    UnsupportedTag,
    /// An indefinite or over-long length.
    #[error("DER length is indefinite or too long")]
    UnsupportedLength,
    /// Bytes were left over after a complete structure.
    #[error("unexpected data after the end of a DER value")]
    TrailingData,
    /// An object identifier that does not decode to arcs.
    #[error("malformed object identifier")]
    MalformedObjectIdentifier,
}

/// Result of reading DER.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One tag-length-value element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Element<'a> {
    pub(crate) tag: u8,
    /// The value bytes, without tag and length.
    pub(crate) contents: &'a [u8],
    /// The whole element, tag and length included.
    pub(crate) encoded: &'a [u8],
}

impl<'a> Element<'a> {
    /// A reader over the elements nested in this (constructed) element.
    pub(crate) fn nested(&self) -> Reader<'a> {
        Reader::new(self.contents)
    }
}

/// Reads consecutive elements from a byte slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.input.first().copied()
    }

    /// Reads the next element whatever its tag.
    pub(crate) fn read_any(&mut self) -> Result<Element<'a>> {
        let input = self.input;
        let (&tag, rest) = input.split_first().ok_or(Error::Truncated)?;
        if tag & 0x1f == 0x1f {
            return Err(Error::UnsupportedTag);
        }
        let (&first_length_byte, rest) = rest.split_first().ok_or(Error::Truncated)?;
        let (length, rest) = if first_length_byte < 0x80 {
            (usize::from(first_length_byte), rest)
        } else {
            let length_bytes = usize::from(first_length_byte & 0x7f);
            // NB: 0x80 is BER's indefinite length; four bytes already mean 4 GiB.
            if length_bytes == 0 || length_bytes > 4 {
                return Err(Error::UnsupportedLength);
            }
            if rest.len() < length_bytes {
                return Err(Error::Truncated);
            }
            let (length, rest) = rest.split_at(length_bytes);
            let length = length
                .iter()
                .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
            (length, rest)
        };
        if rest.len() < length {
            return Err(Error::Truncated);
        }
        let header_length = input.len() - rest.len();
        let (encoded, remaining) = input.split_at(header_length + length);
        self.input = remaining;
        Ok(Element {
            tag,
            contents: &encoded[header_length..],
            encoded,
        })
    }

    /// Reads the next element, which must carry `expected`.
    pub(crate) fn read(&mut self, expected: u8) -> Result<Element<'a>> {
        match self.peek_tag() {
            Some(found) if found != expected => Err(Error::UnexpectedTag { expected, found }),
            _ => self.read_any(),
        }
    }

    /// Reads the next element if it carries `tag`, for OPTIONAL fields.
    pub(crate) fn read_optional(&mut self, tag: u8) -> Result<Option<Element<'a>>> {
        if self.peek_tag() == Some(tag) {
            self.read_any().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Asserts that every element has been read.
    pub(crate) fn finish(self) -> Result<()> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingData)
        }
    }
}

/// Reads exactly one element carrying `expected` from `input`.
pub(crate) fn read_single(input: &[u8], expected: u8) -> Result<Element<'_>> {
    let mut reader = Reader::new(input);
    let element = reader.read(expected)?;
    reader.finish()?;
    Ok(element)
}

/// Encodes one element with a definite, minimal length.
pub(crate) fn encode(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(contents.len() + 6);
    encoded.push(tag);
    let length = contents.len();
    if length < 0x80 {
        encoded.push(length as u8);
    } else {
        let length_bytes = length.to_be_bytes();
        let significant = &length_bytes[length_bytes.iter().take_while(|&&byte| byte == 0).count()..];
        encoded.push(0x80 | significant.len() as u8);
        encoded.extend_from_slice(significant);
    }
    encoded.extend_from_slice(contents);
    encoded
}

/// Decodes the contents of an OBJECT IDENTIFIER into its arcs.
pub(crate) fn decode_object_identifier(contents: &[u8]) -> Result<Vec<u64>> {
    let mut subidentifiers = Vec::new();
    let mut current: u64 = 0;
    for (index, &byte) in contents.iter().enumerate() {
        if current == 0 && byte == 0x80 {
            // A leading 0x80 pads a subidentifier, which DER forbids.
            return Err(Error::MalformedObjectIdentifier);
        }
        current = current.checked_mul(128).ok_or(Error::MalformedObjectIdentifier)? | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            subidentifiers.push(current);
            current = 0;
        } else if index == contents.len() - 1 {
            return Err(Error::MalformedObjectIdentifier);
        }
    }
    let (&first, rest) = subidentifiers.split_first().ok_or(Error::MalformedObjectIdentifier)?;
    // The first subidentifier packs two arcs: 40 * arc1 + arc2, with arc1 <= 2.
    let first_arc = (first / 40).min(2);
    let mut arcs = vec![first_arc, first - 40 * first_arc];
    arcs.extend_from_slice(rest);
    Ok(arcs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_round_trip() {
        for length in [0usize, 1, 127, 128, 255, 256, 65_535, 65_536] {
            let contents = vec![0x42; length];
            let encoded = encode(tag::OCTET_STRING, &contents);
            let element = read_single(&encoded, tag::OCTET_STRING).unwrap();
            assert_eq!(element.contents.len(), length);
            assert_eq!(element.encoded, encoded.as_slice());
        }
    }

    #[test]
    fn truncated_and_indefinite_values_are_rejected() {
        assert_eq!(
            read_single(&[0x30, 0x05, 0x01], tag::SEQUENCE).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            read_single(&[0x30, 0x80, 0x00, 0x00], tag::SEQUENCE).unwrap_err(),
            Error::UnsupportedLength
        );
        assert_eq!(
            read_single(&[0x04, 0x00, 0x00], tag::OCTET_STRING).unwrap_err(),
            Error::TrailingData
        );
        assert_eq!(
            read_single(&[0x04, 0x00], tag::SEQUENCE).unwrap_err(),
            Error::UnexpectedTag {
                expected: tag::SEQUENCE,
                found: tag::OCTET_STRING
            }
        );
    }

    #[test]
    fn object_identifiers_decode_to_arcs() {
        // 1.2.840.10045.3.1.7 (P-256) and 2.5.4.3 (commonName).
        assert_eq!(
            decode_object_identifier(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]).unwrap(),
            vec![1, 2, 840, 10045, 3, 1, 7]
        );
        assert_eq!(decode_object_identifier(&[0x55, 0x04, 0x03]).unwrap(), vec![2, 5, 4, 3]);
        assert!(decode_object_identifier(&[0x55, 0x84]).is_err());
        assert!(decode_object_identifier(&[]).is_err());
    }
}
