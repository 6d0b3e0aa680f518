//! What every crate's tests share about the services they need.

/// Whether missing services (PostgreSQL, NATS, a browser) must fail tests instead of skipping
/// them: `CALLSTREAM_REQUIRE_SERVICES=1`, which CI sets so that nothing is skipped silently.
pub fn services_required() -> bool {
    std::env::var("CALLSTREAM_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}
