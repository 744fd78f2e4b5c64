//! The counters an operator and the benchmark read at `/metrics`, in one place so their names
//! stay consistent: connections, stanzas in and out by kind, routing and store latency, and
//! offline storage.

use std::sync::OnceLock;
use std::time::Instant;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Handles of the series every stanza touches, taken once the recorder is installed: looking a
/// series up by name and labels on each stanza (hashing and comparing its key in the registry)
/// cost more than the count itself.
struct PerStanza {
    /// By [`kind_index`].
    stanzas_in: [Counter; KINDS.len()],
    stanzas_out: [Counter; KINDS.len()],
    routed: Histogram,
}

static PER_STANZA: OnceLock<PerStanza> = OnceLock::new();

const KINDS: [&str; 4] = ["message", "presence", "iq", "other"];

/// Installs the process-wide recorder once; later calls (several servers in one test process)
/// share it.
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0,
                ],
            )
            .ok()?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).ok()?;
        keep_up(handle.clone());
        let _ = PER_STANZA.set(PerStanza {
            stanzas_in: KINDS
                .map(|kind| metrics::counter!("rookery_stanzas_in_total", "kind" => kind)),
            stanzas_out: KINDS
                .map(|kind| metrics::counter!("rookery_stanzas_out_total", "kind" => kind)),
            routed: metrics::histogram!("rookery_route_seconds"),
        });
        Some(handle)
    });
}

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram sample until it is folded into buckets, which happens
/// only on a scrape or an upkeep call. A server nobody scrapes would hold every routed
/// stanza's latency forever (about 24 bytes each), so a thread folds them in on a timer, as
/// the exporter's own HTTP listener would. A thread, not a task: the recorder is installed
/// once per process and outlives any one runtime (tests start several).
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
}

pub fn render() -> Option<String> {
    HANDLE.get()?.as_ref().map(|h| h.render())
}

/// Counts a connection for as long as the guard lives.
pub struct ConnectionGuard(&'static str);

pub fn connection(kind: &'static str) -> ConnectionGuard {
    metrics::gauge!("rookery_connections", "kind" => kind).increment(1.0);
    metrics::counter!("rookery_connections_total", "kind" => kind).increment(1);
    ConnectionGuard(kind)
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        metrics::gauge!("rookery_connections", "kind" => self.0).decrement(1.0);
    }
}

/// The stanza kind's place in [`KINDS`]; any other name is the last, "other".
fn kind_index(name: &str) -> usize {
    let last = KINDS.len() - 1;
    KINDS[..last]
        .iter()
        .position(|k| *k == name)
        .unwrap_or(last)
}

// Without an installed recorder there is nothing to count.
pub fn stanza_in(name: &str) {
    if let Some(m) = PER_STANZA.get() {
        m.stanzas_in[kind_index(name)].increment(1);
    }
}

pub fn stanza_out(name: &str) {
    if let Some(m) = PER_STANZA.get() {
        m.stanzas_out[kind_index(name)].increment(1);
    }
}

pub fn routed(started: Instant) {
    if let Some(m) = PER_STANZA.get() {
        m.routed.record(started.elapsed().as_secs_f64());
    }
}

pub fn store_call(op: &'static str, started: Instant) {
    metrics::histogram!("rookery_store_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

pub fn offline_stored() {
    metrics::counter!("rookery_offline_stored_total").increment(1);
}

pub fn offline_delivered(n: usize) {
    metrics::counter!("rookery_offline_delivered_total").increment(n as u64);
}

pub fn set_sessions(n: usize) {
    metrics::gauge!("rookery_sessions").set(n as f64);
}

/// Messages waiting in offline storage, read from the store when `/metrics` is asked for: a
/// count kept in memory would drift from the store, which other cluster nodes and `rookery user`
/// (deleting an account) change as well.
pub fn set_offline_messages(n: u64) {
    metrics::gauge!("rookery_offline_messages").set(n as f64);
}

/// A connection of `kind` ("c2s", "s2s") sent faster than `limits.*_bytes_per_second` and is
/// not read for a while.
pub fn read_paused(kind: &'static str) {
    metrics::counter!("rookery_read_pauses_total", "kind" => kind).increment(1);
}

/// A frame crossing the cluster bus, `direction` "out" or "in".
pub fn bus_frame(direction: &'static str) {
    metrics::counter!("rookery_cluster_bus_frames_total", "direction" => direction).increment(1);
}

/// Frames that could not be handed to their node and were re-routed (offline or bounced).
pub fn bus_rerouted(n: usize) {
    metrics::counter!("rookery_cluster_bus_rerouted_total").increment(n as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stanza_name_counts_under_its_kind() {
        for name in ["message", "presence", "iq"] {
            assert_eq!(KINDS[kind_index(name)], name);
        }
        assert_eq!(KINDS[kind_index("stream:error")], "other");
        assert_eq!(KINDS[kind_index("other")], "other");
    }

    /// Without the upkeep thread, histogram samples pile up until someone scrapes `/metrics`.
    #[test]
    fn installing_the_recorder_starts_the_upkeep_thread() {
        install();
        let running = || {
            std::fs::read_dir("/proc/self/task")
                .expect("/proc is mounted")
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .any(|name| name.trim() == "metrics-upkeep")
        };
        // A new thread names itself once it runs, a moment after the spawn returns.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !running() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(running());
    }
}
