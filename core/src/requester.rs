//! Who is asking: the domain requester that services take.
//!
//! Services (`sync`, `search`, `e2ee`, …) act for a [`Requester`], never for an HTTP
//! request: the client API's `Auth` extractor builds one from an access token or an
//! appservice's `as_token`, and other entry points (the mobile API, tests, benches)
//! build one directly. This module depends on nothing above the services.

use std::sync::Arc;

/// The user (and device) a service acts for.
#[derive(Clone, Debug)]
pub struct Requester {
    /// `@user:server`.
    pub user_id: String,
    /// The device acting (empty for an appservice acting without a device).
    pub device_id: String,
    /// The application service acting as `user_id`, if one is.
    pub appservice: Option<Arc<crate::appservice::Registered>>,
    /// The node itself acts for the user (account deactivation, the admin API): no rate
    /// limit applies, as none applies to what an operator asks.
    pub by_node: bool,
}

impl Requester {
    /// A user acting through one of their devices.
    pub fn user(user_id: impl Into<String>, device_id: impl Into<String>) -> Requester {
        Requester {
            user_id: user_id.into(),
            device_id: device_id.into(),
            appservice: None,
            by_node: false,
        }
    }

    /// The node acting for `user_id` (no device, no rate limits).
    pub fn node_acting_for(user_id: impl Into<String>) -> Requester {
        Requester {
            by_node: true,
            ..Requester::user(user_id, "")
        }
    }

    /// How events are rendered for this requester (its transaction ids, room ids
    /// included).
    pub fn event_options(&self) -> crate::events::ClientEventOptions<'_> {
        crate::events::ClientEventOptions {
            viewer: Some((&self.user_id, &self.device_id)),
            include_room_id: true,
            now_ms: crate::storage::now_ms(),
        }
    }

    /// Whether rate limits apply (not to an appservice registered with
    /// `rate_limited: false`, nor to the node acting for a user).
    pub fn rate_limited(&self) -> bool {
        !self.by_node && self.appservice.as_ref().is_none_or(|a| a.rate_limited)
    }
}

#[cfg(test)]
mod tests {
    use super::Requester;

    /// Deactivation leaves every room through the node acting for the user: a user in
    /// many rooms must not run into the message rate limit half way.
    #[test]
    fn only_the_node_acting_for_a_user_skips_rate_limits() {
        assert!(Requester::user("@a:x", "D").rate_limited());
        let node = Requester::node_acting_for("@a:x");
        assert!(!node.rate_limited());
        assert_eq!(
            (node.user_id.as_str(), node.device_id.as_str()),
            ("@a:x", "")
        );
    }
}
