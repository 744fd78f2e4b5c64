//! Applications: created and listed with the admin key, read and renamed with their token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};

use super::{ApiError, ApiResult, AppView, Paging, json};
use crate::server::Server;

/// The body of a create or rename.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NameBody {
    pub name: String,
}

/// Creating an application needs the admin key; without a configured key, only a client on
/// this machine may create one.
#[utoipa::path(post, path = "/api/v1/applications", request_body = NameBody,
    responses(
        (status = 201, body = AppView),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 422, body = super::ErrorBody)),
    security(("admin_key" = [])))]
pub async fn create(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    may_create(&server.config.api.admin_key, peer, &headers)?;
    let body = super::json_object(body).await?;
    let name = super::text_field(&body, "name", super::max_name_chars())?;
    let token = super::new_token()?;
    let app = server.store.rest_create_app(&name, &token).await?;
    Ok(json(StatusCode::CREATED, &AppView::from(app)))
}

/// Who may create an application: the holder of the admin key or, when no key is configured,
/// a client on this machine.
fn may_create(admin_key: &str, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    if admin_key.is_empty() {
        if peer.ip().is_loopback() {
            return Ok(());
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "with no api.admin_key set, applications are created from this machine only",
        ));
    }
    if super::is_admin(admin_key, headers) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "creating an application needs `Authorization: Bearer <api.admin_key>`",
    ))
}

/// Every application, for the holder of the admin key.
#[utoipa::path(get, path = "/api/v1/applications",
    params(("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query)),
    responses((status = 200, body = [AppView]), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody)),
    security(("admin_key" = [])))]
pub async fn list(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    if server.config.api.admin_key.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "listing_disabled",
            "listing applications needs api.admin_key to be set",
        ));
    }
    if !super::is_admin(&server.config.api.admin_key, &headers) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "listing applications needs `Authorization: Bearer <api.admin_key>`",
        ));
    }
    let paging = Paging::parse(query)?;
    let (apps, total) = server
        .store
        .rest_apps(paging.offset(), paging.per_page)
        .await?;
    let views: Vec<AppView> = apps.into_iter().map(AppView::from).collect();
    Ok(paging.respond(&uri, &views, total))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}",
    params(("token" = String, Path)),
    responses((status = 200, body = AppView), (status = 404, body = super::ErrorBody)))]
pub async fn show(State(server): State<Arc<Server>>, Path(token): Path<String>) -> ApiResult {
    let app = super::app(&server, &token).await?;
    Ok(json(StatusCode::OK, &AppView::from(app)))
}

#[utoipa::path(put, path = "/api/v1/applications/{token}", request_body = NameBody,
    params(("token" = String, Path)),
    responses((status = 200, body = AppView), (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn rename(
    State(server): State<Arc<Server>>,
    Path(token): Path<String>,
    body: Body,
) -> ApiResult {
    super::app(&server, &token).await?;
    let body = super::json_object(body).await?;
    let name = super::text_field(&body, "name", super::max_name_chars())?;
    let app = server
        .store
        .rest_rename_app(&token, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("no application has this token"))?;
    Ok(json(StatusCode::OK, &AppView::from(app)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
            h.insert(axum::http::header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn without_a_key_only_this_machine_creates_applications() {
        let local: SocketAddr = ([127, 0, 0, 1], 4000).into();
        let remote: SocketAddr = ([192, 0, 2, 7], 4000).into();
        let v6_local: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 4000).into();
        assert!(may_create("", local, &HeaderMap::new()).is_ok());
        assert!(may_create("", v6_local, &HeaderMap::new()).is_ok());
        let refused = may_create("", remote, &bearer("anything")).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn with_a_key_everyone_needs_it() {
        let local: SocketAddr = ([127, 0, 0, 1], 4000).into();
        let remote: SocketAddr = ([192, 0, 2, 7], 4000).into();
        assert!(may_create("k3y", remote, &bearer("k3y")).is_ok());
        for headers in [HeaderMap::new(), bearer("k3"), bearer("k3y2")] {
            let refused = may_create("k3y", local, &headers).unwrap_err();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        }
    }
}
