//! Telling the formats apart by their first bytes, whatever the file is called.

#[derive(Debug, PartialEq)]
pub(crate) enum Format {
    Zip,
    Safetensors,
    LegacyPickle,
    Unknown,
}

pub(crate) fn detect(bytes: &[u8]) -> Format {
    if bytes.starts_with(b"PK\x03\x04") {
        Format::Zip
    } else if has_safetensors_header(bytes) {
        Format::Safetensors
    } else if bytes.first() == Some(&0x80) {
        // PROTO, the first opcode of every binary pickle; the reader decides the rest.
        Format::LegacyPickle
    } else {
        Format::Unknown
    }
}

/// An 8-byte little-endian header length that fits the file, then a JSON object.
fn has_safetensors_header(bytes: &[u8]) -> bool {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return false;
    };
    let len = u64::from_le_bytes(*len);
    len >= 2 && len <= rest.len() as u64 && rest.first() == Some(&b'{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_content() {
        assert_eq!(detect(b"PK\x03\x04rest"), Format::Zip);
        assert_eq!(detect(b"\x02\0\0\0\0\0\0\0{}"), Format::Safetensors);
        assert_eq!(detect(b"\x80\x02K\x01."), Format::LegacyPickle);
        assert_eq!(detect(b"\x09\0\0\0\0\0\0\0{}"), Format::Unknown);
        assert_eq!(detect(b""), Format::Unknown);
        assert_eq!(detect(b"hello"), Format::Unknown);
    }
}
