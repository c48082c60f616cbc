//! Our own Message-IDs: `mt.<ticket>.<nonce>.<keyed hash>@<domain>`, made under the store's
//! key so that a reply threads by them even when the outbound row is gone, and so that nobody
//! without the key can make one that points at a ticket. Pure functions, no I/O: threading,
//! the loop checks and the outbox use them.

/// What an id says about its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnId {
    /// Not in our form.
    NotOurs,
    /// Ours, for this ticket, with a valid keyed hash.
    Valid(i64),
    /// In our form but the hash does not verify: forged or from another store.
    Forged(i64),
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Characters of the keyed hash: 40 bits.
const MAC_LEN: usize = 8;

fn mac(key: &[u8], ticket: i64, nonce: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, format!("mt.{ticket}.{nonce}").as_bytes());
    tag.as_ref()
        .iter()
        .take(MAC_LEN)
        .map(|b| char::from(BASE32[usize::from(b & 31)]))
        .collect()
}

/// Our Message-ID for an outgoing message of `ticket` (without angle brackets):
/// `mt.<ticket>.<nonce>.<keyed hash>@<domain>`. `nonce` makes each id unique (an outbox row
/// id, a counter); it is reduced to ASCII letters and digits. The hash is an HMAC-SHA256 under
/// the store's key, so a reply threads by it even if the outbound row is gone, and nobody
/// without the key can make one that points at a ticket.
pub fn outbound_id(key: &[u8], ticket: i64, nonce: &str, domain: &str) -> String {
    let nonce: String = nonce
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect::<String>()
        .to_ascii_lowercase();
    let nonce = if nonce.is_empty() {
        "0".to_owned()
    } else {
        nonce
    };
    format!("mt.{ticket}.{nonce}.{}@{domain}", mac(key, ticket, &nonce))
}

/// Whether `id` is one of ours (see [`outbound_id`]).
pub fn verify_own_id(key: &[u8], id: &str) -> OwnId {
    let local = id
        .rsplit_once('@')
        .map_or(id, |(l, _)| l)
        .to_ascii_lowercase();
    let mut parts = local.split('.');
    let (Some("mt"), Some(t), Some(nonce), Some(h), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return OwnId::NotOurs;
    };
    let Some(ticket) = t
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0 && t.bytes().all(|b| b.is_ascii_digit()))
    else {
        return OwnId::NotOurs;
    };
    if nonce.is_empty() || h.len() != MAC_LEN {
        return OwnId::NotOurs;
    }
    let want = mac(key, ticket, nonce);
    // Constant time: no early exit on the first differing byte.
    let diff = want
        .bytes()
        .zip(h.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 {
        OwnId::Valid(ticket)
    } else {
        OwnId::Forged(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keyed_ids_verify_and_forgeries_fail() {
        let key = [7u8; 32];
        let id = outbound_id(&key, 42, "Row-17", "support.example.com");
        assert!(id.starts_with("mt.42.row17."), "{id}");
        assert!(id.ends_with("@support.example.com"));
        assert_eq!(verify_own_id(&key, &id), OwnId::Valid(42));
        assert_eq!(verify_own_id(&key, &id.to_uppercase()), OwnId::Valid(42));
        assert_eq!(verify_own_id(&[8u8; 32], &id), OwnId::Forged(42));
        let retargeted = id.replacen("mt.42.", "mt.43.", 1);
        assert_eq!(verify_own_id(&key, &retargeted), OwnId::Forged(43));
        assert_eq!(verify_own_id(&key, "abc@example.com"), OwnId::NotOurs);
        assert_eq!(verify_own_id(&key, "mt.x.1.abcdefgh@e"), OwnId::NotOurs);
        assert_eq!(verify_own_id(&key, "mt.1.1.short@e"), OwnId::NotOurs);
        assert_ne!(
            outbound_id(&key, 42, "1", "d"),
            outbound_id(&key, 42, "2", "d")
        );
    }

    proptest! {
        #[test]
        fn keyed_ids_round_trip(key in prop::collection::vec(any::<u8>(), 1..64),
                                t in 1i64..i64::MAX, nonce in "[a-z0-9]{1,20}") {
            let id = outbound_id(&key, t, &nonce, "example.com");
            prop_assert_eq!(verify_own_id(&key, &id), OwnId::Valid(t));
        }
    }
}
