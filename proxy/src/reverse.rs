//! Reverse mode's front door: `/v2/`, `/v2/_catalog` and
//! `/v2/namespaces/<ns>/connectors/<name>/<repository>/...`. The caller
//! is identified (its token, or in cluster mode its source address) and
//! authorized for the connector before the request enters the
//! [`Pipeline`].

use std::time::Instant;

use access::Caller;
use bytes::Bytes;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use registry::body::{BoxError, ProxyBody};

use crate::error::{ProxyError, json_response};
use crate::pipeline::{Mode, Pipeline};
use crate::route::{self, Endpoint, Route};
use serving::PeerAddr;

impl Pipeline {
    /// Answers one request under `/v2`. A [`PeerAddr`] extension, when the
    /// server sets one, lets callers without a token be identified by their
    /// source address.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let request = request.map(registry::body::from_client);
        let mut connector = String::new();
        let result = self.reverse(request, &mut connector).await;
        self.answer(result, connector, Mode::Reverse, started)
    }

    async fn reverse(
        &self,
        request: Request<ProxyBody>,
        label: &mut String,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = route::parse_route(request.uri().path())?;
        let caller = self.caller(&request).await?;
        let route = match route {
            Route::Base => return Ok(json_response(StatusCode::OK, Bytes::from_static(b"{}"))),
            // NB: a catalog across connectors would disclose repositories
            // of registries the caller may not use; each connector's
            // repositories are reached through its own prefix.
            Route::Catalog => {
                return Ok(json_response(
                    StatusCode::OK,
                    Bytes::from_static(br#"{"repositories":[]}"#),
                ));
            }
            Route::Connector(route) => route,
        };
        let pull = matches!(request.method(), &Method::GET | &Method::HEAD)
            && matches!(route.endpoint, Endpoint::Manifest(_) | Endpoint::Blob(_));
        self.access()
            .authorize_caller(&caller, &route.key, &route.repository, pull)
            .await?;
        *label = route.key.to_string();
        self.relay(&caller.username(), &route, Mode::Reverse, request).await
    }

    /// Who is asking: the token in `Authorization`, or the source address.
    async fn caller(&self, request: &Request<ProxyBody>) -> Result<Caller, ProxyError> {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|value| value.to_str().ok().and_then(access::caller::token_from_authorization));
        let peer = request.extensions().get::<PeerAddr>().map(|PeerAddr(peer)| peer.ip());
        Ok(self
            .access()
            .identify(token.as_ref().map(|t| t.as_deref()), peer)
            .await?)
    }
}
