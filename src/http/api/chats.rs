//! An application's chats, and who may join the rooms behind them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use serde::Serialize;

use super::{ApiError, ApiResult, ChatView, Created, Paging, json};
use crate::modules::bridge;
use crate::server::Server;

/// The body of a member added to a chat.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MemberBody {
    /// A bare JID (a full JID counts as its bare JID).
    pub jid: String,
}

/// A new chat: the application's next number, and a members-only room that carries it.
#[utoipa::path(post, path = "/api/v1/applications/{token}/chats",
    params(("token" = String, Path)),
    responses((status = 201, body = Created), (status = 404, body = super::ErrorBody)))]
pub async fn create(State(server): State<Arc<Server>>, Path(token): Path<String>) -> ApiResult {
    let app = super::app(&server, &token).await?;
    let room = bridge::new_room_name();
    let chat = server.store.rest_create_chat(app.id, &room).await?;
    bridge::create_room(&server, &app, &room, chat.number).await?;
    Ok(json(
        StatusCode::CREATED,
        &Created {
            number: chat.number,
            jid: Some(bridge::room_jid(&server, &room)),
        },
    ))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats",
    params(("token" = String, Path), ("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query)),
    responses((status = 200, body = [ChatView]), (status = 404, body = super::ErrorBody)))]
pub async fn list(
    State(server): State<Arc<Server>>,
    Path(token): Path<String>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let paging = Paging::parse(query)?;
    let app = super::app(&server, &token).await?;
    let chats = server
        .store
        .rest_chats(app.id, paging.offset(), paging.per_page)
        .await?;
    let views: Vec<ChatView> = chats.iter().map(|c| ChatView::new(&server, c)).collect();
    Ok(paging.respond(&uri, &views, app.chats_count))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{chat}",
    params(("token" = String, Path), ("chat" = i64, Path)),
    responses((status = 200, body = ChatView), (status = 404, body = super::ErrorBody)))]
pub async fn show(
    State(server): State<Arc<Server>>,
    Path((token, chat)): Path<(String, String)>,
) -> ApiResult {
    let (_, chat) = super::chat(&server, &token, &chat).await?;
    Ok(json(StatusCode::OK, &ChatView::new(&server, &chat)))
}

/// Lets an XMPP user join the chat's room.
#[utoipa::path(post, path = "/api/v1/applications/{token}/chats/{chat}/members",
    request_body = MemberBody, params(("token" = String, Path), ("chat" = i64, Path)),
    responses((status = 201, body = MemberBody), (status = 200, body = MemberBody),
        (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn add_member(
    State(server): State<Arc<Server>>,
    Path((token, chat)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let (app, chat) = super::chat(&server, &token, &chat).await?;
    let body = super::json_object(body).await?;
    let jid = bare_jid(&super::text_field(&body, "jid", 3071)?)?;
    let added = server
        .store
        .rest_add_member(app.id, chat.number, &jid)
        .await?;
    if added {
        bridge::membership(&server, &chat, &jid, true).await;
    }
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &MemberBody { jid }))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{chat}/members",
    params(("token" = String, Path), ("chat" = i64, Path)),
    responses((status = 200, body = [MemberBody]), (status = 404, body = super::ErrorBody)))]
pub async fn members(
    State(server): State<Arc<Server>>,
    Path((token, chat)): Path<(String, String)>,
) -> ApiResult {
    let (app, chat) = super::chat(&server, &token, &chat).await?;
    let jids = server.store.rest_members(app.id, chat.number).await?;
    let members: Vec<MemberBody> = jids.into_iter().map(|jid| MemberBody { jid }).collect();
    Ok(json(StatusCode::OK, &members))
}

/// Takes away a member's right to join; one in the room leaves it.
#[utoipa::path(delete, path = "/api/v1/applications/{token}/chats/{chat}/members/{jid}",
    params(("token" = String, Path), ("chat" = i64, Path), ("jid" = String, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody)))]
pub async fn remove_member(
    State(server): State<Arc<Server>>,
    Path((token, chat, jid)): Path<(String, String, String)>,
) -> ApiResult {
    let (app, chat) = super::chat(&server, &token, &chat).await?;
    let jid = bare_jid(&jid).map_err(|_| ApiError::not_found(format!("no member {jid}")))?;
    if !server
        .store
        .rest_remove_member(app.id, chat.number, &jid)
        .await?
    {
        return Err(ApiError::not_found(format!("no member {jid}")));
    }
    bridge::membership(&server, &chat, &jid, false).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn bare_jid(text: &str) -> Result<String, ApiError> {
    let jid = crate::jid::parse(text.trim())
        .map_err(|_| ApiError::invalid("invalid_jid", format!("`{text}` is not a JID")))?;
    if jid.node().is_none() {
        return Err(ApiError::invalid(
            "invalid_jid",
            "a member is a user JID (user@domain)",
        ));
    }
    Ok(jid.to_bare().to_string())
}
