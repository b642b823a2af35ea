//! Argon2id hashing of passwords and client secrets, at the contract's minimum cost
//! (m=19456 KiB, t=2, p=1). CPU-heavy: call from a blocking task.

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

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_verify_and_carry_the_contract_cost() {
        let h = super::hash(b"s3cret");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(super::verify(b"s3cret", &h));
        assert!(!super::verify(b"other", &h));
        assert!(!super::verify(b"s3cret", "not a hash"));
    }
}
