//! Read replicas: which are healthy, and where a request's rows are read.
//!
//! One monitor task checks every replica each second, on connections of its own: it must answer, be a
//! standby, and be no more than `database.replica_max_lag` behind the primary. Lag is measured against the
//! primary's WAL position, sampled at each check: a replica that has not replayed what the primary had
//! written at time `t` is at least `now - t` behind, however idle or busy the primary is, and whatever the
//! two clocks say. Until those samples span `replica_max_lag` (just after start-up), the age of the last
//! transaction the replica replayed bounds the lag too.
//!
//! Readers pick among the healthy replicas in turn; a replica whose connection fails is marked down at once,
//! and the next one is tried. With none healthy, `replica_fallback` says whether the primary serves.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{PoolError, TimeoutType};
use futures::future::join_all;

use super::error::OpenError;
use super::lease::Lease;
use super::{Connection, ConnectionError, Pool};
use crate::settings::{DatabaseSettings, ReplicaFallback};

/// How often the replicas are checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A replica's state as last checked.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Health {
    /// Not checked yet.
    Unknown,
    /// Serving, this far behind the primary.
    Healthy(Duration),
    /// Too far behind.
    Lagging(Duration),
    /// It answers, but is not in recovery: not a standby of the primary (promoted, or misconfigured).
    NotStandby,
    /// It does not answer, or a query on it failed.
    Down(String),
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Unknown => write!(f, "not checked yet"),
            Health::Healthy(lag) => write!(f, "healthy, {:.1}s behind", lag.as_secs_f64()),
            Health::Lagging(lag) => write!(f, "lagging {:.1}s behind", lag.as_secs_f64()),
            Health::NotStandby => write!(f, "not a standby (not in recovery)"),
            Health::Down(why) => write!(f, "down: {why}"),
        }
    }
}

/// One replica.
pub(crate) struct Replica {
    /// `host:port`, for logs and metrics.
    pub(crate) address: String,
    connection: Connection,
    health: Mutex<Health>,
}

impl Replica {
    /// Its state as last checked.
    pub(crate) fn health(&self) -> Health {
        self.health.lock().expect("never poisoned").clone()
    }

    fn set(&self, health: Health) {
        let mut current = self.health.lock().expect("never poisoned");
        let was_healthy = matches!(*current, Health::Healthy(_));
        let healthy = matches!(health, Health::Healthy(_));
        if healthy && !was_healthy {
            tracing::info!(replica = %self.address, state = %health, "replica in use");
        } else if !healthy && (was_healthy || *current == Health::Unknown) {
            tracing::warn!(replica = %self.address, state = %health, "replica skipped");
        }
        *current = health;
    }
}

/// The configured replicas, shared by every worker and the job runner.
pub(crate) struct ReplicaSet {
    replicas: Vec<Replica>,
    next: AtomicUsize,
    fallback: ReplicaFallback,
    max_lag: Duration,
}

impl ReplicaSet {
    /// The replicas `settings` name, unchecked; `None` without any.
    pub(crate) fn new(settings: &DatabaseSettings) -> Result<Option<ReplicaSet>, ConnectionError> {
        if settings.replicas.is_empty() {
            return Ok(None);
        }
        let replicas = settings
            .replicas
            .iter()
            .map(|url| {
                let connection = super::connection_to(url, settings)?;
                Ok(Replica {
                    address: connection.address(),
                    connection,
                    health: Mutex::new(Health::Unknown),
                })
            })
            .collect::<Result<_, ConnectionError>>()?;
        Ok(Some(ReplicaSet {
            replicas,
            next: AtomicUsize::new(0),
            fallback: settings.replica_fallback,
            max_lag: settings.replica_max_lag,
        }))
    }

    /// The replicas.
    pub(crate) fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Pools for every replica, in order.
    pub(crate) fn pools(&self, settings: &DatabaseSettings, size: usize) -> Vec<Pool> {
        self.replicas
            .iter()
            .map(|r| super::pool(&r.connection, settings, size))
            .collect()
    }

    /// The healthy replicas' indexes, starting with the next one's turn.
    fn healthy_in_turn(&self) -> Vec<usize> {
        let count = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        (start..count)
            .chain(0..start)
            .filter(|&i| matches!(self.replicas[i].health(), Health::Healthy(_)))
            .collect()
    }

    /// The monitor's state: connections of its own (named `pgspout monitor`), no samples yet.
    fn monitor_state(&self, primary: &Connection, timeout: Duration) -> Monitor {
        Monitor {
            primary: primary.named(MONITOR),
            primary_client: None,
            replicas: self
                .replicas
                .iter()
                .map(|r| (r.connection.named(MONITOR), None))
                .collect(),
            samples: VecDeque::new(),
            timeout,
        }
    }

    /// Checks every replica against the primary's WAL position `samples`, at once.
    async fn check(&self, monitor: &mut Monitor) {
        match monitor.primary_position().await {
            Ok(position) => {
                monitor.samples.push_back((Instant::now(), position));
                let keep = self.max_lag * 2 + CHECK_INTERVAL * 5;
                while monitor.samples.len() > 1 && monitor.samples[0].0.elapsed() > keep {
                    monitor.samples.pop_front();
                }
            }
            Err(error) => tracing::debug!(%error, "cannot read the primary's WAL position"),
        }
        let samples = &monitor.samples;
        let covered = samples.front().is_some_and(|(at, _)| at.elapsed() >= self.max_lag);
        let checks =
            self.replicas
                .iter()
                .zip(monitor.replicas.iter_mut())
                .map(|(replica, (connection, client))| async move {
                    let health = match position_of(connection, client).await {
                        Err(why) => Health::Down(why),
                        Ok(None) => Health::NotStandby,
                        Ok(Some((replayed, replay_age))) => {
                            // Behind since the first sample the replica has not replayed.
                            let mut lag = samples
                                .iter()
                                .find(|(_, position)| *position > replayed)
                                .map_or(Duration::ZERO, |(at, _)| at.elapsed());
                            if !covered && samples.back().is_none_or(|(_, position)| *position > replayed) {
                                lag = lag.max(replay_age.unwrap_or_default());
                            }
                            if lag > self.max_lag {
                                Health::Lagging(lag)
                            } else {
                                Health::Healthy(lag)
                            }
                        }
                    };
                    replica.set(health);
                });
        join_all(checks).await;
    }

    /// Checks the replicas now, then every second until dropped.
    pub(crate) async fn monitor(self: std::sync::Arc<Self>, primary: Connection, timeout: Duration) {
        let mut monitor = self.monitor_state(&primary, timeout);
        loop {
            let started = Instant::now();
            self.check(&mut monitor).await;
            tokio::time::sleep(CHECK_INTERVAL.saturating_sub(started.elapsed())).await;
        }
    }

    /// Checks the replicas once (at start-up, and for `pgspout check`).
    pub(crate) async fn check_once(&self, primary: &Connection, timeout: Duration) {
        self.check(&mut self.monitor_state(primary, timeout)).await;
    }
}

/// The `application_name` of the monitor's connections.
const MONITOR: &str = "pgspout monitor";

/// The monitor's connections and the primary's WAL positions, oldest first.
struct Monitor {
    primary: Connection,
    primary_client: Option<tokio_postgres::Client>,
    replicas: Vec<(Connection, Option<tokio_postgres::Client>)>,
    samples: VecDeque<(Instant, i64)>,
    timeout: Duration,
}

impl Monitor {
    /// The primary's current WAL position, in bytes.
    async fn primary_position(&mut self) -> Result<i64, String> {
        let query = "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
                     ELSE pg_catalog.pg_current_wal_lsn() END - '0/0'::pg_catalog.pg_lsn)::int8";
        let row = query_one(&self.primary, &mut self.primary_client, query, self.timeout).await?;
        Ok(row.get(0))
    }
}

/// `None` when the server is not in recovery; else the WAL position it has replayed, in bytes, and how
/// long ago the last transaction it replayed committed on the primary.
async fn position_of(
    connection: &Connection,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Option<(i64, Option<Duration>)>, String> {
    let query = "SELECT pg_catalog.pg_is_in_recovery(), \
                   (pg_catalog.pg_last_wal_replay_lsn() - '0/0'::pg_catalog.pg_lsn)::int8, \
                   extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp())::float8";
    let row = query_one(connection, client, query, Duration::from_secs(5)).await?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let age = row
        .get::<_, Option<f64>>(2)
        .map(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX));
    Ok(Some((row.get::<_, Option<i64>>(1).unwrap_or(0), age)))
}

/// Runs `query` on `client`, connecting first if there is none (or it closed); a failure drops the client.
async fn query_one(
    connection: &Connection,
    client: &mut Option<tokio_postgres::Client>,
    query: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Row, String> {
    let attempt = async {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = Some(connection.connect().await.map_err(|e| crate::report::chain(&e))?);
        }
        let open = client.as_ref().expect("connected above");
        open.query_one(query, &[]).await.map_err(|e| crate::report::chain(&e))
    };
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    if result.is_err() {
        *client = None;
    }
    result
}

/// Where rows are read: a healthy replica in turn, else the primary if `replica_fallback` allows it. Without
/// replicas, always the primary.
#[derive(Clone)]
pub(crate) struct Readers {
    primary: Pool,
    replicas: Option<(std::sync::Arc<ReplicaSet>, Vec<Pool>)>,
}

impl Readers {
    /// Reading from `replicas`, when there are any, through a pool of `size` connections to each, falling back
    /// on `primary`; else from `primary` only.
    pub(crate) fn new(
        primary: Pool,
        replicas: Option<&std::sync::Arc<ReplicaSet>>,
        settings: &DatabaseSettings,
        size: usize,
    ) -> Readers {
        Readers {
            primary,
            replicas: replicas.map(|set| (set.clone(), set.pools(settings, size))),
        }
    }

    /// The replica pools, for the metrics.
    pub(crate) fn replica_pools(&self) -> &[Pool] {
        self.replicas.as_ref().map_or(&[], |(_, pools)| pools)
    }

    /// Readers on one node: the next healthy replica in turn, else (as `replica_fallback` allows) the
    /// primary. Connections that share an exported snapshot must all be on the node that exported it.
    pub(crate) fn node(&self) -> Result<Readers, OpenError> {
        let Some((set, pools)) = &self.replicas else {
            return Ok(self.clone());
        };
        let primary = match set.healthy_in_turn().first() {
            Some(&index) => pools[index].clone(),
            None => self.fallback(set)?.clone(),
        };
        Ok(Readers {
            primary,
            replicas: None,
        })
    }

    /// A connection to read from: the first healthy replica in turn with a connection free; when every
    /// healthy replica's pool is busy, the first of them as soon as it has one (within the acquire timeout).
    /// The fallback applies only when no replica is healthy.
    pub(crate) async fn lease(&self) -> Result<Lease, OpenError> {
        let Some((set, pools)) = &self.replicas else {
            return Ok(self.primary.lease().await?);
        };
        let mut busy = None;
        for index in set.healthy_in_turn() {
            match pools[index].try_lease().await {
                Ok(lease) => return Ok(lease),
                Err(PoolError::Timeout(TimeoutType::Wait)) => {
                    busy.get_or_insert(index);
                }
                Err(error) => set.replicas[index].set(Health::Down(crate::report::chain(&error))),
            }
        }
        if let Some(index) = busy {
            return Ok(pools[index].lease().await?);
        }
        Ok(self.fallback(set)?.lease().await?)
    }

    /// Where rows are read when no replica of `set` is healthy: the primary, or nowhere.
    fn fallback(&self, set: &ReplicaSet) -> Result<&Pool, OpenError> {
        match set.fallback {
            ReplicaFallback::Primary => Ok(&self.primary),
            ReplicaFallback::Refuse => Err(OpenError::NoReplica),
        }
    }
}
