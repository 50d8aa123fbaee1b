//! The proxy's housekeeping tasks: the idle-connection reaper, the `SHOW
//! STATS` periods, the latency windows' snapshots, the event-loop lag
//! tickers and reload on SIGHUP. Each
//! ends at shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

use crate::context::Context;

/// Starts every housekeeping task on `tracker`.
pub fn spawn(tracker: &TaskTracker, ctx: &Arc<Context>, reload_on_sighup: bool) {
    tracker.spawn(reaper(ctx.clone()));
    tracker.spawn(stats_periods(ctx.clone()));
    tracker.spawn(latency_snapshots(ctx.clone()));
    tracker.spawn(crate::runtime::watch_lag(
        ctx.loop_lag().clone(),
        ctx.shutdown().clone(),
    ));
    if reload_on_sighup {
        tracker.spawn(self::reload_on_sighup(ctx.clone()));
    }
}

/// Closes idle server connections past their idle timeout or lifetime.
async fn reaper(ctx: Arc<Context>) {
    let period = {
        let config = ctx.config();
        let p = &config.proxy;
        (p.server_idle_timeout.min(p.server_lifetime) / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30))
    };
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => ctx.pools().reap_all(crate::measure::tick::Tick::now()),
            _ = ctx.shutdown().cancelled() => return,
        }
    }
}

/// Ends a `SHOW STATS` averaging period every `proxy.stats_period`.
async fn stats_periods(ctx: Arc<Context>) {
    let period = ctx
        .config()
        .proxy
        .stats_period
        .max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                for (_, pool) in ctx.pools().all() {
                    pool.stats().roll(now);
                }
            }
            _ = ctx.shutdown().cancelled() => return,
        }
    }
}

/// Snapshots the latency histograms every `window::STEP`, from which
/// `/status` and `SHOW STATS` compute the last minutes' percentiles.
async fn latency_snapshots(ctx: Arc<Context>) {
    let step = crate::measure::window::STEP;
    let mut tick = tokio::time::interval(step);
    loop {
        tokio::select! {
            _ = tick.tick() => ctx.snapshot_latencies(Instant::now()),
            _ = ctx.shutdown().cancelled() => return,
        }
    }
}

/// Reloads the configuration file on each SIGHUP.
async fn reload_on_sighup(ctx: Arc<Context>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with the admin RELOAD command");
        return;
    };
    loop {
        tokio::select! {
            Some(()) = hup.recv() => match ctx.reload().await {
                Ok(restart) => tracing::info!(needs_restart = ?restart, "SIGHUP: configuration reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: configuration rejected; the running one stays"),
            },
            _ = ctx.shutdown().cancelled() => return,
        }
    }
}
