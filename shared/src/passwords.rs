//! Argon2id hashing of passwords and client secrets, at the contract's minimum cost
//! (m=19456 KiB, t=2, p=1), and the bounds a stored hash's parameters must keep. CPU-heavy: call
//! from a blocking task.

use std::ops::RangeInclusive;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};

fn argon2() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).expect("static Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A PHC string: `$argon2id$v=19$m=19456,t=2,p=1$...`.
pub fn hash(secret: &[u8]) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2()
        .hash_password(secret, &salt)
        .expect("Argon2 hashing of an in-memory secret cannot fail")
        .to_string()
}

/// Does `secret` match the PHC string `phc`? A malformed `phc` never matches.
pub fn verify(secret: &[u8], phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2().verify_password(secret, &h).is_ok())
}

/// The Argon2id parameters a stored hash may carry (CONTRACT, Template ZIP): memory in KiB,
/// iterations and lanes. Below, too weak; above, verifying it would cost a login too much.
pub const MEMORY_KIB: RangeInclusive<u32> = 19_456..=262_144;
pub const ITERATIONS: RangeInclusive<u32> = 2..=16;
pub const LANES: RangeInclusive<u32> = 1..=8;
/// Longest PHC string worth parsing (a 64-byte salt and output fit well within).
const MAX_PHC_LEN: usize = 512;

/// Is `phc` an Argon2id (version 19) PHC string with a salt, an output and parameters within
/// the bounds above? Says why not.
pub fn check_stored(phc: &str) -> Result<(), String> {
    if phc.len() > MAX_PHC_LEN {
        return Err(format!("is longer than {MAX_PHC_LEN} characters"));
    }
    let hash = PasswordHash::new(phc).map_err(|e| format!("is not a PHC string ({e})"))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!("uses {}, not argon2id", hash.algorithm));
    }
    if hash.version != Some(19) {
        return Err("is not Argon2 version 19".to_owned());
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("lacks a salt or an output".to_owned());
    }
    let params = Params::try_from(&hash).map_err(|e| format!("has invalid parameters ({e})"))?;
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if !MEMORY_KIB.contains(&m) || !ITERATIONS.contains(&t) || !LANES.contains(&p) {
        return Err(format!(
            "has m={m},t={t},p={p}; m must be {}..={} KiB, t {}..={}, p {}..={}",
            MEMORY_KIB.start(),
            MEMORY_KIB.end(),
            ITERATIONS.start(),
            ITERATIONS.end(),
            LANES.start(),
            LANES.end()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_hashes_need_argon2id_within_the_parameter_bounds() {
        let salt_and_hash = "c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY";
        let with = |params: &str| format!("$argon2id$v=19${params}${salt_and_hash}");
        assert_eq!(super::check_stored(&super::hash(b"x")), Ok(()));
        for ok in ["m=19456,t=2,p=1", "m=262144,t=16,p=8", "m=65536,t=3,p=4"] {
            assert_eq!(super::check_stored(&with(ok)), Ok(()), "{ok}");
        }
        for weak_or_huge in [
            "m=8,t=1,p=1",
            "m=19455,t=2,p=1",
            "m=19456,t=1,p=1",
            "m=262145,t=2,p=1",
            "m=4294967295,t=2,p=1",
            "m=19456,t=17,p=1",
            "m=19456,t=2,p=9",
        ] {
            let err = super::check_stored(&with(weak_or_huge)).unwrap_err();
            assert!(
                err.contains("m=") || err.contains("invalid parameters"),
                "{weak_or_huge}: {err}"
            );
        }
        for bad in [
            "$argon2id$".to_owned(),
            "plaintext".to_owned(),
            format!("$argon2i$v=19$m=19456,t=2,p=1${salt_and_hash}"),
            format!("$argon2id$v=16$m=19456,t=2,p=1${salt_and_hash}"),
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0".to_owned(),
            format!("$argon2id$v=19$m=19456,t=2,p=1${}", "A".repeat(600)),
        ] {
            assert!(super::check_stored(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hashes_verify_and_carry_the_contract_cost() {
        let h = super::hash(b"s3cret");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(super::verify(b"s3cret", &h));
        assert!(!super::verify(b"other", &h));
        assert!(!super::verify(b"s3cret", "not a hash"));
    }
}
