//! Message bodies that carry their own identity and checksum, so that the harness knows, from
//! the bytes alone, which publish a delivery is and whether it arrived intact.
//!
//! Layout: `<publisher>:<seq>:<padding>:<crc32c of what precedes, 8 hex digits>`.

/// Which publish a message is: its publisher (unique within a run) and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    pub publisher: u32,
    pub seq: u64,
}

/// The body of publish `id`, padded to about `size` bytes.
pub fn encode(id: Id, size: usize) -> Vec<u8> {
    let head = format!("{}:{}:", id.publisher, id.seq);
    let mut body = head.into_bytes();
    let padding = size.saturating_sub(body.len() + 9);
    body.extend((0..padding).map(|index| b'a' + (index % 26) as u8));
    body.push(b':');
    let crc = crc32c::crc32c(&body);
    body.extend(format!("{crc:08x}").into_bytes());
    body
}

/// The publish a body names, or `None` when it is corrupt (bad checksum or shape).
pub fn decode(body: &[u8]) -> Option<Id> {
    let split = body.len().checked_sub(8)?;
    let (covered, crc) = body.split_at(split);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if crc32c::crc32c(covered) != crc {
        return None;
    }
    let text = std::str::from_utf8(covered).ok()?;
    let mut fields = text.splitn(3, ':');
    let publisher = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    Some(Id { publisher, seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_names_its_publish_and_a_flipped_bit_is_caught() {
        let id = Id {
            publisher: 7,
            seq: 12_345,
        };
        let mut body = encode(id, 100);
        assert_eq!(body.len(), 100);
        assert_eq!(decode(&body), Some(id));
        body[20] ^= 1;
        assert_eq!(decode(&body), None);
        assert_eq!(decode(b"short"), None);
    }
}
