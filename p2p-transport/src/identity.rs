//! Server name ⇄ libp2p `PeerId`, both ways, as pure functions (DESIGN.md §2).
//!
//! * Server name: the 32-byte ed25519 public key as 64 lowercase hex characters.
//! * `PeerId`: libp2p's identity multihash of the protobuf-encoded public key. ed25519
//!   keys are short enough that libp2p inlines them instead of hashing them, so the key
//!   can be read back out of the `PeerId`; such ids print as `12D3KooW…`.
//!
//! Anything else — a name that is not exactly 64 lowercase hex characters, 64 hex
//! characters that are not an ed25519 point, a `PeerId` of another key type or a hashed
//! one — is not a Warren P2P node, and is rejected with an [`AddressError`] that says why.

use libp2p_identity::{Keypair, PeerId, ed25519};

/// Length of a P2P server name: the hex form of a 32-byte ed25519 public key.
pub const SERVER_NAME_LEN: usize = 64;

/// The first bytes of every ed25519 `PeerId`, before the 32 key bytes.
///
/// Multihash header: code `0x00` (identity: the digest is the input itself), digest
/// length 36. Digest: the libp2p `PublicKey` protobuf — field 1 `Type` = 1 (Ed25519),
/// field 2 `Data` of length 32. libp2p inlines any encoded key of up to 42 bytes this way
/// instead of hashing it, which is what makes the mapping reversible.
const ED25519_PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// Why a server name or `PeerId` does not denote a Warren P2P node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The name is not 64 characters long.
    #[error(
        "server name {name:?} is not a P2P server name: expected {SERVER_NAME_LEN} lowercase \
         hex characters (an ed25519 public key), got {len} characters"
    )]
    WrongLength {
        /// The offending name, shortened if very long.
        name: String,
        /// Its length in characters.
        len: usize,
    },
    /// The name has the right length but contains something other than `0-9a-f`.
    #[error(
        "server name {name:?} is not a P2P server name: character {character:?} at position \
         {position} is not a lowercase hex digit (0-9, a-f)"
    )]
    NotLowercaseHex {
        /// The offending name, shortened if very long.
        name: String,
        /// Zero-based character position of the first bad character.
        position: usize,
        /// The first bad character.
        character: char,
    },
    /// 64 lowercase hex characters, but the 32 bytes are not a valid ed25519 public key.
    #[error("server name {name:?} is not a P2P server name: it is not a valid ed25519 public key")]
    InvalidKey {
        /// The offending name.
        name: String,
    },
    /// The `PeerId` does not embed an ed25519 public key.
    #[error(
        "peer id {peer} has no Warren server name: only ed25519 peer ids (which embed the \
         public key and start with \"12D3KooW\") map to server names"
    )]
    NotEd25519PeerId {
        /// The peer id in its usual base58 form.
        peer: String,
    },
}

/// The `PeerId` of the node whose ed25519 public key is `pk`.
///
/// This is exactly what libp2p derives for that key (an identity multihash of the
/// protobuf-encoded key), computed without decoding the point, so it is total. For keys
/// that come from outside the process prefer [`peer_id_for_server_name`], which also
/// checks that the bytes are a valid ed25519 key.
pub fn peer_id_from_public_key(pk: &[u8; 32]) -> PeerId {
    let mut bytes = Vec::with_capacity(ED25519_PEER_ID_PREFIX.len() + pk.len());
    bytes.extend_from_slice(&ED25519_PEER_ID_PREFIX);
    bytes.extend_from_slice(pk);
    match PeerId::from_bytes(&bytes) {
        Ok(peer) => peer,
        // An identity multihash with a 36-byte digest is always a valid `PeerId`
        // (libp2p inlines digests up to 42 bytes); the tests pin this.
        Err(e) => unreachable!("identity multihash of an ed25519 key rejected: {e}"),
    }
}

/// Parse a P2P server name into the ed25519 public key it spells.
///
/// The name must be exactly 64 lowercase hex characters, and the 32 bytes must be a
/// valid ed25519 public key.
pub fn public_key_from_server_name(name: &str) -> Result<[u8; 32], AddressError> {
    let len = name.chars().count();
    if len != SERVER_NAME_LEN {
        return Err(AddressError::WrongLength {
            name: shorten(name),
            len,
        });
    }
    if let Some((position, character)) = name
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
    {
        return Err(AddressError::NotLowercaseHex {
            name: shorten(name),
            position,
            character,
        });
    }
    let mut pk = [0u8; 32];
    // Exactly 64 ASCII hex digits by now, so decoding cannot fail; map the error anyway.
    hex::decode_to_slice(name, &mut pk).map_err(|_| AddressError::InvalidKey {
        name: name.to_owned(),
    })?;
    if ed25519::PublicKey::try_from_bytes(&pk).is_err() {
        return Err(AddressError::InvalidKey {
            name: name.to_owned(),
        });
    }
    Ok(pk)
}

/// The `PeerId` of the P2P node called `name`.
pub fn peer_id_for_server_name(name: &str) -> Result<PeerId, AddressError> {
    public_key_from_server_name(name).map(|pk| peer_id_from_public_key(&pk))
}

/// The server name of the node behind `peer`.
///
/// Only ed25519 peer ids qualify: they carry the key inline (identity multihash), so the
/// name can be read out of them. Hashed peer ids and other key types are rejected.
pub fn server_name_for_peer_id(peer: &PeerId) -> Result<String, AddressError> {
    let not_ed25519 = || AddressError::NotEd25519PeerId {
        peer: peer.to_base58(),
    };
    // Exactly the canonical encoding, so the mapping stays a bijection: a hashed id, another
    // key type, or a different protobuf encoding of the same key is not accepted.
    let bytes = peer.to_bytes();
    let key = bytes
        .strip_prefix(ED25519_PEER_ID_PREFIX.as_slice())
        .ok_or_else(not_ed25519)?;
    let pk: [u8; 32] = key.try_into().map_err(|_| not_ed25519())?;
    if ed25519::PublicKey::try_from_bytes(&pk).is_err() {
        return Err(not_ed25519());
    }
    Ok(hex::encode(pk))
}

/// The libp2p keypair for the node whose ed25519 secret seed is `seed`.
///
/// Its public key is the node's Matrix signing key, so its `PeerId` is
/// `peer_id_from_public_key(&identity.public_key())`.
pub fn keypair_from_seed(seed: [u8; 32]) -> Keypair {
    let mut seed = seed;
    // `ed25519_from_bytes` zeroes the buffer it is given.
    match Keypair::ed25519_from_bytes(&mut seed) {
        Ok(keypair) => keypair,
        // Any 32 bytes are a valid ed25519 seed; only a wrong length is rejected.
        Err(e) => unreachable!("a 32-byte ed25519 seed was rejected: {e}"),
    }
}

/// At most 80 characters of `name`, for error messages about untrusted input.
fn shorten(name: &str) -> String {
    const MAX: usize = 80;
    if name.chars().count() <= MAX {
        name.to_owned()
    } else {
        let mut short: String = name.chars().take(MAX).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(n: u8) -> [u8; 32] {
        let mut s = [0u8; 32];
        for (i, b) in s.iter_mut().enumerate() {
            *b = n.wrapping_mul(31).wrapping_add(i as u8);
        }
        s
    }

    fn dalek_public(seed: [u8; 32]) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes()
    }

    #[test]
    fn keypair_from_seed_matches_ed25519_dalek() {
        for n in 0..8 {
            let keypair = keypair_from_seed(seed(n));
            let Ok(public) = keypair.public().try_into_ed25519() else {
                panic!("keypair_from_seed must give an ed25519 keypair");
            };
            assert_eq!(public.to_bytes(), dalek_public(seed(n)));
        }
    }

    #[test]
    fn peer_id_matches_libp2p_derivation() {
        for n in 0..8 {
            let keypair = keypair_from_seed(seed(n));
            let pk = dalek_public(seed(n));
            let peer = peer_id_from_public_key(&pk);
            assert_eq!(peer, keypair.public().to_peer_id());
            assert!(peer.to_base58().starts_with("12D3KooW"), "{peer}");
        }
    }

    #[test]
    fn round_trip_server_name_to_peer_id_and_back() {
        for n in 0..8 {
            let name = hex::encode(dalek_public(seed(n)));
            let Ok(peer) = peer_id_for_server_name(&name) else {
                panic!("valid server name rejected: {name}");
            };
            assert_eq!(server_name_for_peer_id(&peer).as_deref(), Ok(name.as_str()));
            assert_eq!(
                public_key_from_server_name(&name),
                Ok(dalek_public(seed(n)))
            );
        }
    }

    #[test]
    fn round_trip_peer_id_to_server_name_and_back() {
        for n in 0..8 {
            let peer = keypair_from_seed(seed(n)).public().to_peer_id();
            let Ok(name) = server_name_for_peer_id(&peer) else {
                panic!("ed25519 peer id rejected: {peer}");
            };
            assert_eq!(name.len(), SERVER_NAME_LEN);
            assert_eq!(peer_id_for_server_name(&name), Ok(peer));
            // And through the textual form a peer would be given on a command line.
            let Ok(parsed) = peer.to_base58().parse::<PeerId>() else {
                panic!("base58 peer id did not parse");
            };
            assert_eq!(server_name_for_peer_id(&parsed), Ok(name));
        }
    }

    #[test]
    fn rejects_uppercase() {
        let name = hex::encode(dalek_public(seed(1))).to_uppercase();
        assert!(matches!(
            peer_id_for_server_name(&name),
            Err(AddressError::NotLowercaseHex { .. })
        ));
        // One uppercase letter is enough.
        let mut name = hex::encode(dalek_public(seed(1)));
        let Some(pos) = name.find(|c: char| c.is_ascii_alphabetic()) else {
            panic!("test key has no letters");
        };
        let upper = name[pos..=pos].to_uppercase();
        name.replace_range(pos..=pos, &upper);
        let err = peer_id_for_server_name(&name);
        assert!(
            matches!(err, Err(AddressError::NotLowercaseHex { position, .. }) if position == pos),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_wrong_lengths() {
        let name = hex::encode(dalek_public(seed(2)));
        for bad in [&name[..63], "", &name[..2]] {
            assert!(
                matches!(
                    peer_id_for_server_name(bad),
                    Err(AddressError::WrongLength { len, .. }) if len == bad.len()
                ),
                "{bad:?}"
            );
        }
        let long = format!("{name}0");
        assert!(matches!(
            peer_id_for_server_name(&long),
            Err(AddressError::WrongLength { len: 65, .. })
        ));
    }

    #[test]
    fn rejects_non_hex_and_dns_names() {
        let name = hex::encode(dalek_public(seed(3)));
        let bad = format!("{}g", &name[..63]);
        assert!(matches!(
            peer_id_for_server_name(&bad),
            Err(AddressError::NotLowercaseHex {
                position: 63,
                character: 'g',
                ..
            })
        ));
        let err = peer_id_for_server_name("matrix.org");
        assert!(matches!(err, Err(AddressError::WrongLength { .. })));
        // 64 bytes but not 64 characters, and 64 characters but not all ASCII.
        let multibyte = format!("é{}", &name[..62]);
        assert_eq!(multibyte.len(), 64);
        assert!(matches!(
            peer_id_for_server_name(&multibyte),
            Err(AddressError::WrongLength { len: 63, .. })
        ));
        let wide = format!("é{}", &name[..63]);
        assert!(matches!(
            peer_id_for_server_name(&wide),
            Err(AddressError::NotLowercaseHex {
                position: 0,
                character: 'é',
                ..
            })
        ));
    }

    #[test]
    fn rejects_hex_that_is_not_an_ed25519_key() {
        // About half of all 32-byte strings do not decompress to a curve point.
        let invalid = (0..=255u8)
            .map(|b| [b; 32])
            .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err());
        let Some(invalid) = invalid else {
            panic!("no invalid ed25519 encoding among the test candidates");
        };
        let name = hex::encode(invalid);
        assert!(matches!(
            peer_id_for_server_name(&name),
            Err(AddressError::InvalidKey { .. })
        ));
    }

    #[test]
    fn rejects_peer_ids_without_an_ed25519_key() {
        // A hashed (sha2-256) peer id, as RSA keys get.
        let mut hashed = vec![0x12, 0x20];
        hashed.extend_from_slice(&[7u8; 32]);
        let Ok(hashed) = PeerId::from_bytes(&hashed) else {
            panic!("sha2-256 multihash is a valid peer id");
        };
        assert!(matches!(
            server_name_for_peer_id(&hashed),
            Err(AddressError::NotEd25519PeerId { .. })
        ));
        // An identity multihash whose digest is not a public key protobuf.
        let mut garbage = vec![0x00, 0x24];
        garbage.extend_from_slice(&[0xffu8; 36]);
        let Ok(garbage) = PeerId::from_bytes(&garbage) else {
            panic!("identity multihash is a valid peer id");
        };
        assert!(matches!(
            server_name_for_peer_id(&garbage),
            Err(AddressError::NotEd25519PeerId { .. })
        ));
    }

    #[test]
    fn rejects_peer_id_embedding_an_invalid_point() {
        let invalid = (0..=255u8)
            .map(|b| [b; 32])
            .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err());
        let Some(invalid) = invalid else {
            panic!("no invalid ed25519 encoding among the test candidates");
        };
        let peer = peer_id_from_public_key(&invalid);
        assert!(matches!(
            server_name_for_peer_id(&peer),
            Err(AddressError::NotEd25519PeerId { .. })
        ));
    }

    #[test]
    fn errors_are_one_readable_line() {
        let long = "x".repeat(10_000);
        let Err(err) = peer_id_for_server_name(&long) else {
            panic!("long name accepted");
        };
        let text = err.to_string();
        assert!(!text.contains('\n'));
        assert!(text.len() < 300, "{text}");
        assert!(text.contains("10000 characters"), "{text}");
    }
}
