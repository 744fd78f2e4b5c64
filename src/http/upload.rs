//! The HTTP side of file upload (XEP-0363): one PUT per slot the upload service handed out,
//! then GETs of the stored file. Errors are JSON, like the rest of the HTTP listener.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;

use super::api::ApiError;
use crate::modules::upload::{self, Upload};
use crate::server::Server;

pub fn router(max_file_bytes: u64) -> Router<Arc<Server>> {
    let limit = usize::try_from(max_file_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/upload/{slot}/{filename}", put(store).get(fetch))
        .layer(DefaultBodyLimit::max(limit))
}

/// Slot ids are ours: 32 hex digits. Anything else never names a file.
fn valid_slot(slot: &str) -> bool {
    slot.len() == 32 && slot.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn store(
    State(server): State<Arc<Server>>,
    Path((slot_id, filename)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(service) = server.module::<Upload>() else {
        return ApiError::not_found("no upload service").into_response();
    };
    let slot = valid_slot(&slot_id)
        .then(|| service.take(&slot_id))
        .flatten();
    let Some(slot) = slot else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "slot_unknown",
            "this upload slot does not exist, was used, or expired",
        )
        .into_response();
    };
    if slot.filename != filename {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "filename_mismatch",
            "the file name differs from the one the slot was requested for",
        )
        .into_response();
    }
    if body.len() as u64 != slot.size {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "size_mismatch",
            format!("the slot is for {} bytes, not {}", slot.size, body.len()),
        )
        .into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if slot.content_type.is_some() && content_type != slot.content_type {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "content_type_mismatch",
            "the content type differs from the one the slot was requested for",
        )
        .into_response();
    }
    let dir = upload::slot_dir(&server, &slot_id);
    let written = async {
        tokio::fs::create_dir_all(&dir).await?;
        let part = dir.join(".partial");
        tokio::fs::write(&part, &body).await?;
        tokio::fs::write(dir.join(".owner"), &slot.user).await?;
        let kind = content_type.unwrap_or_else(|| "application/octet-stream".into());
        tokio::fs::write(dir.join(".content-type"), kind).await?;
        tokio::fs::rename(&part, dir.join(&slot.filename)).await
    }
    .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot store an upload");
        return ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage_failed",
            "the file could not be stored",
        )
        .into_response();
    }
    service.stored(&server, &slot.user, slot.size);
    StatusCode::CREATED.into_response()
}

async fn fetch(
    State(server): State<Arc<Server>>,
    Path((slot_id, filename)): Path<(String, String)>,
) -> Response {
    let usable = valid_slot(&slot_id) && !filename.starts_with('.') && !filename.contains('/');
    let dir = upload::slot_dir(&server, &slot_id);
    let file = match usable {
        true => tokio::fs::read(dir.join(&filename)).await.ok(),
        false => None,
    };
    let Some(file) = file else {
        return ApiError::not_found("no such file").into_response();
    };
    let kind = tokio::fs::read_to_string(dir.join(".content-type"))
        .await
        .unwrap_or_else(|_| "application/octet-stream".into());
    (
        [
            (header::CONTENT_TYPE, kind),
            // Uploaded content is the users', served from our origin: never as an active page.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_owned(),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable".to_owned(),
            ),
        ],
        file,
    )
        .into_response()
}
