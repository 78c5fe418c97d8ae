//! The one error type of the API.

use warren_core::StartError;

/// Why a call failed. Every variant carries a one-line, human-readable message.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum WarrenError {
    /// The configuration or an argument was rejected (bad multiaddr, empty data
    /// directory, bad log filter, invalid user name, …).
    #[error("{message}")]
    InvalidArgument {
        /// What was wrong.
        message: String,
    },
    /// The data directory cannot be created, read or written, or another node holds it.
    #[error("{message}")]
    DataDir {
        /// What went wrong.
        message: String,
    },
    /// The client API port (or a P2P listen address) is taken or cannot be bound.
    #[error("{message}")]
    AddressInUse {
        /// Which address.
        message: String,
    },
    /// The node could not start for another reason (newer database, transport, …).
    #[error("{message}")]
    Start {
        /// What went wrong.
        message: String,
    },
    /// Wrong password, or the account is deactivated.
    #[error("{message}")]
    Auth {
        /// Why the sign-in was refused.
        message: String,
    },
    /// Reaching another node failed.
    #[error("{message}")]
    Network {
        /// What failed.
        message: String,
    },
    /// The node has been stopped; start a new one.
    #[error("the node is stopped")]
    Stopped,
    /// Anything else (a database error, a task that failed).
    #[error("{message}")]
    Internal {
        /// What went wrong.
        message: String,
    },
}

impl WarrenError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        WarrenError::InvalidArgument {
            message: message.into(),
        }
    }

    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        WarrenError::Internal {
            message: message.to_string(),
        }
    }
}

impl From<StartError> for WarrenError {
    fn from(e: StartError) -> Self {
        let message = e.to_string();
        match e {
            StartError::Locked(_) | StartError::Key(..) => WarrenError::DataDir { message },
            StartError::AddrInUse(_) => WarrenError::AddressInUse { message },
            StartError::Bind(..) => WarrenError::AddressInUse { message },
            // Start-up I/O failures (creating the directory, the lock file, the
            // database) all come through as `Other`.
            StartError::Other(_) => WarrenError::DataDir { message },
            StartError::NewerDatabase { .. } => WarrenError::Start { message },
        }
    }
}

impl From<warren_core::Error> for WarrenError {
    fn from(e: warren_core::Error) -> Self {
        WarrenError::internal(e)
    }
}

impl From<warren_p2p::P2pError> for WarrenError {
    fn from(e: warren_p2p::P2pError) -> Self {
        use warren_p2p::P2pError;
        let message = e.to_string();
        match e {
            P2pError::Config(_) => WarrenError::InvalidArgument { message },
            P2pError::Start(_) => WarrenError::Start { message },
            P2pError::Dial(_) => WarrenError::Network { message },
            P2pError::ShutDown => WarrenError::Stopped,
        }
    }
}
