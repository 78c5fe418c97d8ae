//! `warren`: run and inspect a Warren node from the command line.
//!
//! Output contract: the human lines on stdout are stable (scripts and the tests in
//! `cli/tests/cli.rs` read them), logs go to stderr, and every failure ends with one line
//! `error: <what went wrong>` on stderr and exit status 1. Usage errors are reported by
//! clap and exit with status 2.

mod bench;
mod config_file;
mod id;
mod logging;
mod manage;
mod notify;
mod output;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's settings for a node that must stay phone-sized (docs/performance.md,
/// "Memory"): hand freed memory back to the system at once instead of after a second
/// (`PURGE_DELAY`), and commit arena memory as it is used, not up front
/// (`ARENA_EAGER_COMMIT`). Measured with `warren bench soak`: peak 121 → 70 MiB, 63 →
/// 45 MiB after the rest, idle 34 → 26 MiB, at the same send rate.
#[cfg(feature = "mimalloc")]
const ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_PURGE_DELAY", "0"),
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
];

/// mimalloc reads its options from the environment when the process starts, before
/// `main`, and setting them later needs `unsafe`. So, once, the process replaces itself
/// (same pid, same arguments, `exec`) with the options in its environment. Values the
/// user set are kept; if `exec` fails the node runs with mimalloc's defaults.
#[cfg(all(feature = "mimalloc", unix))]
fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    const DONE: &str = "WARREN_ALLOCATOR_TUNED";
    if std::env::var_os(DONE).is_some()
        || ALLOCATOR_ENV
            .iter()
            .all(|(k, _)| std::env::var_os(k).is_some())
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args).env(DONE, "1");
    for (k, v) in ALLOCATOR_ENV {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    // Returns only if the exec failed; then carry on as we are.
    let _ = cmd.exec();
}

#[cfg(not(all(feature = "mimalloc", unix)))]
fn tune_allocator() {}

const LONG_ABOUT: &str = "\
Warren is a Matrix homeserver small enough to live on the device it serves.

`warren run` starts a node. On first start it creates an ed25519 key in the data \
directory; the key's public half, written as 64 lowercase hex characters, is the node's \
Matrix server name (so users look like @alice:3f9a…c2) and also its libp2p peer id. The \
node keeps its database in the same directory and serves the standard Matrix \
client-server API on http://127.0.0.1:8008, so any Matrix client (Element, \
matrix-rust-sdk, bots) can log in to it.

Nodes find and reach each other over libp2p (QUIC first, TCP as fallback): mDNS on the \
LAN, a Kademlia DHT seeded by --bootstrap peers, and circuit relays for nodes that \
cannot be reached directly (every node relays for its neighbours unless started with \
--no-relay-server). Rooms spanning nodes are being built.

Quick start:
  warren run           start a node with the defaults (stop it with Ctrl-C)
  warren id            print this node's server name and peer id without starting it

Output: stable `key: value` lines for people and scripts on stdout; logs on stderr \
(RUST_LOG, if set, overrides --log-level); failures print one `error: …` line on stderr \
and exit with status 1. See docs/operations.md for data layout, backups and upgrades.";

const RUN_LONG_ABOUT: &str = "\
Start the node and keep it running until SIGINT (Ctrl-C) or SIGTERM. On a signal it \
finishes in-flight requests, flushes the database and exits with status 0; a second \
signal during that shutdown exits at once with status 1 (the database stays consistent \
and is recovered on the next start).

Once the node is serving, these lines appear on stdout, in this order (stable, scripts \
may rely on them; the `client API:` line comes last):
  server name: <64 lowercase hex characters>
  peer id: <libp2p peer id, 12D3KooW…>
  data dir: <absolute path>
  p2p listen: <multiaddr ending in /p2p/<peer id>>   (one line per address)
  client API: http://<ip>:<port>
Another node can `--bootstrap` from (or, later, `warren connect` to) any `p2p listen:` \
address. On a signal it prints `stopping: <signal> received`, and `stopped` once the node is down.

With --client-addr 127.0.0.1:0 the system picks a free port; read it from the \
`client API:` line. Registration of new users is open while the client API listens on \
a loopback address and closed otherwise.

Only one node may use a data directory at a time; a second one is refused.";

const ID_LONG_ABOUT: &str = "\
Print this node's server name and libp2p peer id without starting the node. If the data \
directory has no key yet, one is created (the same one `warren run` would create), so \
you can learn your server name before the first start.

Human output:
  server name: <64 lowercase hex characters>
  peer id: <libp2p peer id, 12D3KooW…>
  data dir: <absolute path>
With --json, one JSON object: {\"server_name\": …, \"peer_id\": …, \"data_dir\": …}.";

/// A Matrix homeserver that runs on the device it serves.
#[derive(Debug, Parser)]
#[command(name = "warren", version, long_about = LONG_ABOUT, propagate_version = true)]
struct Cli {
    /// The node's data directory: signing key, database, lock file. [default: your
    /// platform's data directory, e.g. ~/.local/share/warren on Linux]
    #[arg(long, global = true, env = "WARREN_DATA_DIR", value_name = "PATH")]
    data_dir: Option<PathBuf>,

    /// Log level (error, warn, info, debug, trace, off) or a full filter such as
    /// `info,warren_core=debug`. RUST_LOG, if set, wins. [default: info, or `log_level`
    /// in warren.toml]
    #[arg(long, global = true, env = "WARREN_LOG_LEVEL", value_name = "LEVEL")]
    log_level: Option<String>,

    /// Log line format on stderr. [default: text, or `log_format` in warren.toml]
    #[arg(long, global = true, value_enum, env = "WARREN_LOG_FORMAT")]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the node and serve the Matrix client API until Ctrl-C or SIGTERM.
    #[command(long_about = RUN_LONG_ABOUT)]
    Run {
        /// Address for the Matrix client-server API. Port 0 picks a free port.
        /// [default: 127.0.0.1:8008, or `client_addr` in warren.toml]
        #[arg(long, env = "WARREN_CLIENT_ADDR", value_name = "IP:PORT")]
        client_addr: Option<SocketAddr>,

        /// Run CMD (through `sh -c`) for each notification of a user of this node, with
        /// the details in environment variables (WARREN_ROOM_NAME, WARREN_SENDER_NAME,
        /// WARREN_BODY, …; see docs/operations.md), never in the command line. At most 4
        /// run at once, each for at most 30 s. [default: `push.on_notify` in warren.toml]
        #[arg(long, env = "WARREN_ON_NOTIFY", value_name = "CMD")]
        on_notify: Option<String>,

        /// An application service registration file (Synapse's YAML format); repeat for
        /// several. Added to `app_service_config_files` in warren.toml.
        #[arg(long = "appservice", value_name = "FILE")]
        appservices: Vec<std::path::PathBuf>,

        #[command(flatten)]
        p2p: run::P2pArgs,
    },
    /// Print the node's server name and libp2p peer id (creates the key if missing).
    #[command(long_about = ID_LONG_ABOUT)]
    Id {
        /// Print one JSON object instead of `key: value` lines.
        #[arg(long)]
        json: bool,
    },
    /// Show the running node's uptime, users, rooms, peers, queues and database size.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List the peers the running node is connected to.
    Peers {
        /// Print a JSON list of objects (peer_id, server_name, addresses, connection,
        /// transport, rtt_ms).
        #[arg(long)]
        json: bool,
    },
    /// Connect the running node to another node's address (a `p2p listen:` line).
    Connect {
        /// A multiaddr, usually ending in /p2p/<peer id>.
        multiaddr: String,
    },
    /// Manage the running node's users.
    #[command(subcommand)]
    User(UserCommand),
    /// Check the configuration file (warren.toml in the data directory).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measure sends, sync, federation, start-up and memory on temporary nodes.
    Bench(bench::BenchArgs),
    /// List the running node's rooms with members and federation state.
    Rooms {
        /// Print a JSON list.
        #[arg(long)]
        json: bool,
    },
    /// The running node's application services (bridges, bots).
    #[command(subcommand)]
    Appservice(AppserviceCommand),
    /// The running node's mailboxes: always-on peers that hold its mail while it is away.
    #[command(subcommand)]
    Mailbox(MailboxCommand),
}

/// `warren mailbox …`.
#[derive(Debug, Subcommand)]
enum MailboxCommand {
    /// Name a peer as a mailbox of this node (its server name, or a multiaddr that is
    /// dialled to learn it); the signed record goes to the peer and to every node this
    /// one shares a room with.
    Add {
        /// A server name (64 hex characters) or a multiaddr.
        mailbox: String,
    },
    /// Stop using a peer as a mailbox.
    Remove {
        /// Its server name.
        server_name: String,
    },
    /// List this node's mailboxes, and the mail it holds for other nodes.
    List {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `warren appservice …`.
#[derive(Debug, Subcommand)]
enum AppserviceCommand {
    /// List the registered application services with their namespaces, how far behind
    /// their transactions are and the last delivery error.
    List {
        /// Print a JSON list.
        #[arg(long)]
        json: bool,
    },
}

/// `warren config …`.
#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Parse warren.toml and report every problem with its key and the allowed values.
    Check,
}

/// `warren user …`: act on the running node's accounts.
#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user.
    Add {
        /// The user name (the part before the colon).
        localpart: String,
        /// The password.
        #[arg(long)]
        password: String,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List {
        /// Print a JSON list.
        #[arg(long)]
        json: bool,
    },
    /// Set a user's password.
    Passwd {
        /// A localpart or full user id.
        user: String,
        /// The new password.
        #[arg(long)]
        password: String,
    },
    /// Deactivate a user: no more logins, every device logged out.
    Deactivate {
        /// A localpart or full user id.
        user: String,
    },
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the whole cause chain on one line, never a backtrace or Debug dump.
            output::error_line(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let data_dir = resolve_data_dir(cli.data_dir)?;
    // `run` refuses a bad file; other commands only borrow its log settings.
    let file = match &cli.command {
        Command::Run { .. } => {
            config_file::create_if_missing(&data_dir)?;
            config_file::load(&data_dir)?
        }
        Command::Config(ConfigCommand::Check) => return config_check(&data_dir),
        // The bench's temporary nodes log warnings only, whatever warren.toml says.
        Command::Bench(_) => config_file::FileConfig {
            log_level: Some("warn".to_owned()),
            ..Default::default()
        },
        _ => config_file::load(&data_dir).unwrap_or_default(),
    };
    let level = cli
        .log_level
        .or_else(|| file.log_level.clone())
        .unwrap_or_else(|| "info".to_owned());
    let format = cli.log_format.unwrap_or(match file.log_format {
        Some(config_file::FileLogFormat::Json) => LogFormat::Json,
        _ => LogFormat::Text,
    });
    logging::init(&level, format)?;
    match cli.command {
        Command::Run {
            client_addr,
            on_notify,
            appservices,
            p2p,
        } => run::run(data_dir, client_addr, on_notify, appservices, p2p, file),
        Command::Config(ConfigCommand::Check) => config_check(&data_dir),
        Command::Id { json } => id::id(&data_dir, json),
        Command::Status { json } => manage::status(&data_dir, json),
        Command::Peers { json } => manage::peers(&data_dir, json),
        Command::Connect { multiaddr } => manage::connect(&data_dir, &multiaddr),
        Command::Rooms { json } => manage::rooms(&data_dir, json),
        Command::Appservice(AppserviceCommand::List { json }) => {
            manage::appservice_list(&data_dir, json)
        }
        Command::Mailbox(MailboxCommand::Add { mailbox }) => {
            manage::mailbox_add(&data_dir, &mailbox)
        }
        Command::Mailbox(MailboxCommand::Remove { server_name }) => {
            manage::mailbox_remove(&data_dir, &server_name)
        }
        Command::Mailbox(MailboxCommand::List { json }) => manage::mailbox_list(&data_dir, json),
        Command::Bench(args) => bench::bench(args),
        Command::User(UserCommand::Add {
            localpart,
            password,
            admin,
        }) => manage::user_add(&data_dir, &localpart, &password, admin),
        Command::User(UserCommand::List { json }) => manage::user_list(&data_dir, json),
        Command::User(UserCommand::Passwd { user, password }) => {
            manage::user_passwd(&data_dir, &user, &password)
        }
        Command::User(UserCommand::Deactivate { user }) => {
            manage::user_deactivate(&data_dir, &user)
        }
    }
}

/// `warren config check`.
fn config_check(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let path = config_file::path(data_dir);
    if !path.exists() {
        return output::stdout_lines(&[format!(
            "ok: {} does not exist; the defaults apply",
            path.display()
        )])
        .context("could not write to stdout");
    }
    config_file::load(data_dir)?;
    output::stdout_lines(&[format!("ok: {}", path.display())]).context("could not write to stdout")
}

/// `--data-dir` / `WARREN_DATA_DIR`, else the platform's per-user data directory; made
/// absolute so the printed path is unambiguous.
fn resolve_data_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) if dir.as_os_str().is_empty() => {
            bail!("the data directory must not be empty (check --data-dir and WARREN_DATA_DIR)")
        }
        Some(dir) => dir,
        None => directories::ProjectDirs::from("org", "warren", "warren")
            .map(|dirs| dirs.data_dir().to_path_buf())
            .context(
                "could not find a data directory for this user (is HOME set?); \
                 pass --data-dir or set WARREN_DATA_DIR",
            )?,
    };
    Ok(std::path::absolute(&dir).unwrap_or(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults() {
        let Ok(cli) = Cli::try_parse_from(["warren", "run"]) else {
            panic!("`warren run` must parse");
        };
        assert_eq!(cli.log_level, None);
        assert!(matches!(
            cli.command,
            Command::Run {
                client_addr: None,
                ..
            }
        ));
    }

    #[test]
    fn global_flags_after_the_subcommand() {
        let Ok(cli) = Cli::try_parse_from(["warren", "id", "--json", "--data-dir", "/tmp/x"])
        else {
            panic!("`warren id --json --data-dir` must parse");
        };
        assert_eq!(cli.data_dir, Some(PathBuf::from("/tmp/x")));
        assert!(matches!(cli.command, Command::Id { json: true }));
    }

    #[test]
    fn empty_data_dir_is_an_error() {
        assert!(resolve_data_dir(Some(PathBuf::new())).is_err());
    }

    #[test]
    fn relative_data_dir_is_made_absolute() {
        let Ok(dir) = resolve_data_dir(Some(PathBuf::from("some/dir"))) else {
            panic!("relative data dir rejected");
        };
        assert!(dir.is_absolute());
        assert!(dir.ends_with("some/dir"));
    }
}
