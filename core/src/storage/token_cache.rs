//! The owners of access tokens looked up lately, so that an authenticated request does
//! not open a read transaction of its own just to learn who sent it.
//!
//! Every request with a token reads its owner (user, device, whether the account is
//! deactivated, when the token expires). On a reader that read comes right after some
//! write most of the time, and SQLite then drops the reader's whole page cache: the
//! token's index, the users table and the refresh tokens are read from the file again,
//! a twentieth of a send's time. So owners are kept here, each with the generation of
//! the token tables it was read at:
//!
//! - The writer connection's update hook ([`super::effects`]) marks every write that
//!   changes or deletes an access token, a refresh token, a device or a user (logout,
//!   device deletion and its cascades, deactivation, refresh). Once such a write has
//!   committed, and before it returns to its caller, [`TokenCache::invalidate`] moves
//!   the generation on, which makes every kept owner stale. A logout's answer is sent
//!   only after its token stopped working.
//! - A lookup takes the generation before it reads. An owner read on a snapshot older
//!   than a write that then invalidates is kept with the older generation, so it is
//!   stale as soon as it is kept.
//!
//! Expiry is checked by the caller on every request (the owner carries `expires_ts`),
//! unknown tokens are never kept (a client guessing tokens evicts nothing), and an owner
//! whose first use has a write to do (a refreshed pair replacing an older one) is not
//! kept until that write is done.
//!
//! Bounds: [`MAX_TOKENS`] owners, [`MAX_BYTES`] bytes, least recently used dropped
//! first.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::users::TokenOwner;
use crate::error::Error;
use crate::lru::Lru;

/// Most token owners kept.
pub const MAX_TOKENS: usize = 4_096;

/// Most bytes of token owners kept (their strings and the token).
const MAX_BYTES: usize = 1 << 20;

/// What each kept owner costs beyond its strings (the entry, the map's slot).
const ENTRY_BYTES: usize = 128;

/// Token owners by token, each with the generation it was read at.
pub(super) struct TokenCache {
    generation: AtomicU64,
    owners: Mutex<Lru<String, (u64, TokenOwner)>>,
}

impl TokenCache {
    pub(super) fn new() -> TokenCache {
        TokenCache {
            generation: AtomicU64::new(0),
            owners: Mutex::new(Lru::new(MAX_TOKENS, MAX_BYTES)),
        }
    }

    /// The owner of `token`: kept if current, else `read` (from the database) and kept.
    pub(super) fn owner(
        &self,
        token: &str,
        read: impl FnOnce() -> Result<Option<TokenOwner>, Error>,
    ) -> Result<Option<TokenOwner>, Error> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some((at, owner)) = self.owners.lock().get(token)
            && *at == generation
        {
            return Ok(Some(owner.clone()));
        }
        let owner = read()?;
        if let Some(o) = owner.as_ref().filter(|o| o.replaces.is_none()) {
            let bytes = ENTRY_BYTES
                + token.len()
                + o.user_id.len()
                + o.device_id.len()
                + o.refresh_token.as_ref().map_or(0, String::len);
            self.owners
                .lock()
                .put(token.to_owned(), (generation, o.clone()), bytes);
        }
        Ok(owner)
    }

    /// A committed write changed tokens, devices or users: every owner kept is stale.
    pub(super) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// How many owners are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.owners.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Db, users};
    use super::MAX_TOKENS;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("warren.db")).expect("open");
        (dir, db)
    }

    /// `@a:x` with devices `D1` and `D2`, signed in with tokens `t1` and `t2`.
    fn signed_in(db: &Db) {
        db.write(|c| {
            users::create_user(c, "@a:x", None, false, "a")?;
            users::start_session(c, "@a:x", "D1", None, "t1")?;
            users::start_session(c, "@a:x", "D2", None, "t2")
        })
        .expect("sign in");
    }

    fn device_of(db: &Db, token: &str) -> Option<String> {
        db.token_owner(token).expect("lookup").map(|o| o.device_id)
    }

    #[test]
    fn a_kept_owner_is_answered_without_a_read_until_tokens_change() {
        let (_dir, db) = db();
        signed_in(&db);
        assert_eq!(device_of(&db, "t1").as_deref(), Some("D1"));
        assert_eq!(db.tokens.len(), 1);
        // Kept: the lookup does not read (a read that fails would say so).
        let kept = db
            .tokens
            .owner("t1", || panic!("read although kept"))
            .expect("kept");
        assert_eq!(kept.map(|o| o.user_id).as_deref(), Some("@a:x"));
        // A write that changes no token leaves it kept.
        db.write(|c| users::save_filter(c, "@a:x", "{}").map(|_| ()))
            .expect("filter");
        db.tokens
            .owner("t1", || panic!("read although nothing changed"))
            .expect("kept");
    }

    #[test]
    fn logout_device_deletion_and_deactivation_end_kept_tokens_at_once() {
        let (_dir, db) = db();
        signed_in(&db);
        assert!(device_of(&db, "t1").is_some());
        assert!(device_of(&db, "t2").is_some());
        db.write(|c| users::delete_token(c, "t1")).expect("logout");
        assert_eq!(device_of(&db, "t1"), None, "logged out");
        assert!(device_of(&db, "t2").is_some());
        db.write(|c| users::delete_device(c, "@a:x", "D2").map(|_| ()))
            .expect("delete device");
        assert_eq!(device_of(&db, "t2"), None, "device deleted");
        db.write(|c| users::start_session(c, "@a:x", "D3", None, "t3"))
            .expect("sign in again");
        assert!(
            !db.token_owner("t3")
                .expect("lookup")
                .expect("owner")
                .deactivated
        );
        db.write(|c| users::deactivate_user(c, "@a:x"))
            .expect("deactivate");
        let owner = db.token_owner("t3").expect("lookup").expect("owner");
        assert!(owner.deactivated, "seen as deactivated at once");
    }

    #[test]
    fn a_device_deleted_through_its_foreign_keys_ends_its_tokens() {
        let (_dir, db) = db();
        signed_in(&db);
        assert!(device_of(&db, "t1").is_some());
        // The cascade alone (no statement naming the tokens) must end the kept owner.
        db.write(|c| {
            c.execute(
                "DELETE FROM devices WHERE user_id = '@a:x' AND device_id = 'D1'",
                [],
            )?;
            Ok(())
        })
        .expect("delete");
        assert_eq!(device_of(&db, "t1"), None);
    }

    #[test]
    fn an_owner_read_before_a_logout_commits_is_not_kept_as_current() {
        let (_dir, db) = db();
        signed_in(&db);
        // The read sees the token (its snapshot predates the logout), the logout
        // commits and invalidates before the read's owner is kept.
        let owner = db
            .tokens
            .owner("t1", || {
                let seen = db.read(|c| users::token_owner(c, "t1"));
                db.write(|c| users::delete_token(c, "t1")).expect("logout");
                seen
            })
            .expect("lookup");
        assert!(owner.is_some(), "the read's own answer");
        assert_eq!(device_of(&db, "t1"), None, "not kept as current");
    }

    #[test]
    fn unknown_tokens_are_not_kept_and_the_owners_kept_are_bounded() {
        let (_dir, db) = db();
        signed_in(&db);
        for i in 0..100 {
            assert_eq!(device_of(&db, &format!("guess{i}")), None);
        }
        assert_eq!(db.tokens.len(), 0);
        let n = MAX_TOKENS + 50;
        db.write(|c| {
            for i in 0..n {
                users::insert_token(c, &format!("many{i}"), "@a:x", "D1")?;
            }
            Ok(())
        })
        .expect("tokens");
        for i in 0..n {
            assert_eq!(device_of(&db, &format!("many{i}")).as_deref(), Some("D1"));
        }
        assert_eq!(db.tokens.len(), MAX_TOKENS);
        // The most recent are the ones kept.
        db.tokens
            .owner(&format!("many{}", n - 1), || {
                panic!("the newest was dropped")
            })
            .expect("kept");
    }
}
