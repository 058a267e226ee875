//! Set-up shared by the database benches: the throwaway cluster from the PG* variables and the seeded table.

/// A libpq key=value string for the cluster the PG* variables name; exits when there is none.
pub(crate) fn database_url() -> String {
    let Ok(host) = std::env::var("PGHOST") else {
        eprintln!("no PostgreSQL (PGHOST unset); run scripts/bench.sh");
        std::process::exit(1);
    };
    format!(
        "host={host} port={} user={} password={} dbname={}",
        std::env::var("PGPORT").unwrap_or_else(|_| "5432".into()),
        std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
        std::env::var("PGPASSWORD").unwrap_or_default(),
        std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into()),
    )
}

/// (Re)creates the `orders` table with `rows` rows, as the demo does.
pub(crate) fn seed_orders(rows: usize) {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo-seed.sql");
    let status = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", &format!("rows={rows}"), "-f", seed])
        .status()
        .expect("psql runs");
    assert!(status.success(), "seeding orders failed");
}
