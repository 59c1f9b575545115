//! FIFO message groups (SQS FIFO `MessageGroupId`, JMS message groups): at most one message of
//! a group is in flight at a time, so a group is processed in order while groups proceed in
//! parallel.

use std::collections::HashMap;

use postino_types::{HeaderValue, Message};

/// The application header that names a message's group.
pub(crate) const HEADER: &str = "x-group-id";

/// The group of a message, if it has one.
pub(crate) fn group_of(message: &Message) -> Option<String> {
    match message.properties.headers.get(HEADER) {
        Some(HeaderValue::Text(group)) => Some(group.clone()),
        _ => None,
    }
}

/// Groups with a message in flight, by group and by the offset holding it.
#[derive(Debug, Default)]
pub(crate) struct Busy {
    groups: HashMap<String, u64>,
    holders: HashMap<u64, String>,
}

impl Busy {
    pub(crate) fn is_busy(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    pub(crate) fn hold(&mut self, group: String, offset: u64) {
        self.groups.insert(group.clone(), offset);
        self.holders.insert(offset, group);
    }

    /// Frees the group that `offset` held, if any.
    pub(crate) fn release(&mut self, offset: u64) {
        if let Some(group) = self.holders.remove(&offset) {
            self.groups.remove(&group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_busy_until_its_holder_is_released() {
        let mut busy = Busy::default();
        busy.hold("g".into(), 7);
        assert!(busy.is_busy("g"));
        busy.release(8);
        assert!(busy.is_busy("g"));
        busy.release(7);
        assert!(!busy.is_busy("g"));
        let message = Message::new(&b""[..]).with_header(HEADER, HeaderValue::Text("g".into()));
        assert_eq!(group_of(&message).as_deref(), Some("g"));
    }
}
