//! `Idempotency-Key`: reruns of a creating request answer what the first run answered.
//!
//! A CI script that uploads firmware or creates a rule and then dies (a timeout, a lost
//! connection, a killed runner) cannot know whether the server did it. With a key, it sends
//! the same request again: the server replays the first answer (status and body) instead of
//! creating a second object. The same key with a *different* request is refused
//! (`idempotency_key_reused`), so a script that reuses a key by mistake learns it at once.
//!
//! One row per (tenant, key) in `idempotency_keys`: the request's fingerprint (SHA-256 of
//! method, path and the request's content, computed by the API) and, once the request
//! succeeded, the answer. The row is reserved *before* the work runs, so two concurrent
//! requests with one key cannot both create: the second sees the reservation and is told to
//! retry (`idempotency_key_in_progress`). A failed request gives its reservation back (an
//! error is not remembered: fixing the cause and rerunning must work), and a reservation whose
//! request died with its process is taken over after [`PENDING_TAKEOVER_MS`]. Keys are
//! forgotten after [`KEEP_MS`] by the API's maintenance task, never inside a request.

use diesel::prelude::*;
use ota_wire::ErrorCode;
use sha2::{Digest, Sha256};

use crate::Domain;
use crate::access::{Authorized, Capability};
use crate::error::{DomainError, Result};
use crate::schema::idempotency_keys as ik;

/// How long a key and its answer are kept.
pub const KEEP_MS: i64 = 24 * 60 * 60 * 1000;
/// A reservation without an answer this old belongs to a request that died; a rerun takes it.
pub const PENDING_TAKEOVER_MS: i64 = 5 * 60 * 1000;
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// What a request with a key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The key is new (or its dead reservation was taken over): run the request, then
    /// [`Domain::idempotency_finish`] or [`Domain::idempotency_abandon`].
    Run,
    /// The same request already succeeded: answer this.
    Replay { status: u16, body: String },
}

/// The fingerprint of a request: SHA-256 over its method, path and content, with lengths so
/// that no two different requests run together into one input.
pub fn fingerprint(method: &str, path: &str, content: &[u8]) -> String {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), content] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("{:x}", hash.finalize())
}

/// A key must be 1 to 255 visible ASCII characters (what fits any header and any log line).
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(DomainError::invalid(
            "Idempotency-Key",
            format!("an Idempotency-Key is 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(())
}

impl Domain {
    /// Reserves `key` for a request with this fingerprint in the caller's tenant, or says what
    /// the first request with it answered.
    pub async fn idempotency_reserve<C: Capability>(
        &self,
        who: &Authorized<C>,
        key: &str,
        fingerprint: &str,
    ) -> Result<Reservation> {
        validate_key(key)?;
        let tenant = who.tenant_id();
        let (key, fingerprint) = (key.to_owned(), fingerprint.to_owned());
        let now = self.clock.now_ms();
        self.db
            .write(move |c| {
                let reserve = diesel::insert_into(ik::table)
                    .values((
                        ik::tenant_id.eq(tenant),
                        ik::key.eq(&key),
                        ik::fingerprint.eq(&fingerprint),
                        ik::created_at.eq(now),
                    ))
                    .on_conflict_do_nothing();
                if crate::on_backend!(c, reserve)? == 1 {
                    return Ok(Reservation::Run);
                }
                let (stored, status, body, created_at): (String, Option<i64>, Option<String>, i64) = ik::table
                    .find((tenant, &key))
                    .select((ik::fingerprint, ik::status, ik::body, ik::created_at))
                    .first(c)?;
                if stored != fingerprint {
                    return Err(DomainError::new(
                        ErrorCode::IdempotencyKeyReused,
                        "this Idempotency-Key was used for a different request; use a new key",
                    ));
                }
                match (status, body) {
                    (Some(status), Some(body)) => Ok(Reservation::Replay {
                        status: u16::try_from(status).map_err(|_| anyhow::anyhow!("stored status {status}"))?,
                        body,
                    }),
                    _ if now - created_at >= PENDING_TAKEOVER_MS => {
                        diesel::update(ik::table.find((tenant, &key))).set(ik::created_at.eq(now)).execute(c)?;
                        Ok(Reservation::Run)
                    }
                    _ => {
                        let wait = (created_at + PENDING_TAKEOVER_MS - now).clamp(1000, 5000) / 1000;
                        Err(DomainError::with_details(
                            ErrorCode::IdempotencyKeyInProgress,
                            "a request with this Idempotency-Key is still running; retry to get its answer",
                            serde_json::json!({ "retry_after_seconds": wait }),
                        ))
                    }
                }
            })
            .await
    }

    /// Keeps the answer of the request that reserved `key`, to replay.
    pub async fn idempotency_finish<C: Capability>(
        &self,
        who: &Authorized<C>,
        key: &str,
        status: u16,
        body: String,
    ) -> Result<()> {
        let tenant = who.tenant_id();
        let key = key.to_owned();
        self.db
            .write(move |c| {
                diesel::update(ik::table.find((tenant, &key)))
                    .set((ik::status.eq(Some(i64::from(status))), ik::body.eq(Some(body))))
                    .execute(c)?;
                Ok(())
            })
            .await
    }

    /// Gives back the reservation of a request that failed: errors are not remembered.
    pub async fn idempotency_abandon<C: Capability>(&self, who: &Authorized<C>, key: &str) -> Result<()> {
        let tenant = who.tenant_id();
        let key = key.to_owned();
        self.db
            .write(move |c| {
                diesel::delete(ik::table.find((tenant, &key)).filter(ik::status.is_null())).execute(c)?;
                Ok(())
            })
            .await
    }

    /// Forgets keys older than [`KEEP_MS`] (the API's maintenance task).
    pub async fn forget_idempotency_keys(&self) -> Result<usize> {
        let cutoff = self.clock.now_ms() - KEEP_MS;
        self.db.write(move |c| Ok(diesel::delete(ik::table.filter(ik::created_at.le(cutoff))).execute(c)?)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_by_every_part_and_never_run_together() {
        let base = fingerprint("POST", "/api/v1/firmware/1/rules", b"{}");
        assert_eq!(base, fingerprint("POST", "/api/v1/firmware/1/rules", b"{}"));
        assert_ne!(base, fingerprint("PUT", "/api/v1/firmware/1/rules", b"{}"));
        assert_ne!(base, fingerprint("POST", "/api/v1/firmware/2/rules", b"{}"));
        assert_ne!(base, fingerprint("POST", "/api/v1/firmware/1/rules", b"{ }"));
        assert_ne!(fingerprint("POST", "/a", b"b"), fingerprint("POST", "/ab", b""));
    }

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(validate_key("ota-upload-3f2a").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        for bad in ["", "with space", "tab\t", "é", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert_eq!(validate_key(bad).unwrap_err().code(), ErrorCode::InvalidField, "{bad:?}");
        }
    }
}
