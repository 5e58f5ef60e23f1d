//! Postgres WAL positions: [`Lsn`] and the two probes every replica check is built on, the
//! primary's current position and the replica's replay position.

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

/// A Postgres WAL position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses Postgres' `XXXXXXXX/XXXXXXXX` form.
    pub fn parse(s: &str) -> Option<Self> {
        let (hi, lo) = s.trim().split_once('/')?;
        Some(Self(
            (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?,
        ))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// The replica's side of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    pub lsn: Lsn,
    /// 0 when everything received is replayed, else how old the last replayed commit is.
    pub lag_ms: Option<u64>,
    /// `pg_wal_replay_pause()` is in effect.
    pub paused: bool,
}

/// The primary's current WAL position: every commit that has returned is at or before it.
pub async fn current_lsn(primary: &DatabaseConnection) -> Result<Lsn, String> {
    let row = primary
        .query_one_raw(Statement::from_string(
            primary.get_database_backend(),
            "SELECT pg_current_wal_lsn()::text AS lsn",
        ))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    let text: String = row.try_get("", "lsn").map_err(|e| e.to_string())?;
    Lsn::parse(&text).ok_or_else(|| format!("bad LSN {text}"))
}

/// The primary's position, and the node that answered (`host:port`; `None` over a Unix socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryPosition {
    pub lsn: Lsn,
    pub node: Option<String>,
}

/// [`current_lsn`] and the node the primary URL reached: when that node changes, the primary
/// has moved (a failover or a switchover).
pub async fn primary_position(primary: &DatabaseConnection) -> Result<PrimaryPosition, String> {
    let row = primary
        .query_one_raw(Statement::from_string(
            primary.get_database_backend(),
            "SELECT pg_current_wal_lsn()::text AS lsn, \
             host(inet_server_addr()) || ':' || inet_server_port()::text AS node",
        ))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    let text: String = row.try_get("", "lsn").map_err(|e| e.to_string())?;
    let node: Option<String> = row.try_get("", "node").ok().flatten();
    let lsn = Lsn::parse(&text).ok_or_else(|| format!("bad LSN {text}"))?;
    Ok(PrimaryPosition { lsn, node })
}

/// The replica's replay position, its replay lag in ms, and whether replay is paused.
pub async fn replay_position(replica: &DatabaseConnection) -> Result<Replay, String> {
    // A promoted node keeps answering the last position its recovery replayed, frozen: only a
    // node in recovery has a replay position that means anything.
    let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END AS lsn, \
               CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 \
                    ELSE (EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000)::bigint END AS lag_ms, \
               CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END AS paused";
    let row = replica
        .query_one_raw(Statement::from_string(replica.get_database_backend(), sql))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    let text: Option<String> = row.try_get("", "lsn").map_err(|e| e.to_string())?;
    let lsn = text
        .as_deref()
        .and_then(Lsn::parse)
        .ok_or("not a standby: the node is a primary (or not replicating)")?;
    let lag: Option<i64> = row.try_get("", "lag_ms").ok().flatten();
    let paused: bool = row.try_get("", "paused").unwrap_or(false);
    Ok(Replay {
        lsn,
        lag_ms: lag.map(|l| l.max(0) as u64),
        paused,
    })
}

#[cfg(test)]
mod tests {
    use super::Lsn;

    #[test]
    fn lsn_round_trip_and_order() {
        let a = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(a.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/1").unwrap() < Lsn::parse("1/0").unwrap());
        assert!(Lsn::parse("nonsense").is_none());
        assert!(Lsn::parse("1/zz").is_none());
    }
}
