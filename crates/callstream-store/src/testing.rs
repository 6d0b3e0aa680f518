//! PostgreSQL for tests: a database of its own per test, on the server the machine runs, with the
//! two roles callstream expects, dropped when the test is done.
//!
//! Where no server answers (a developer's plain machine), [`PgTestDb::create`] returns `None`
//! and the test skips with one line saying so, unless `CALLSTREAM_REQUIRE_SERVICES=1`, which
//! makes it fail instead (CI sets it, so nothing is skipped silently there).
//!
//! The server is `CALLSTREAM_TEST_POSTGRES` (an admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth as the machine is set up).

#![allow(clippy::missing_panics_doc)]

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::PgStore;

/// The admin URL tests use.
pub fn admin_url() -> String {
    std::env::var("CALLSTREAM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub use callstream_core::testing::services_required;

/// A database created for one test.
pub struct PgTestDb {
    pub name: String,
    admin: String,
}

/// The URL of `database` on the admin URL's server, as `role`.
fn url_as(admin: &str, role: &str, database: &str) -> String {
    let rest = admin.split_once("://").map_or(admin, |(_, r)| r);
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let host = host.split_once('/').map_or(host, |(h, _)| h);
    format!("postgres://{role}@{host}/{database}")
}

impl PgTestDb {
    /// Creates the roles (if needed) and a fresh, migrated database; `None` (after one line on
    /// stderr) when no PostgreSQL answers and services are not required.
    pub async fn create(label: &str) -> Option<Self> {
        let admin = admin_url();
        let mut conn = match PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(e) => {
                assert!(
                    !services_required(),
                    "CALLSTREAM_REQUIRE_SERVICES=1 but PostgreSQL at {admin} is unreachable: {e}"
                );
                eprintln!("SKIP {label}: no PostgreSQL at {admin} ({e})");
                return None;
            }
        };
        // Roles are per server: created once, by whichever test comes first.
        for statement in [
            "CREATE ROLE callstream_owner LOGIN BYPASSRLS",
            "CREATE ROLE callstream_app LOGIN",
        ] {
            let sql = format!(
                "DO $$ BEGIN {statement}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("creating the test roles");
        }
        let name = format!("cs_test_{}", hex_suffix());
        // The name is ours (hex), not input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} OWNER callstream_owner"
        )))
        .execute(&mut conn)
        .await
        .expect("creating the test database");
        let db = Self { name, admin };
        PgStore::migrate(&db.owner_url())
            .await
            .expect("migrating the test database");
        Some(db)
    }

    /// The database as the owner role (migrations).
    pub fn owner_url(&self) -> String {
        url_as(&self.admin, "callstream_owner", &self.name)
    }

    /// The database as the gateway's role.
    pub fn app_url(&self) -> String {
        url_as(&self.admin, "callstream_app", &self.name)
    }

    /// The database as the server's admin (to look past row-level security in a test).
    pub fn admin_db_url(&self) -> String {
        let mut url = self.admin.clone();
        if let Some(slash) = url.rfind('/') {
            url.truncate(slash + 1);
        }
        url.push_str(&self.name);
        url
    }

    /// The gateway's store on this database.
    pub async fn store(&self) -> PgStore {
        PgStore::connect(&self.app_url(), 8)
            .await
            .expect("connecting as callstream_app")
    }
}

fn hex_suffix() -> String {
    let bytes: [u8; 6] = rand_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rand_bytes() -> [u8; 6] {
    let mut b = [0u8; 6];
    callstream_core::id::random_bytes(&mut b);
    b
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Dropping is async; a test's runtime may be gone by now, so a thread of its own.
        let done = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        });
        let _ = done.join();
    }
}
