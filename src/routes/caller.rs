//! The `Caller` extractor: the request's identity under `[auth]` (a JWT or API key from `Authorization:
//! Bearer` or the configured cookie, else the anonymous role), and the statements that make a transaction
//! run as it.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;

use crate::auth::{AuthError, Identity};
use crate::dataset::{Catalog, Dataset};
use crate::db::error::OpenError;
use crate::db::rows::readable;
use crate::db::{self, Session};
use crate::error::ApiError;
use crate::state::{AppState, Pools};
use crate::telemetry::request::RequestContext;

/// Who is asking; `None` inside when pgspout serves without `[auth]`.
pub(crate) struct Caller(Option<Identity>);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Caller, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>().cloned();
        let token = token(
            request,
            state.as_ref().and_then(|s| s.auth.as_ref()).and_then(|a| a.cookie()),
        );
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("no application state".into()))?;
            Caller::identify(&state, token).await
        })
    }
}

/// The token of an `Authorization` value: `Bearer <token>`; any other scheme is refused.
pub(crate) fn bearer(value: &str) -> Result<String, AuthError> {
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Invalid("Authorization must be `Bearer <token>`".into()));
    }
    Ok(token.trim().to_owned())
}

/// The bearer token, or the cookie's value; an `Authorization` header of another scheme is refused.
fn token(request: &HttpRequest, cookie: Option<&str>) -> Result<Option<String>, AuthError> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
        return bearer(value).map(Some);
    }
    Ok(cookie
        .and_then(|name| request.cookie(name))
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty()))
}

impl Caller {
    /// Who sends `token` (already read from wherever this transport carries it), or what reading it failed
    /// with; anyone without `[auth]`.
    pub(crate) async fn identify(
        state: &AppState,
        token: Result<Option<String>, AuthError>,
    ) -> Result<Caller, ApiError> {
        let Some(auth) = &state.auth else {
            return Ok(Caller(None));
        };
        Ok(Caller(Some(auth.identify(token?.as_deref()).await?)))
    }

    /// The identity, when auth is on.
    pub(crate) fn identity(&self) -> Option<&Identity> {
        self.0.as_ref()
    }

    /// Whose jobs this caller sees: its own under `[auth]`, every job without it.
    pub(crate) fn owner(&self) -> Option<&str> {
        self.0.as_ref().map(|identity| identity.owner.as_str())
    }

    /// The statements that open a read-only transaction for this request: pgspout's settings, the request
    /// id in `application_name`, and under `[auth]` the role, the claims, the method and path, and the
    /// `pre_request` call.
    pub(crate) fn begin(&self, state: &AppState, context: &RequestContext, request: &HttpRequest) -> String {
        self.begin_call(state, context, request.method().as_str(), request.path())
    }

    /// [`Caller::begin`] for a call of any transport: `method` and `path` are what `pre_request` sees.
    pub(crate) fn begin_call(&self, state: &AppState, context: &RequestContext, method: &str, path: &str) -> String {
        let session = self.0.as_ref().map(|identity| Session {
            role: &identity.role,
            claims: &identity.claims,
            method,
            path,
            pre_request: state.auth.as_ref().and_then(|a| a.pre_request()),
        });
        db::begin_as(&state.begin_sql, &context.application_name(), session.as_ref())
    }

    /// The datasets of `catalog` this caller's role may SELECT from (all the login role may read, without
    /// `[auth]`), read on the primary as that role; with `estimate`, with their row estimates.
    pub(crate) async fn readable(
        &self,
        catalog: &Catalog,
        state: &AppState,
        pools: &Pools,
        context: &RequestContext,
        request: &HttpRequest,
        estimate: bool,
    ) -> Result<Vec<(String, Option<i64>)>, ApiError> {
        let begin = self.begin(state, context, request);
        self.readable_as(catalog.iter(), pools, &begin, estimate).await
    }

    /// [`Caller::readable`] for some `datasets`, in a transaction opened by `begin`.
    pub(crate) async fn readable_as(
        &self,
        datasets: impl Iterator<Item = &Dataset>,
        pools: &Pools,
        begin: &str,
        estimate: bool,
    ) -> Result<Vec<(String, Option<i64>)>, ApiError> {
        let relations: Vec<(String, String)> = datasets.map(|d| (d.name.clone(), d.relation.clone())).collect();
        let found = async {
            let mut lease = pools.exports.lease().await?;
            lease.begin(begin).await.map_err(OpenError::from_begin)?;
            let found = readable(lease.client(), &relations, estimate).await?;
            lease.release().await?;
            Ok::<_, OpenError>(found)
        };
        found.await.map_err(|e| self.refine(e.into()))
    }

    /// The refusal of a dataset this caller's role may not read: 401 when anonymous, else 403.
    pub(crate) fn not_readable(&self, name: &str) -> ApiError {
        match &self.0 {
            Some(identity) if identity.anonymous => ApiError::AnonymousForbidden,
            _ => ApiError::NotReadable(name.to_owned()),
        }
    }

    /// An anonymous request refused for lack of privileges is a 401 (send a token), not a 403.
    pub(crate) fn refine(&self, error: ApiError) -> ApiError {
        match (&self.0, error) {
            (Some(identity), ApiError::Open(crate::db::error::OpenError::Forbidden(_))) if identity.anonymous => {
                ApiError::AnonymousForbidden
            }
            (_, error) => error,
        }
    }
}
