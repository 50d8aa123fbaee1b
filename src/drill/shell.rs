//! The operator's commands (`--crash-command`, `--rebuild-command`): run
//! with `sh -c` in a process group of their own, bounded by `--timeout`
//! (then the group is killed). Their output goes to the drill's stderr,
//! so that stdout carries only the report.

use std::os::fd::AsFd as _;
use std::process::Stdio;
use std::time::Duration;

/// Runs `command` with `env` added; `Err` says how it failed.
pub(super) async fn run(
    command: &str,
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<(), String> {
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| Stdio::null(), Stdio::from);
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not run `sh -c`: {e}"))?;
    let group = child.id();
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{status}")),
        Ok(Err(e)) => Err(format!("could not wait for it: {e}")),
        Err(_) => {
            if let Some(pgid) = group {
                // The whole group: what the command started dies with it.
                let _ = tokio::process::Command::new("sh")
                    .args(["-c", &format!("kill -KILL -{pgid}")])
                    .stdin(Stdio::null())
                    .status()
                    .await;
            }
            let _ = child.wait().await;
            Err(format!("still running after {limit:?}: killed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_see_their_environment_and_are_bounded() {
        let limit = Duration::from_secs(10);
        let env = [("SWITCHYARD_DRILL_NODE", "db1")];
        assert_eq!(
            run("test \"$SWITCHYARD_DRILL_NODE\" = db1", &env, limit).await,
            Ok(())
        );
        let failed = run("exit 3", &env, limit).await.unwrap_err();
        assert!(failed.contains('3'), "{failed}");
        let t = std::time::Instant::now();
        let slow = run("sleep 30", &env, Duration::from_millis(200)).await;
        assert!(slow.unwrap_err().contains("killed"));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
