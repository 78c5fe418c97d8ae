//! `warren run --on-notify CMD`: run a command for each notification of a user of this
//! node, so a desktop shows notifications with no push service.
//!
//! The command line is the operator's own and runs through the system shell (`sh -c`,
//! `cmd /C` on Windows); the notification's details are never put into it, only into
//! environment variables (`WARREN_BODY`, …), so a message cannot inject shell syntax.
//! At most [`MAX_RUNNING`] commands run at once and each is killed after
//! [`COMMAND_TIMEOUT`]. While all are busy, notifications wait in the node's bounded
//! subscriber queue, which drops the oldest when full; the node itself never waits.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use warren_core::push::LocalNotification;
use warren_core::server::Server;

/// Commands running at once.
pub const MAX_RUNNING: usize = 4;
/// A command still running after this long is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `WARREN_BODY`, in bytes (cut at a character boundary); environment strings
/// are limited, and a notification shows a line or two.
const MAX_BODY: usize = 4096;

/// Start running `command` for each notification until the returned task is aborted.
pub fn start(server: &Server, command: String) -> JoinHandle<()> {
    let mut notifications = server.local_notifications.subscribe();
    let running = Arc::new(Semaphore::new(MAX_RUNNING));
    tokio::spawn(async move {
        loop {
            let n = match notifications.recv().await {
                Ok(n) => n,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "--on-notify commands fell behind; oldest notifications skipped"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let Ok(permit) = running.clone().acquire_owned().await else {
                return;
            };
            let command = command.clone();
            tokio::spawn(async move {
                run(&command, &n).await;
                drop(permit);
            });
        }
    })
}

/// The environment a command gets for `n`.
pub fn environment(n: &LocalNotification) -> Vec<(&'static str, String)> {
    let clean = |s: &str| s.replace('\0', "");
    let opt = |s: &Option<String>| s.as_deref().map(clean).unwrap_or_default();
    let mut body = opt(&n.body);
    if body.len() > MAX_BODY {
        let mut end = MAX_BODY;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
    }
    vec![
        ("WARREN_USER_ID", clean(&n.user_id)),
        ("WARREN_ROOM_ID", clean(&n.room_id)),
        ("WARREN_EVENT_ID", clean(&n.event_id)),
        ("WARREN_EVENT_TYPE", clean(&n.event_type)),
        ("WARREN_SENDER", clean(&n.sender)),
        ("WARREN_SENDER_NAME", opt(&n.sender_display_name)),
        ("WARREN_ROOM_NAME", opt(&n.room_name)),
        ("WARREN_BODY", body),
        (
            "WARREN_HIGHLIGHT",
            if n.highlight { "1" } else { "0" }.to_owned(),
        ),
        (
            "WARREN_NOTIFICATION_COUNT",
            n.notification_count.to_string(),
        ),
        ("WARREN_HIGHLIGHT_COUNT", n.highlight_count.to_string()),
    ]
}

/// Run `command` once for `n`, waiting at most [`COMMAND_TIMEOUT`].
pub async fn run(command: &str, n: &LocalNotification) {
    run_with_timeout(command, n, COMMAND_TIMEOUT).await;
}

async fn run_with_timeout(command: &str, n: &LocalNotification, timeout: Duration) {
    let mut cmd = if cfg!(windows) {
        let mut c = tokio::process::Command::new("cmd");
        c.arg("/C");
        c
    } else {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c");
        c
    };
    cmd.arg(command)
        .envs(environment(n))
        .stdin(Stdio::null())
        // stdout carries `warren run`'s stable lines: keep the command's output off it.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the --on-notify command");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::info!(%status, "the --on-notify command failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the --on-notify command was lost"),
        Err(_) => {
            tracing::warn!(?timeout, "the --on-notify command took too long; killed");
            let _ = child.kill().await;
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use super::*;

    fn note(i: usize, body: &str) -> LocalNotification {
        LocalNotification {
            user_id: "@bob:x".into(),
            room_id: "!r:x".into(),
            event_id: format!("e{i}"),
            event_type: "m.room.message".into(),
            sender: "@alice:x".into(),
            sender_display_name: Some("Alice".into()),
            room_name: Some("Lounge".into()),
            body: Some(body.into()),
            highlight: true,
            notification_count: 2,
            highlight_count: 1,
        }
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    /// The details reach the command as environment variables, never as shell text.
    #[tokio::test]
    async fn details_are_environment_not_shell_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let pwned = dir.path().join("pwned");
        let body = format!(
            "$(touch {p}) `touch {p}` ; touch {p} 'quoted\"",
            p = pwned.display()
        );
        let command = format!(
            "printf '%s|%s|%s|%s|%s' \"$WARREN_BODY\" \"$WARREN_ROOM_NAME\" \"$WARREN_SENDER\" \
             \"$WARREN_HIGHLIGHT\" \"$WARREN_NOTIFICATION_COUNT\" > '{}'",
            out.display()
        );
        run(&command, &note(0, &body)).await;
        let written = std::fs::read_to_string(&out).expect("the command ran");
        assert_eq!(written, format!("{body}|Lounge|@alice:x|1|2"));
        assert!(!pwned.exists(), "the body was run as shell text");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        let started = Instant::now();
        run_with_timeout("sleep 30", &note(0, "x"), Duration::from_millis(100)).await;
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// At most MAX_RUNNING at once; the rest wait their turn and all run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_run_with_bounded_concurrency() {
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = warren_core::Config::new(data.path());
        config.client_addr = "127.0.0.1:0".parse().expect("addr");
        let node = warren_core::Node::start(config).await.expect("start");
        let work = tempfile::tempdir().expect("tempdir");
        let (running, done, release) = (
            work.path().join("running"),
            work.path().join("done"),
            work.path().join("release"),
        );
        std::fs::create_dir(&running).expect("mkdir");
        std::fs::create_dir(&done).expect("mkdir");
        let over = work.path().join("over");
        let command = format!(
            "touch '{r}'/\"$WARREN_EVENT_ID\"; \
             if [ \"$(ls '{r}' | wc -l)\" -gt {MAX_RUNNING} ]; then touch '{o}'; fi; \
             while [ ! -e '{x}' ]; do sleep 0.02; done; \
             rm '{r}'/\"$WARREN_EVENT_ID\"; touch '{d}'/\"$WARREN_EVENT_ID\"",
            r = running.display(),
            d = done.display(),
            o = over.display(),
            x = release.display()
        );
        let task = start(node.server(), command);
        let total = MAX_RUNNING + 6;
        for i in 0..total {
            node.server().local_notifications.publish(note(i, "hi"));
        }
        wait_for("the first commands to start", || {
            entries(&running) == MAX_RUNNING
        })
        .await;
        assert_eq!(entries(&done), 0);
        std::fs::write(&release, b"").expect("release");
        wait_for("every command to finish", || entries(&done) == total).await;
        assert_eq!(entries(&running), 0);
        assert!(
            !over.exists(),
            "more than {MAX_RUNNING} commands ran at once"
        );
        task.abort();
        node.shutdown().await.expect("shutdown");
    }
}
