//! Argon2id hashing of passwords and client secrets, at the contract's minimum cost
//! (m=19456 KiB, t=2, p=1), and the bounds a stored hash's parameters must keep.
//!
//! Hashing is CPU-heavy and needs 19 MiB of working memory. `pool()` runs it on a fixed set of
//! threads, one per core (no more than the jobs that may hash at once), each reusing one working
//! area for every hash it computes: a process holds at most that many areas whatever its load,
//! and never hands 19 MiB blocks back and forth with the allocator (whose per-thread arenas
//! would each keep some). The plain `hash` and `verify` below allocate per call; they serve
//! one-off commands and tests.

use std::{
    ops::RangeInclusive,
    sync::{Mutex, OnceLock, mpsc},
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::{Output, SaltString},
};
use tokio::sync::oneshot;

/// The contract's cost: memory in KiB, iterations, lanes; and the output length.
const M_COST: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
const OUTPUT_LEN: usize = 32;

fn argon2() -> Argon2<'static> {
    let params = Params::new(M_COST, T_COST, P_COST, Some(OUTPUT_LEN))
        .expect("static Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn new_salt() -> SaltString {
    SaltString::generate(&mut argon2::password_hash::rand_core::OsRng)
}

/// A PHC string: `$argon2id$v=19$m=19456,t=2,p=1$...`.
pub fn hash(secret: &[u8]) -> String {
    argon2()
        .hash_password(secret, &new_salt())
        .expect("Argon2 hashing of an in-memory secret cannot fail")
        .to_string()
}

/// Does `secret` match the PHC string `phc`? A malformed `phc` never matches.
pub fn verify(secret: &[u8], phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2().verify_password(secret, &h).is_ok())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The hashing pool of a process that hashes all the time (a worker: one password per create),
/// which runs at most `jobs_at_once` hashing jobs at once: one thread per core, and no more
/// threads than such jobs (a container without a CPU limit sees every core of its node, and
/// each thread keeps its 19 MiB working memory). The first call fixes the size; threads start
/// with their first use.
pub fn pool(jobs_at_once: usize) -> &'static HashPool {
    static POOL: OnceLock<HashPool> = OnceLock::new();
    POOL.get_or_init(|| HashPool::new(cores().min(jobs_at_once.max(1)), Memory::Keep))
}

/// Most hashes a process that hashes now and then runs at once, however many cores it sees:
/// each holds 19 MiB while it runs.
const OCCASIONAL_MAX: usize = 4;

/// Threads of the occasional pool: one per core, at most `OCCASIONAL_MAX`. Callers that admit
/// hashing work size their admission with it.
pub fn occasional_threads() -> usize {
    cores().min(OCCASIONAL_MAX)
}

/// The hashing pool of a process that hashes now and then (the API: a token request, a client
/// made): the working memory goes back to the system after each hash.
pub fn occasional_pool() -> &'static HashPool {
    static POOL: OnceLock<HashPool> = OnceLock::new();
    POOL.get_or_init(|| HashPool::new(occasional_threads(), Memory::Release))
}

/// What a pool thread does with its working memory between hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// Keeps it: a pool holds at most threads x 19 MiB, and a hash costs no page faults.
    Keep,
    /// Frees it after each hash. It is reserved larger than glibc's largest dynamic mmap
    /// threshold (32 MiB on 64-bit), so glibc maps it on its own and unmaps it when freed,
    /// instead of keeping a freed 19 MiB block in a thread's heap (only the 19 MiB argon2 uses
    /// are ever touched).
    Release,
}

/// Blocks reserved (not touched) for a released working area: just over 32 MiB.
const RELEASED_CAPACITY: usize = 33 * 1024;

type Task = Box<dyn FnOnce(&mut [Block]) + Send>;

/// The hashing crashed (its pool thread caught the panic and goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password hashing crashed")]
pub struct HashFailed;

/// Threads that hash and verify, each with its own reused working memory. Work waits in an
/// unbounded queue: callers bound how much they submit (job slots, the token guard).
#[derive(Debug)]
pub struct HashPool {
    queue: Mutex<mpsc::Sender<Task>>,
    threads: usize,
}

impl HashPool {
    pub fn new(threads: usize, mode: Memory) -> Self {
        let threads = threads.max(1);
        let (sender, receiver) = mpsc::channel::<Task>();
        let receiver = std::sync::Arc::new(Mutex::new(receiver));
        for i in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    // Touched on the first hash only: a process that never hashes never pays.
                    let mut memory: Vec<Block> = Vec::new();
                    loop {
                        let task = receiver.lock().expect("hash queue").recv();
                        let Ok(task) = task else { return };
                        if memory.is_empty() {
                            memory = match mode {
                                Memory::Keep => Vec::with_capacity(M_COST as usize),
                                Memory::Release => Vec::with_capacity(RELEASED_CAPACITY),
                            };
                            memory.resize(M_COST as usize, Block::default());
                        }
                        // A panicking hash answers nobody (its caller sees `HashFailed`);
                        // the thread and its working memory serve the next one.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            task(&mut memory);
                        }));
                        if mode == Memory::Release {
                            memory = Vec::new();
                        }
                    }
                })
                .expect("a hashing thread starts");
        }
        Self {
            queue: Mutex::new(sender),
            threads,
        }
    }

    /// How many hashes run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<T, HashFailed> {
        let (tx, rx) = oneshot::channel();
        let task: Task = Box::new(move |memory| {
            let _ = tx.send(work(memory));
        });
        self.queue
            .lock()
            .map_err(|_| HashFailed)?
            .send(task)
            .map_err(|_| HashFailed)?;
        rx.await.map_err(|_| HashFailed)
    }

    /// `hash(secret)`, on the pool.
    pub async fn hash(&self, secret: Vec<u8>) -> Result<String, HashFailed> {
        self.run(move |memory| {
            let salt = new_salt();
            let mut raw_salt = [0u8; 64];
            let salt_bytes = salt
                .decode_b64(&mut raw_salt)
                .expect("a generated salt decodes");
            let mut out = [0u8; OUTPUT_LEN];
            argon2()
                .hash_password_into_with_memory(&secret, salt_bytes, &mut out, memory)
                .expect("Argon2 hashing of an in-memory secret cannot fail");
            let out = Output::new(&out).expect("a 32-byte output is valid");
            format!(
                "$argon2id$v=19$m={M_COST},t={T_COST},p={P_COST}${}${out}",
                salt.as_str()
            )
        })
        .await
    }

    /// `verify(secret, phc)`, on the pool: with the reused memory when `phc` has the
    /// contract's cost (every hash this system makes), else allocating as `verify` does.
    /// `hold` (say, a semaphore permit) is dropped when the work ends, even if the caller gave
    /// up waiting: what bounds the callers bounds the queue.
    pub async fn verify(&self, secret: Vec<u8>, phc: String, hold: impl Send + 'static) -> bool {
        self.run(move |memory| {
            let verified = verify_with(&secret, &phc, memory);
            drop(hold);
            verified
        })
        .await
        .unwrap_or(false)
    }
}

fn verify_with(secret: &[u8], phc: &str, memory: &mut [Block]) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let standard = parsed.algorithm.as_str() == "argon2id"
        && parsed.version == Some(19)
        && Params::try_from(&parsed)
            .is_ok_and(|p| (p.m_cost(), p.t_cost(), p.p_cost()) == (M_COST, T_COST, P_COST));
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    if !standard || expected.len() != OUTPUT_LEN {
        return argon2().verify_password(secret, &parsed).is_ok();
    }
    let mut raw_salt = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut raw_salt) else {
        return false;
    };
    let mut out = [0u8; OUTPUT_LEN];
    if argon2()
        .hash_password_into_with_memory(secret, salt_bytes, &mut out, memory)
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&out).is_ok_and(|o| o == expected)
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
    let (Some(salt), Some(output)) = (hash.salt, &hash.hash) else {
        return Err("lacks a salt or an output".to_owned());
    };
    // As the Argon2 PHC format has them: `m`, `t`, `p`, then `keyid` and `data` if given, each
    // once. A name given twice has no one meaning (parsers differ on which value holds: a
    // checked `m=19456` beside an unchecked `m=4294967295`).
    let names: Vec<&str> = hash.params.iter().map(|(name, _)| name.as_str()).collect();
    let in_order = ["m", "t", "p", "keyid", "data"];
    if names.len() < 3 || names[..3] != in_order[..3] || !is_in_order(&names[3..], &in_order[3..]) {
        return Err(format!(
            "has the parameters {}; an Argon2 PHC string has m, t and p in that order (then keyid and data, if any), each once",
            names.join(",")
        ));
    }
    // Salt and output lengths the Argon2 PHC format allows, in bytes; a salt that does not
    // decode (a character outside base64's, a length of 1 modulo 4) could never be verified.
    let mut buffer = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut buffer).map(<[u8]>::len) else {
        return Err("has a salt that is not base64".to_owned());
    };
    if !(8..=48).contains(&salt_bytes) || !(12..=64).contains(&output.len()) {
        return Err(format!(
            "has a salt of {salt_bytes} bytes and an output of {}; the Argon2 PHC format takes 8-48 and 12-64",
            output.len()
        ));
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

/// Whether `names` are some of `order`, in its order, each once.
fn is_in_order(names: &[&str], order: &[&str]) -> bool {
    let mut rest = order.iter();
    names.iter().all(|name| rest.any(|o| o == name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_hashes_need_argon2id_within_the_parameter_bounds() {
        let salt_and_hash = "c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY";
        let with = |params: &str| format!("$argon2id$v=19${params}${salt_and_hash}");
        assert_eq!(super::check_stored(&super::hash(b"x")), Ok(()));
        for ok in [
            "m=19456,t=2,p=1",
            "m=262144,t=16,p=8",
            "m=65536,t=3,p=4",
            "m=19456,t=2,p=1,keyid=YWJj",
            "m=19456,t=2,p=1,keyid=YWJj,data=YWJj",
        ] {
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
            // A parameter twice, or out of order: whichever value a reader takes.
            with("m=4294967295,m=19456,t=2,p=1"),
            with("m=19456,t=1,t=2,p=1"),
            with("m=19456,t=2,p=255,p=1"),
            with("p=1,t=2,m=19456"),
            with("m=19456,t=2,p=1,data=YWJj,keyid=YWJj"),
            // A salt that does not decode; a salt or an output shorter or longer than the
            // format allows.
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0.$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY".to_owned(),
            "$argon2id$v=19$m=19456,t=2,p=1$qfxiXg$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY"
                .to_owned(),
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3".to_owned(),
        ] {
            assert!(super::check_stored(&bad).is_err(), "{bad} accepted");
        }
    }

    #[tokio::test]
    async fn the_pool_hashes_and_verifies_as_the_plain_functions_do() {
        for mode in [super::Memory::Keep, super::Memory::Release] {
            pool_agrees_with_the_plain_functions(super::HashPool::new(2, mode)).await;
        }
    }

    async fn pool_agrees_with_the_plain_functions(pool: super::HashPool) {
        let pooled = pool.hash(b"s3cret".to_vec()).await.unwrap();
        assert!(
            pooled.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{pooled}"
        );
        assert_eq!(super::check_stored(&pooled), Ok(()));
        // Each side accepts what the other made, and only for the right secret.
        assert!(super::verify(b"s3cret", &pooled));
        assert!(!super::verify(b"other", &pooled));
        let plain = super::hash(b"s3cret");
        assert!(pool.verify(b"s3cret".to_vec(), plain.clone(), ()).await);
        assert!(!pool.verify(b"other".to_vec(), plain, ()).await);
        // Two salts: the same secret never gives the same string.
        assert_ne!(pool.hash(b"s3cret".to_vec()).await.unwrap(), pooled);
        // Another cost takes the allocating path, with the same answers.
        let costly = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(20_000, 3, 1, None).unwrap(),
        );
        let salt = super::new_salt();
        let other = argon2::PasswordHasher::hash_password(&costly, b"s3cret", &salt)
            .unwrap()
            .to_string();
        assert!(pool.verify(b"s3cret".to_vec(), other.clone(), ()).await);
        assert!(!pool.verify(b"nope".to_vec(), other, ()).await);
        assert!(
            !pool
                .verify(b"s3cret".to_vec(), "not a hash".to_owned(), ())
                .await
        );
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
