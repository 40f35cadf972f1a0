//! Cluster mode's identities, from the Kubernetes API:
//!
//! - [`TokenReviews`]: ServiceAccount tokens (audience `connectors-proxy`)
//!   checked by TokenReview, cached until shortly before the token expires.
//! - [`SubjectAccessReviews`]: may this identity use this connector? Asked
//!   by SubjectAccessReview, cached for seconds so that revoking RBAC
//!   revokes access within seconds.
//!
//! Source addresses of pods and nodes: [`crate::peers`].
//!
//! Both caches are bounded and keyed so that no token is kept in memory:
//! TokenReview results by the token's SHA-256.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use connector::ConnectorKey;
use connector::keys::PROXY_TOKEN_AUDIENCE;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use lru::LruCache;

use crate::caller::{Authenticator, Authorizer, BoxFuture, CallerError, Decision, Identity, Result};

/// A bounded map of answers that expire: a full cache drops its least
/// recently used answer, in O(1), so a burst of new keys costs reviews, not
/// memory or a scan.
struct ExpiringCache<K: Hash + Eq, V> {
    entries: Mutex<LruCache<K, (V, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> ExpiringCache<K, V> {
    fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Some(value.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.push(key, (value, Instant::now() + ttl));
    }

    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The TokenReview `extra` key naming the node a pod-bound token's pod
/// runs on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// API reviews a process may make per second, with as many in one burst:
/// a flood of forged tokens or random connector names costs the API server
/// at most this many reviews a second, beyond what the caches answer.
pub const DEFAULT_REVIEWS_PER_SECOND: u32 = 50;

/// A token bucket over the reviews sent to the API server.
struct ReviewBudget {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl ReviewBudget {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            state: Mutex::new((per_second, Instant::now())),
        }
    }

    /// Takes one review from the budget, if one is left.
    fn try_take(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (left, since) = *state;
        let now = Instant::now();
        let refilled = (left + now.duration_since(since).as_secs_f64() * self.per_second).min(self.per_second);
        if refilled < 1.0 {
            *state = (refilled, now);
            return false;
        }
        *state = (refilled - 1.0, now);
        true
    }
}

/// Identical reviews asked for at once: the first is sent, the others wait
/// for its answer in the cache (a node's 110 pods of one ServiceAccount
/// publishing at once, or a runtime pulling a pod's layers side by side
/// with one token, cost one review, not one each and a spent budget).
struct InFlight<K> {
    keys: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        Self { keys: Mutex::default() }
    }
}

/// A turn to review `key`; the next caller with the same key gets its
/// turn when this one is dropped.
struct Turn<'a, K: Hash + Eq> {
    in_flight: &'a InFlight<K>,
    key: K,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<K: Hash + Eq + Clone> InFlight<K> {
    /// Waits while an identical review is in flight.
    async fn turn(&self, key: &K) -> Turn<'_, K> {
        let lock = {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.entry(key.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        Turn {
            in_flight: self,
            key: key.clone(),
            lock,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<K: Hash + Eq> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut keys = self.in_flight.keys.lock().unwrap_or_else(|p| p.into_inner());
        // NB: the map's and this turn's reference alone: nobody waits (a
        // new waiter clones under the map's lock, held here).
        if Arc::strong_count(&self.lock) == 2 {
            keys.remove(&self.key);
        }
    }
}

/// The refusal when the review budget is spent.
fn over_budget(what: &str) -> CallerError {
    CallerError::Backend(format!("too many {what} requests; try again in a second").into())
}

/// How long TokenReview answers are kept.
#[derive(Debug, Clone)]
pub struct TokenReviewOptions {
    /// The audience tokens must carry.
    pub audience: String,
    /// A valid token's answer is dropped this long before the token expires.
    pub expiry_margin: Duration,
    /// The longest a valid token's answer is kept (a deleted pod or
    /// ServiceAccount invalidates its tokens; this bounds how long the proxy
    /// keeps accepting one).
    pub max_ttl: Duration,
    /// How long an invalid token's answer is kept.
    pub negative_ttl: Duration,
    /// The most answers kept.
    pub capacity: usize,
    /// The most TokenReviews sent per second (and in one burst).
    pub reviews_per_second: u32,
}

impl Default for TokenReviewOptions {
    fn default() -> Self {
        Self {
            audience: PROXY_TOKEN_AUDIENCE.to_owned(),
            expiry_margin: Duration::from_secs(30),
            max_ttl: Duration::from_secs(120),
            negative_ttl: Duration::from_secs(10),
            capacity: 10_000,
            reviews_per_second: DEFAULT_REVIEWS_PER_SECOND,
        }
    }
}

/// An [`Authenticator`] that asks the API server (TokenReview).
pub struct TokenReviews {
    api: Api<TokenReview>,
    options: TokenReviewOptions,
    cache: ExpiringCache<[u8; 32], Option<Identity>>,
    in_flight: InFlight<[u8; 32]>,
    budget: ReviewBudget,
}

impl TokenReviews {
    pub fn new(client: Client, options: TokenReviewOptions) -> Self {
        Self {
            api: Api::all(client),
            cache: ExpiringCache::new(options.capacity),
            in_flight: InFlight::default(),
            budget: ReviewBudget::new(options.reviews_per_second),
            options,
        }
    }

    /// How many answers are cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    async fn review(&self, token: &str) -> Result<Option<Identity>> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.options.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| CallerError::Backend(Box::new(e)))?;
        let Some(status) = answer.status else {
            return Ok(None);
        };
        let audience_ok = status
            .audiences
            .as_ref()
            .is_some_and(|audiences| audiences.contains(&self.options.audience));
        if status.authenticated != Some(true) || !audience_ok {
            return Ok(None);
        }
        let Some(user) = status.user else {
            return Ok(None);
        };
        let Some(username) = user.username.filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let node = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME_EXTRA))
            .and_then(|values| values.first())
            .filter(|node| !node.is_empty())
            .cloned();
        Ok(Some(Identity {
            username,
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            node,
        }))
    }

    /// How long a valid token's answer may be kept: until `expiry_margin`
    /// before the JWT's `exp` (read, not trusted: the API server verified
    /// the token), at most `max_ttl`.
    fn ttl(&self, token: &str) -> Duration {
        let Some(expires) = jwt_expiry(token) else {
            return self.options.max_ttl.min(Duration::from_secs(60));
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        expires
            .saturating_sub(now)
            .saturating_sub(self.options.expiry_margin)
            .min(self.options.max_ttl)
    }
}

impl Authenticator for TokenReviews {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Identity>>> {
        Box::pin(async move {
            let key = token_digest(token);
            if let Some(answer) = self.cache.get(&key) {
                return Ok(answer);
            }
            let _turn = self.in_flight.turn(&key).await;
            if let Some(answer) = self.cache.get(&key) {
                return Ok(answer);
            }
            if !self.budget.try_take() {
                return Err(over_budget("TokenReview"));
            }
            let answer = self.review(token).await?;
            let ttl = match &answer {
                Some(_) => self.ttl(token),
                None => self.options.negative_ttl,
            };
            self.cache.insert(key, answer.clone(), ttl);
            Ok(answer)
        })
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// The `exp` claim of a JWT (seconds since the epoch), if it is one. Read,
/// not verified.
pub fn jwt_expiry(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["exp"].as_u64().map(Duration::from_secs)
}

/// What a SubjectAccessReview asks about a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessCheck {
    /// `get` on subresource `connectors/proxy`: only roles made for using
    /// connectors grant it (the default).
    ProxySubresource,
    /// `get` on the Connector itself, as earlier connector releases check;
    /// any role that can read Connectors can then use their credentials.
    Get,
}

impl std::str::FromStr for AccessCheck {
    type Err = String;

    /// `proxy-subresource` or `get`, as the `--authorization` flag spells them.
    fn from_str(value: &str) -> std::result::Result<Self, String> {
        match value {
            "proxy-subresource" => Ok(Self::ProxySubresource),
            "get" => Ok(Self::Get),
            other => Err(format!("`{other}` is not `proxy-subresource` or `get`")),
        }
    }
}

/// An [`Authorizer`] that asks the API server (SubjectAccessReview).
pub struct SubjectAccessReviews {
    api: Api<SubjectAccessReview>,
    check: AccessCheck,
    ttl: Duration,
    cache: ExpiringCache<(String, String, Vec<String>, ConnectorKey), Decision>,
    in_flight: InFlight<(String, String, Vec<String>, ConnectorKey)>,
    budget: ReviewBudget,
}

impl SubjectAccessReviews {
    /// `ttl` bounds how long a revoked permission keeps working.
    pub fn new(client: Client, check: AccessCheck, ttl: Duration) -> Self {
        Self {
            api: Api::all(client),
            check,
            ttl,
            cache: ExpiringCache::new(10_000),
            in_flight: InFlight::default(),
            budget: ReviewBudget::new(DEFAULT_REVIEWS_PER_SECOND),
        }
    }

    /// At most `per_second` SubjectAccessReviews a second (and in one burst).
    pub fn with_reviews_per_second(mut self, per_second: u32) -> Self {
        self.budget = ReviewBudget::new(per_second);
        self
    }

    async fn review(&self, identity: &Identity, connector: &ConnectorKey) -> Result<Decision> {
        let subresource = match self.check {
            AccessCheck::ProxySubresource => Some("proxy".to_owned()),
            AccessCheck::Get => None,
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(identity.username.clone()),
                uid: Some(identity.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(identity.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(<connector::Connector as kube::Resource>::group(&()).into_owned()),
                    resource: Some("connectors".to_owned()),
                    subresource,
                    verb: Some("get".to_owned()),
                    namespace: Some(connector.namespace.clone()),
                    name: Some(connector.name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| CallerError::Backend(Box::new(e)))?;
        let allowed = answer.status.is_some_and(|s| s.allowed && s.denied != Some(true));
        Ok(if allowed { Decision::Allow } else { Decision::Deny })
    }
}

impl Authorizer for SubjectAccessReviews {
    fn authorize<'a>(&'a self, identity: &'a Identity, connector: &'a ConnectorKey) -> BoxFuture<'a, Result<Decision>> {
        Box::pin(async move {
            let key = (
                identity.username.clone(),
                identity.uid.clone(),
                identity.groups.clone(),
                connector.clone(),
            );
            if let Some(decision) = self.cache.get(&key) {
                return Ok(decision);
            }
            let _turn = self.in_flight.turn(&key).await;
            if let Some(decision) = self.cache.get(&key) {
                return Ok(decision);
            }
            if !self.budget.try_take() {
                return Err(over_budget("SubjectAccessReview"));
            }
            let decision = self.review(identity, connector).await?;
            self.cache.insert(key, decision, self.ttl);
            Ok(decision)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiring_caches_stay_bounded_and_forget_expired_answers() {
        let cache = ExpiringCache::new(8);
        for i in 0..100 {
            cache.insert(i, i, Duration::from_secs(60));
            assert!(cache.len() <= 8);
        }
        assert_eq!(cache.get(&99), Some(99));
        cache.insert(1000, 1, Duration::ZERO);
        assert_eq!(cache.get(&1000), None, "a zero lifetime is not cached");
        cache.insert(2000, 2, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(cache.get(&2000), None, "an expired answer is forgotten");
    }

    #[tokio::test]
    async fn a_turn_is_forgotten_once_nobody_holds_or_waits_for_it() {
        let in_flight = Arc::new(InFlight::<u32>::default());
        let first = in_flight.turn(&1).await;
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move {
                let _second = in_flight.turn(&1).await;
            }
        });
        let other = in_flight.turn(&2).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "a second turn of the same key waits");
        drop(first);
        waiter.await.unwrap();
        assert_eq!(in_flight.len(), 1, "only key 2 is still held");
        drop(other);
        assert_eq!(in_flight.len(), 0);
    }

    #[test]
    fn a_full_cache_drops_its_least_recently_used_answer() {
        let cache = ExpiringCache::new(3);
        for i in 0..3 {
            cache.insert(i, i, Duration::from_secs(60));
        }
        // 0 is used again; 1 is now the least recently used.
        assert_eq!(cache.get(&0), Some(0));
        cache.insert(3, 3, Duration::from_secs(60));
        assert_eq!(cache.get(&1), None);
        assert_eq!(
            (cache.get(&0), cache.get(&2), cache.get(&3)),
            (Some(0), Some(2), Some(3))
        );
    }

    #[test]
    fn jwt_expiry_reads_the_exp_claim_of_a_jwt_only() {
        let encode = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let jwt = format!(
            "{}.{}.sig",
            encode(r#"{"alg":"RS256"}"#),
            encode(r#"{"exp":1900000000}"#)
        );
        assert_eq!(jwt_expiry(&jwt), Some(Duration::from_secs(1_900_000_000)));
        assert_eq!(jwt_expiry("opaque-token"), None);
        assert_eq!(jwt_expiry("a.b.c"), None);
    }
}
