//! Upstream bearer tokens: parsing token-service answers and caching them per
//! (realm, service, scope set, credential) with single-flight fetches and
//! renewal ahead of expiry.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

/// Distribution and containers/image never use a token for less than this.
pub(crate) const MINIMUM_LIFETIME: Duration = Duration::from_secs(60);

/// How many keys' tokens the cache holds; a full cache drops the least
/// recently used key's in O(1) (its next use fetches again).
const CACHE_CAPACITY: NonZeroUsize = NonZeroUsize::new(4096).expect("not zero");

/// Why a token answer cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token service answered with invalid JSON")]
    Json,
    #[error("the token service answered without a token")]
    Missing,
}

/// What identifies a cached token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub realm: String,
    pub service: String,
    pub scopes: BTreeSet<String>,
    /// [`crate::credential::UpstreamCredential::fingerprint`], or 0 for
    /// anonymous tokens.
    pub credential: u64,
}

/// A bearer token and when it stops being usable.
#[derive(Clone)]
pub struct Token {
    value: String,
    expires_at: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Token {
    pub fn new(value: impl Into<String>, expires_at: Instant) -> Self {
        Self {
            value: value.into(),
            expires_at,
        }
    }

    /// The `Authorization: Bearer …` header value.
    pub fn bearer_header(&self) -> String {
        format!("Bearer {}", self.value)
    }

    /// True if the token is good for at least `margin` more.
    pub(crate) fn fresh_for(&self, margin: Duration) -> bool {
        self.expires_at
            .checked_duration_since(Instant::now())
            .is_some_and(|left| left > margin)
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
    issued_at: Option<String>,
}

/// Parses a token service's JSON answer received at `received`.
/// `access_token` and `token` are equal (containerd prefers the former);
/// `expires_in` defaults to 60 s and is never taken as less. `issued_at`, when
/// in the past, shortens the lifetime accordingly.
pub fn parse_token_response(body: &[u8], received: Instant) -> Result<Token, TokenError> {
    let answer: TokenResponse = serde_json::from_slice(body).map_err(|_| TokenError::Json)?;
    let value = answer
        .access_token
        .filter(|t| !t.is_empty())
        .or(answer.token.filter(|t| !t.is_empty()))
        .ok_or(TokenError::Missing)?;
    let mut lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60)).max(MINIMUM_LIFETIME);
    if let Some(issued) = answer.issued_at.as_deref().and_then(parse_rfc3339)
        && let Ok(age) = SystemTime::now().duration_since(issued)
    {
        lifetime = lifetime.saturating_sub(age).max(MINIMUM_LIFETIME / 2);
    }
    let mut expires_at = received + lifetime;
    // NB: a JWT's own `exp` is authoritative when it is sooner: renewing
    // before a PATCH/PUT only works if we know when the registry will stop
    // accepting the token.
    if let Some(exp) = jwt_expiry(&value) {
        let left = exp.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        expires_at = expires_at.min(received + left);
    }
    Ok(Token::new(value, expires_at))
}

/// The `exp` claim of a JWT (read, not verified: the registry verifies it).
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

/// Parses the RFC 3339 timestamps token services send
/// (`2026-11-23T14:00:00Z`, with optional fraction and offset).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let format = time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(text, &format).ok()?;
    let seconds = u64::try_from(parsed.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Tokens by key. One fetch per key runs at a time; callers of the same key
/// wait for it instead of fetching again.
pub struct TokenCache {
    slots: Mutex<LruCache<TokenKey, Slot>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::with_capacity(CACHE_CAPACITY)
    }
}

/// Whether [`TokenCache::get`] fetched or reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Fetched,
}

impl TokenCache {
    /// A token for `key` that stays valid for at least `margin`, fetched with
    /// `fetch` when the cached one is missing or too old.
    pub async fn get<F, Fut, E>(&self, key: &TokenKey, margin: Duration, fetch: F) -> Result<(Token, Source), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, E>>,
    {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| t.fresh_for(margin)) {
            return Ok((token.clone(), Source::Cache));
        }
        let token = fetch().await?;
        *cached = Some(token.clone());
        Ok((token, Source::Fetched))
    }

    /// Forgets the token for `key` unless it was already replaced by another
    /// than `rejected` (the upstream refused it).
    pub async fn invalidate(&self, key: &TokenKey, rejected: &Token) {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == rejected.value) {
            *cached = None;
        }
    }

    /// A cache of at most `capacity` keys.
    pub fn with_capacity(capacity: NonZeroUsize) -> Self {
        Self {
            slots: Mutex::new(LruCache::new(capacity)),
        }
    }

    // NB: a slot dropped while a fetch holds it lives on in that fetch;
    // callers after the drop start a slot of their own.
    fn slot(&self, key: &TokenKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.get_or_insert(key.clone(), Slot::default).clone()
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(scope: &str) -> TokenKey {
        TokenKey {
            realm: "https://h/token".into(),
            service: "registry".into(),
            scopes: [scope.to_owned()].into(),
            credential: 7,
        }
    }

    #[test]
    fn token_answers_prefer_access_token_and_never_live_under_a_minute() {
        let now = Instant::now();
        let t = parse_token_response(br#"{"token":"a","access_token":"b","expires_in":300}"#, now).unwrap();
        assert_eq!(t.bearer_header(), "Bearer b");
        assert_eq!(t.expires_at, now + Duration::from_secs(300));
        let t = parse_token_response(br#"{"token":"a","expires_in":5}"#, now).unwrap();
        assert_eq!(t.bearer_header(), "Bearer a");
        assert_eq!(t.expires_at, now + MINIMUM_LIFETIME);
        let t = parse_token_response(br#"{"token":"a"}"#, now).unwrap();
        assert_eq!(t.expires_at, now + Duration::from_secs(60));
        let issued = time::OffsetDateTime::now_utc() - time::Duration::seconds(100);
        let issued = issued.format(&time::format_description::well_known::Rfc3339).unwrap();
        let body = format!(r#"{{"token":"a","expires_in":300,"issued_at":"{issued}"}}"#);
        let t = parse_token_response(body.as_bytes(), now).unwrap();
        let lifetime = t.expires_at - now;
        assert!(
            lifetime <= Duration::from_secs(201) && lifetime >= Duration::from_secs(198),
            "{lifetime:?}"
        );
        assert_eq!(parse_token_response(b"{", now).unwrap_err(), TokenError::Json);
        assert_eq!(
            parse_token_response(br#"{"token":""}"#, now).unwrap_err(),
            TokenError::Missing
        );
        assert!(!format!("{t:?}").contains("\"a\""), "Debug never shows the token");
    }

    #[test]
    fn a_jwt_that_expires_sooner_than_expires_in_says_is_renewed_on_its_own_clock() {
        use base64::Engine;
        let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let exp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3;
        let jwt = format!(
            "{}.{}.sig",
            encode(serde_json::json!({"alg":"ES256"})),
            encode(serde_json::json!({"exp": exp}))
        );
        let now = Instant::now();
        let body = serde_json::json!({"token": jwt, "expires_in": 300}).to_string();
        let t = parse_token_response(body.as_bytes(), now).unwrap();
        assert!(t.expires_at <= now + Duration::from_secs(3), "{:?}", t.expires_at - now);
        assert!(!t.fresh_for(Duration::from_secs(30)), "a body request gets a new token");
        let opaque = parse_token_response(br#"{"token":"not.a-jwt","expires_in":300}"#, now).unwrap();
        assert_eq!(opaque.expires_at, now + Duration::from_secs(300));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_and_later_ones_hit_the_cache() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(&key("repository:a:pull"), Duration::from_secs(5), || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, ()>(Token::new("t", Instant::now() + Duration::from_secs(300)))
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let (_, source) = cache
            .get(&key("repository:a:pull"), Duration::from_secs(5), || async {
                Err::<Token, ()>(())
            })
            .await
            .unwrap();
        assert_eq!(source, Source::Cache);
    }

    #[tokio::test]
    async fn tokens_near_expiry_are_renewed_and_rejected_ones_evicted() {
        let cache = TokenCache::default();
        let k = key("repository:a:pull,push");
        let soon = Token::new("old", Instant::now() + Duration::from_secs(20));
        cache
            .get(&k, Duration::ZERO, || async { Ok::<_, ()>(soon.clone()) })
            .await
            .unwrap();
        // A request with a body needs a token that outlives the upload.
        let (token, source) = cache
            .get(&k, Duration::from_secs(30), || async {
                Ok::<_, ()>(Token::new("new", Instant::now() + Duration::from_secs(300)))
            })
            .await
            .unwrap();
        assert_eq!(
            (token.bearer_header().as_str(), source),
            ("Bearer new", Source::Fetched)
        );
        cache.invalidate(&k, &token).await;
        let (token, source) = cache
            .get(&k, Duration::ZERO, || async {
                Ok::<_, ()>(Token::new("third", Instant::now() + Duration::from_secs(300)))
            })
            .await
            .unwrap();
        assert_eq!(
            (token.bearer_header().as_str(), source),
            ("Bearer third", Source::Fetched)
        );
        // Invalidating with a stale token leaves the newer one alone.
        cache.invalidate(&k, &soon).await;
        let (_, source) = cache
            .get(&k, Duration::ZERO, || async { Err::<Token, ()>(()) })
            .await
            .unwrap();
        assert_eq!(source, Source::Cache);
    }

    #[tokio::test]
    async fn a_full_cache_drops_its_least_recently_used_key() {
        let cache = TokenCache::with_capacity(NonZeroUsize::new(2).unwrap());
        let fetch = |value: &'static str| {
            move || async move { Ok::<_, ()>(Token::new(value, Instant::now() + Duration::from_secs(300))) }
        };
        for scope in [
            "repository:a:pull",
            "repository:b:pull",
            "repository:a:pull",
            "repository:c:pull",
        ] {
            cache.get(&key(scope), Duration::ZERO, fetch("t")).await.unwrap();
        }
        assert_eq!(cache.len(), 2);
        let (_, a) = cache
            .get(&key("repository:a:pull"), Duration::ZERO, fetch("t"))
            .await
            .unwrap();
        let (_, b) = cache
            .get(&key("repository:b:pull"), Duration::ZERO, fetch("t"))
            .await
            .unwrap();
        assert_eq!(
            (a, b),
            (Source::Cache, Source::Fetched),
            "b was the least recently used"
        );
    }

    #[tokio::test]
    async fn scopes_and_credentials_are_separate_keys() {
        let cache = TokenCache::default();
        for scope in ["repository:a:pull", "repository:b:pull"] {
            let (_, source) = cache
                .get(&key(scope), Duration::ZERO, || async {
                    Ok::<_, ()>(Token::new(scope, Instant::now() + Duration::from_secs(60)))
                })
                .await
                .unwrap();
            assert_eq!(source, Source::Fetched);
        }
        let mut other = key("repository:a:pull");
        other.credential = 8;
        let (_, source) = cache
            .get(&other, Duration::ZERO, || async {
                Ok::<_, ()>(Token::new("x", Instant::now() + Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert_eq!(source, Source::Fetched);
        assert_eq!(cache.len(), 3);
    }
}
