//! TokenReview and SubjectAccessReview against an API server that counts
//! them: a flood of forged tokens or of connectors that do not exist costs
//! the API server a bounded number of reviews, and callers the caches know
//! are not held up by it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use access::caller::{Authenticator, Authorizer, Identity};
use access::cluster::{AccessCheck, SubjectAccessReviews, TokenReviewOptions, TokenReviews};
use connector::ConnectorKey;
use serde_json::{Value, json};
use testing::apiserver::{FakeApiServer, Review};

const GOOD_TOKEN: &str = "good-token-31a9";
const PER_SECOND: u32 = 20;

/// The review's status, as the fake wants it.
fn review_token(review: &Value) -> Value {
    if review["spec"]["token"] == GOOD_TOKEN {
        json!({
            "authenticated": true,
            "user": {"username": "system:serviceaccount:team:builder", "uid": "u1"},
            "audiences": ["connectors-proxy"],
        })
    } else {
        json!({"authenticated": false, "user": {}, "error": "invalid bearer token"})
    }
}

fn review_access(_: &Value) -> Value {
    json!({"allowed": false})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_flood_costs_a_bounded_number_of_token_reviews() {
    let api = FakeApiServer::start(&[]).await;
    api.set_reviewer(Review::Token, review_token);
    let reviews = Arc::new(TokenReviews::new(
        api.client(),
        TokenReviewOptions {
            reviews_per_second: PER_SECOND,
            ..TokenReviewOptions::default()
        },
    ));
    // The good token is reviewed once and cached before the flood.
    assert!(reviews.authenticate(GOOD_TOKEN).await.unwrap().is_some());

    let started = Instant::now();
    let mut refused = 0;
    for i in 0..1_000 {
        match reviews.authenticate(&format!("forged-{i}")).await {
            Ok(answer) => assert!(answer.is_none(), "a forged token was accepted"),
            Err(_) => refused += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = api.review_count(Review::Token) - 1;
    let allowed = f64::from(PER_SECOND) * (1.0 + elapsed) + 1.0;
    assert!(
        (sent as f64) <= allowed,
        "{sent} TokenReviews for 1,000 forged tokens in {elapsed:.2}s (at most {allowed:.0})"
    );
    assert!(refused >= 1_000 - sent, "refused {refused}");
    // The cached caller is not held up by the flood.
    assert!(reviews.authenticate(GOOD_TOKEN).await.unwrap().is_some());
    // Once the flood stops, new tokens are reviewed again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(reviews.authenticate("forged-after").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_connector_names_cost_a_bounded_number_of_access_reviews() {
    let api = FakeApiServer::start(&[]).await;
    api.set_reviewer(Review::SubjectAccess, review_access);
    let reviews = SubjectAccessReviews::new(api.client(), AccessCheck::ProxySubresource, Duration::from_secs(5))
        .with_reviews_per_second(PER_SECOND);
    let caller = Identity::of_service_account("team", "builder");
    let started = Instant::now();
    for i in 0..1_000 {
        let _ = reviews
            .authorize(&caller, &ConnectorKey::new("team", format!("c{i}")))
            .await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = api.review_count(Review::SubjectAccess);
    let allowed = f64::from(PER_SECOND) * (1.0 + elapsed) + 1.0;
    assert!(
        (sent as f64) <= allowed,
        "{sent} SubjectAccessReviews for 1,000 names in {elapsed:.2}s (at most {allowed:.0})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_reviews_asked_at_once_cost_one_review_and_all_get_its_answer() {
    // A full node's 110 pods of one ServiceAccount publishing their volumes
    // at once, and a runtime pulling a pod's layers side by side with one
    // token: more than the budget allows in a second, all the same question.
    let api = FakeApiServer::start(&[]).await;
    api.set_reviewer(Review::Token, review_token);
    api.set_reviewer(Review::SubjectAccess, |_| json!({"allowed": true}));
    let tokens = Arc::new(TokenReviews::new(
        api.client(),
        TokenReviewOptions {
            reviews_per_second: PER_SECOND,
            ..TokenReviewOptions::default()
        },
    ));
    let access = Arc::new(
        SubjectAccessReviews::new(api.client(), AccessCheck::ProxySubresource, Duration::from_secs(5))
            .with_reviews_per_second(PER_SECOND),
    );
    let connector = ConnectorKey::new("team", "harbor");
    let calls = (0..110).map(|_| {
        let (tokens, access, connector) = (tokens.clone(), access.clone(), connector.clone());
        tokio::spawn(async move {
            let identity = tokens.authenticate(GOOD_TOKEN).await.map_err(|e| e.to_string())?;
            let identity = identity.ok_or("the good token was refused")?;
            access.authorize(&identity, &connector).await.map_err(|e| e.to_string())
        })
    });
    for call in futures::future::join_all(calls).await {
        assert_eq!(call.unwrap(), Ok(access::caller::Decision::Allow));
    }
    assert_eq!(api.review_count(Review::Token), 1);
    assert_eq!(api.review_count(Review::SubjectAccess), 1);
}
