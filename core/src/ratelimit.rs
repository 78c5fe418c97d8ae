//! Rate limits: token buckets per (action, key), as Synapse's `rc_*` settings.
//!
//! Each action has a sustained rate and a burst. A key (a user id, a device, a client
//! address, a peer's server name) starts with a full bucket of `burst` tokens that
//! refills at `per_second`; an action takes one token (or `cost`), and an empty bucket
//! answers `429 M_LIMIT_EXCEEDED` with `retry_after_ms` (the time until enough tokens are
//! back). Defaults are far above what a person or a well-behaved client does, and far
//! below what exhausts a phone.
//!
//! The bucket table is bounded ([`MAX_KEYS`]): when it is full, buckets that have
//! refilled (they carry no information) go first, then the least recently used. A key
//! whose bucket was evicted starts full again; an attacker cycling keys gains at most the
//! burst of each new key, which per-address and per-peer limits already bound.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most buckets kept at once (across all actions); a bucket is under 100 bytes.
pub const MAX_KEYS: usize = 16_384;

/// A sustained rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size: how many actions may happen at once after a quiet spell.
    pub burst: f64,
}

impl Rate {
    /// `per_second` sustained, `burst` at once.
    pub const fn new(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }
}

/// What is being limited. Each has its own setting in [`RateLimits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Events sent by a local user (messages, state, redactions), per user.
    Message,
    /// Login attempts, per client address.
    LoginAddress,
    /// Login attempts, per account.
    LoginAccount,
    /// Failed logins, per account (checked before the password is hashed).
    LoginFailed,
    /// Registrations, per client address.
    Registration,
    /// Room joins (local and remote), per user.
    Join,
    /// Invites sent, per user.
    Invite,
    /// Rooms created (and upgraded), per user.
    RoomCreation,
    /// Media uploads, per user.
    MediaUpload,
    /// Inbound federation requests, per peer; a transaction costs one token plus one per
    /// PDU and EDU it carries.
    Federation,
    /// Invites arriving from a peer, per peer.
    FederationInvite,
}

impl Action {
    /// Every action, in the order of [`Action::name`]'s table.
    pub const ALL: [Action; 11] = [
        Action::Message,
        Action::LoginAddress,
        Action::LoginAccount,
        Action::LoginFailed,
        Action::Registration,
        Action::Join,
        Action::Invite,
        Action::RoomCreation,
        Action::MediaUpload,
        Action::Federation,
        Action::FederationInvite,
    ];

    /// The action's key in `warren.toml`'s `[rate_limits]` table.
    pub fn name(self) -> &'static str {
        match self {
            Action::Message => "message",
            Action::LoginAddress => "login_address",
            Action::LoginAccount => "login_account",
            Action::LoginFailed => "login_failed",
            Action::Registration => "registration",
            Action::Join => "join",
            Action::Invite => "invite",
            Action::RoomCreation => "room_creation",
            Action::MediaUpload => "media_upload",
            Action::Federation => "federation",
            Action::FederationInvite => "federation_invite",
        }
    }

    /// The action a `[rate_limits]` key names.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The configured rates, one per [`Action`]; `None` turns an action's limit off.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimits {
    rates: [Option<Rate>; Action::ALL.len()],
}

impl Default for RateLimits {
    /// Limits no person or ordinary client reaches (a bot sending hundreds of messages
    /// in a burst does not either, nor ten load-test senders at ~60/s each), that still
    /// stop a runaway sender within seconds. The
    /// login and registration limits are per address: every app on the device shares
    /// 127.0.0.1, so they are far looser than Synapse's (which sees one user per address).
    fn default() -> Self {
        let mut limits = RateLimits::off();
        for (action, per_second, burst) in [
            (Action::Message, 100.0, 1000.0),
            (Action::LoginAddress, 1.0, 30.0),
            (Action::LoginAccount, 0.5, 20.0),
            (Action::LoginFailed, 0.1, 5.0),
            (Action::Registration, 1.0, 100.0),
            (Action::Join, 2.0, 50.0),
            (Action::Invite, 2.0, 50.0),
            (Action::RoomCreation, 2.0, 100.0),
            (Action::MediaUpload, 5.0, 100.0),
            (Action::Federation, 500.0, 5_000.0),
            (Action::FederationInvite, 0.5, 20.0),
        ] {
            limits.set(action, Some(Rate::new(per_second, burst)));
        }
        limits
    }
}

impl RateLimits {
    /// Every limit off (benchmarks, or a node whose only client is trusted).
    pub fn off() -> RateLimits {
        RateLimits {
            rates: [None; Action::ALL.len()],
        }
    }

    /// The rate of `action`, if it is limited.
    pub fn rate(&self, action: Action) -> Option<Rate> {
        self.rates[action as usize]
    }

    /// Set the rate of `action` (`None`: unlimited).
    pub fn set(&mut self, action: Action, rate: Option<Rate>) {
        self.rates[action as usize] = rate;
    }
}

/// A refused action: try again after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// Time until the bucket holds enough tokens again.
    pub retry_after: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Tokens now, after refilling since `at`.
    fn level(&self, rate: Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }
}

/// The buckets of one node.
pub struct Limiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<(Action, String), Bucket>>,
    max_keys: usize,
}

impl Limiter {
    /// Buckets for `limits`, at most [`MAX_KEYS`] of them.
    pub fn new(limits: RateLimits) -> Limiter {
        Limiter::with_capacity(limits, MAX_KEYS)
    }

    /// Buckets for `limits`, at most `max_keys` of them.
    pub fn with_capacity(limits: RateLimits, max_keys: usize) -> Limiter {
        Limiter {
            limits,
            buckets: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// The configured limits.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Take `cost` tokens for `action` by `key`, or say how long to wait.
    pub fn take(&self, action: Action, key: &str, cost: f64) -> Result<(), Limited> {
        self.take_at(action, key, cost, Instant::now())
    }

    /// Whether `action` by `key` would be allowed now, without taking anything (for
    /// limits counted only when the action fails, such as failed logins).
    pub fn check(&self, action: Action, key: &str) -> Result<(), Limited> {
        let Some(rate) = self.limits.rate(action) else {
            return Ok(());
        };
        let now = Instant::now();
        let buckets = self.buckets.lock();
        match buckets.get(&(action, key.to_owned())) {
            Some(b) => refuse_below(rate, b.level(rate, now), 1.0),
            None => Ok(()),
        }
    }

    /// [`Limiter::take`] at a given time (tests drive the clock).
    pub fn take_at(
        &self,
        action: Action,
        key: &str,
        cost: f64,
        now: Instant,
    ) -> Result<(), Limited> {
        let Some(rate) = self.limits.rate(action) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock();
        let id = (action, key.to_owned());
        if !buckets.contains_key(&id) && buckets.len() >= self.max_keys {
            evict(&mut buckets, &self.limits, now, self.max_keys);
        }
        let bucket = buckets.entry(id).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let level = bucket.level(rate, now);
        refuse_below(rate, level, cost)?;
        *bucket = Bucket {
            tokens: level - cost,
            at: now,
        };
        Ok(())
    }

    /// How many buckets are held (for tests and the admin report).
    pub fn len(&self) -> usize {
        self.buckets.lock().len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn refuse_below(rate: Rate, level: f64, cost: f64) -> Result<(), Limited> {
    // A cost above the burst could never be paid; charge it as a full bucket instead.
    let cost = cost.min(rate.burst);
    if level >= cost {
        return Ok(());
    }
    let wait = if rate.per_second > 0.0 {
        (cost - level) / rate.per_second
    } else {
        // Rate zero: the burst is all there is, refused for good. Say an hour.
        3600.0
    };
    Err(Limited {
        retry_after: Duration::from_secs_f64(wait.min(3600.0)).max(Duration::from_millis(1)),
    })
}

/// Make room for one more bucket: drop every bucket that has refilled; if that frees
/// nothing, drop the least recently used quarter.
fn evict(
    buckets: &mut HashMap<(Action, String), Bucket>,
    limits: &RateLimits,
    now: Instant,
    max_keys: usize,
) {
    buckets.retain(|(action, _), b| {
        limits
            .rate(*action)
            .is_some_and(|rate| b.level(rate, now) < rate.burst)
    });
    if buckets.len() < max_keys {
        return;
    }
    let mut ages: Vec<Instant> = buckets.values().map(|b| b.at).collect();
    let quarter = (ages.len() / 4).max(1);
    let (_, cutoff, _) = ages.select_nth_unstable(quarter - 1);
    let cutoff = *cutoff;
    buckets.retain(|_, b| b.at > cutoff);
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_action_has_its_own_name_and_slot() {
        let mut names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len());
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.name()), Some(a));
            let mut limits = RateLimits::off();
            limits.set(a, Some(Rate::new(1.0, 2.0)));
            for b in Action::ALL {
                assert_eq!(limits.rate(b).is_some(), a == b, "{a:?} / {b:?}");
            }
            assert!(
                RateLimits::default().rate(a).is_some(),
                "{a:?} has no default"
            );
        }
        assert_eq!(Action::from_name("mesage"), None);
    }

    use super::*;

    fn one(rate: Rate) -> Limiter {
        let mut limits = RateLimits::off();
        limits.set(Action::Message, Some(rate));
        Limiter::new(limits)
    }

    #[test]
    fn burst_then_refusal_then_refill() {
        let l = one(Rate::new(2.0, 3.0));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take_at(Action::Message, "@a:x", 1.0, t0).is_ok());
        }
        let refused = l
            .take_at(Action::Message, "@a:x", 1.0, t0)
            .expect_err("refused");
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        // Another key has its own bucket.
        assert!(l.take_at(Action::Message, "@b:x", 1.0, t0).is_ok());
        // Half a second refills one token at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.take_at(Action::Message, "@a:x", 1.0, t1).is_ok());
        assert!(l.take_at(Action::Message, "@a:x", 1.0, t1).is_err());
    }

    #[test]
    fn unlimited_actions_pass_and_keep_no_bucket() {
        let l = Limiter::new(RateLimits::off());
        for _ in 0..1000 {
            assert!(l.take(Action::Join, "@a:x", 1.0).is_ok());
        }
        assert!(l.is_empty());
    }

    #[test]
    fn check_does_not_take() {
        let l = one(Rate::new(0.0, 1.0));
        assert!(l.check(Action::Message, "k").is_ok());
        assert!(l.check(Action::Message, "k").is_ok());
        assert!(l.take(Action::Message, "k", 1.0).is_ok());
        let refused = l.check(Action::Message, "k").expect_err("refused");
        assert_eq!(refused.retry_after, Duration::from_secs(3600));
    }

    #[test]
    fn costs_above_the_burst_are_capped() {
        let l = one(Rate::new(1.0, 10.0));
        let t0 = Instant::now();
        assert!(l.take_at(Action::Message, "k", 50.0, t0).is_ok());
        assert!(l.take_at(Action::Message, "k", 1.0, t0).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_keeps_busy_keys() {
        let mut limits = RateLimits::off();
        limits.set(Action::Message, Some(Rate::new(1.0, 2.0)));
        let l = Limiter::with_capacity(limits, 100);
        let t0 = Instant::now();
        // An exhausted key, then many keys that each take a token.
        l.take_at(Action::Message, "busy", 2.0, t0).expect("ok");
        for i in 0..1000 {
            let t = t0 + Duration::from_micros(i);
            let _ = l.take_at(Action::Message, &format!("k{i}"), 1.0, t);
            assert!(l.len() <= 100);
        }
        assert!(l.len() <= 100);
        // A key that had refilled is dropped before one that has not.
        let later = t0 + Duration::from_secs(10);
        l.take_at(Action::Message, "fresh", 2.0, later).expect("ok");
        assert!(l.take_at(Action::Message, "fresh", 1.0, later).is_err());
    }
}
